"""Agent details and communication: agent templates, profiles, email rules and
conversation mappings; video calls; user-defined services; device tokens and
notification preferences; the organization's trial.

Same pattern as 0001: organization_id leads every key and index; children reference
their agent with (organization_id, project_id, agent_id) so they can never sit in
another project than their agent; per-user rows reference the membership
(organization_id, user_id), so removing a member removes their device tokens and
preferences. RLS, grants and triggers live in policies/<table>.sql.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from alembic import op

from tenant_api.db.policies import exec_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    exec_script(op.get_bind(),
        r"""
        -- Organization-level catalog of agent blueprints.
        create table agent_template (
            organization_id uuid not null references organization (id) on delete cascade,
            id              uuid not null default uuidv7(),
            slug            text not null check (length(slug) <= 100 and slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$'),
            name            text not null check (length(name) between 1 and 200),
            -- becomes the agent's type, so the same limits as agent.type
            category        text not null check (length(category) between 1 and 100),
            tools           text[] not null default '{}' check (cardinality(tools) <= 100),
            default_profile jsonb not null default '{}' check (jsonb_typeof(default_profile) = 'object'),
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, slug)
        );
        create index agent_template_category_idx on agent_template (organization_id, category, id);

        -- The template an agent was made from. Deleting the template keeps the agent
        -- and nulls template_id only (PG 15+ column list): organization_id is part of
        -- the key and must never be nulled.
        alter table agent add column template_id uuid;
        alter table agent add foreign key (organization_id, template_id)
            references agent_template (organization_id, id) on delete set null (template_id);
        create index agent_template_idx on agent (organization_id, template_id) where template_id is not null;

        create table agent_profile (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            project_id      uuid not null,
            agent_id        uuid not null,
            display_name    text not null check (length(display_name) between 1 and 200),
            avatar_url      text check (length(avatar_url) <= 2048 and avatar_url ~* '^https?://'),
            voice           text check (length(voice) between 1 and 100),
            role            text check (length(role) between 1 and 200),
            bio             text not null default '' check (length(bio) <= 5000),
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, agent_id),
            foreign key (organization_id, project_id, agent_id)
                references agent (organization_id, project_id, id) on delete cascade
        );

        create table agent_email_rule (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            project_id      uuid not null,
            agent_id        uuid not null,
            direction       text not null check (direction in ('inbound', 'outbound')),
            pattern         text not null check (length(pattern) between 1 and 500),
            action          text not null check (action in ('forward', 'reply', 'drop', 'assign')),
            target          text check (length(target) between 1 and 320),
            priority        integer not null default 100 check (priority between 0 and 1000000),
            enabled         boolean not null default true,
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            -- forward and assign need somewhere to send the mail; drop has nowhere
            check (case action when 'drop' then target is null
                               when 'reply' then true
                               else target is not null end),
            foreign key (organization_id, project_id, agent_id)
                references agent (organization_id, project_id, id) on delete cascade
        );
        -- The list order (priority, id) per agent, which is also the keyset cursor.
        create index agent_email_rule_order_idx on agent_email_rule (organization_id, agent_id, priority, id);

        create table agent_conversation (
            organization_id          uuid not null,
            id                       uuid not null default uuidv7(),
            project_id               uuid not null,
            agent_id                 uuid not null,
            conversation_key         text not null check (length(conversation_key) between 1 and 200),
            external_conversation_id text not null check (length(external_conversation_id) between 1 and 500),
            created_at               timestamptz not null default now(),
            updated_at               timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, agent_id, conversation_key),
            foreign key (organization_id, project_id, agent_id)
                references agent (organization_id, project_id, id) on delete cascade
        );

        create table video_call (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            project_id      uuid not null,
            title           text not null default '' check (length(title) <= 200),
            -- [{"type": "user"|"agent", "id": uuid}], checked by the service
            participants    jsonb not null default '[]'
                            check (jsonb_typeof(participants) = 'array' and jsonb_array_length(participants) <= 100),
            started_at      timestamptz not null default now(),
            ended_at        timestamptz check (ended_at >= started_at),
            -- derived, so it can never disagree with ended_at (and can be filtered on)
            status          text not null generated always as
                            (case when ended_at is null then 'active' else 'ended' end) stored,
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            foreign key (organization_id, project_id) references project (organization_id, id) on delete cascade
        );
        create index video_call_project_idx on video_call (organization_id, project_id, id);

        -- User-defined (Knative) services. env holds the list as returned (secret
        -- entries without their value); the secret values live only in secret_env,
        -- which the audit trigger redacts and the API never returns.
        create table service (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            project_id      uuid not null,
            -- a Knative service name is a DNS-1035 label
            name            text not null check (length(name) <= 63 and name ~ '^[a-z]([-a-z0-9]*[a-z0-9])?$'),
            image           text not null check (length(image) between 1 and 500),
            env             jsonb not null default '[]' check (
                                jsonb_typeof(env) = 'array' and jsonb_array_length(env) <= 200
                                -- a secret value must never land in the audited, returned column
                                and not jsonb_path_exists(env, '$[*] ? (@.secret == true && exists(@.value))')),
            secret_env      jsonb not null default '{}' check (jsonb_typeof(secret_env) = 'object'),
            status          text not null default 'pending' check (status in ('pending', 'ready', 'failed', 'stopped')),
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, project_id, name),
            foreign key (organization_id, project_id) references project (organization_id, id) on delete cascade
        );

        -- Push tokens of a member's devices: per user within the organization.
        create table device_token (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            user_id         uuid not null,
            platform        text not null check (platform in ('ios', 'android', 'web')),
            token           text not null check (length(token) between 1 and 4096),
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, user_id, token),
            foreign key (organization_id, user_id)
                references organization_membership (organization_id, user_id) on delete cascade
        );

        -- One row per (user, channel) the user changed; channels without a row use
        -- the defaults (resources/notifications.py).
        create table notification_preference (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            user_id         uuid not null,
            channel         text not null check (channel in ('email', 'push', 'sms', 'in_app')),
            enabled         boolean not null,
            events          jsonb not null default '{}' check (jsonb_typeof(events) = 'object'),
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, user_id, channel),
            foreign key (organization_id, user_id)
                references organization_membership (organization_id, user_id) on delete cascade
        );

        -- The organization's trial; its status is derived from the times.
        create table user_trial (
            organization_id uuid not null references organization (id) on delete cascade,
            id              uuid not null default uuidv7(),
            plan            text not null check (length(plan) between 1 and 100),
            started_at      timestamptz not null default now(),
            ends_at         timestamptz not null,
            converted_at    timestamptz,
            cancelled_at    timestamptz,
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id),
            check (ends_at > started_at),
            check (converted_at is null or cancelled_at is null)
        );
        """
    )


def downgrade() -> None:
    exec_script(op.get_bind(),
        """
        drop table user_trial, notification_preference, device_token, service, video_call,
                   agent_conversation, agent_email_rule, agent_profile;
        drop index agent_template_idx;
        alter table agent drop column template_id;
        drop table agent_template;
        """
    )
