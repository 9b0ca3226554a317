"""Tenancy core: users, organizations, workspaces, projects, memberships, tokens, audit, agents.

Every tenant table has organization_id leading its primary key and every index, so
the schema can be distributed by organization later; children point at parents with
composite foreign keys (organization_id, parent_id), so a row can never reference
another organization's row. RLS, grants and triggers live in policies/<table>.sql.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from alembic import op

from tenant_api.db.policies import exec_script

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    exec_script(op.get_bind(), 
        """
        create schema if not exists app;
        create schema if not exists auth;

        -- Global identity: not a tenant table; its visibility is still limited by RLS.
        create table user_account (
            id            uuid primary key default uuidv7(),
            email         text not null check (length(email) between 3 and 320),
            password_hash text not null,
            display_name  text not null check (length(display_name) between 1 and 200),
            created_at    timestamptz not null default now(),
            updated_at    timestamptz not null default now()
        );
        create unique index user_account_email_key on user_account (lower(email));

        create table organization (
            id         uuid primary key default uuidv7(),
            name       text not null check (length(name) between 1 and 200),
            created_at timestamptz not null default now(),
            updated_at timestamptz not null default now()
        );

        create table organization_membership (
            organization_id uuid not null references organization (id) on delete cascade,
            id              uuid not null default uuidv7(),
            user_id         uuid not null references user_account (id) on delete cascade,
            role            text not null check (role in ('owner', 'admin', 'member', 'auditor')),
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, user_id)
        );
        -- Login looks up a user's organizations before any organization is known: the
        -- one index that cannot lead with organization_id.
        create index organization_membership_user_idx on organization_membership (user_id);

        create table workspace (
            organization_id uuid not null references organization (id) on delete cascade,
            id              uuid not null default uuidv7(),
            name            text not null check (length(name) between 1 and 200),
            description     text not null default '' check (length(description) <= 2000),
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, name)
        );

        create table project (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            workspace_id    uuid not null,
            name            text not null check (length(name) between 1 and 200),
            description     text not null default '' check (length(description) <= 2000),
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, workspace_id, name),
            foreign key (organization_id, workspace_id) references workspace (organization_id, id)
                on delete restrict
        );

        create table platform_token (
            organization_id     uuid not null references organization (id) on delete cascade,
            id                  uuid not null default uuidv7(),
            user_id             uuid not null references user_account (id) on delete cascade,
            kind                text not null check (kind in ('api', 'session')),
            name                text not null check (length(name) between 1 and 200),
            prefix              text not null,
            token_hash          bytea,
            scopes              text[],
            project_ids         uuid[],
            expires_at          timestamptz not null,
            revoked_at          timestamptz,
            last_used_at        timestamptz,
            created_at          timestamptz not null default now(),
            updated_at          timestamptz not null default now(),
            created_by_token_id uuid,
            primary key (organization_id, id),
            -- API tokens carry a hash and scopes; sessions carry neither (their scopes
            -- are the member's role, read at each request).
            check ((kind = 'api') = (token_hash is not null)),
            check ((kind = 'api') = (scopes is not null)),
            check (expires_at <= created_at + interval '366 days')
        );
        -- Credential lookup happens before the organization is known.
        create unique index platform_token_hash_key on platform_token (token_hash);
        create index platform_token_user_idx on platform_token (organization_id, user_id, id);

        create table token_audit_log (
            organization_id uuid not null references organization (id) on delete cascade,
            id              uuid not null default uuidv7(),
            occurred_at     timestamptz not null default clock_timestamp(),
            token_id        uuid,
            user_id         uuid,
            request_id      text,
            table_name      text not null,
            row_id          uuid,
            action          text not null check (action in ('INSERT', 'UPDATE', 'DELETE')),
            changes         jsonb not null,
            primary key (organization_id, id)
        );
        create index token_audit_log_token_idx on token_audit_log (organization_id, token_id, id);
        create index token_audit_log_table_idx on token_audit_log (organization_id, table_name, id);
        create index token_audit_log_time_idx on token_audit_log (organization_id, occurred_at);

        create table agent (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            project_id      uuid not null,
            name            text not null check (length(name) between 1 and 200),
            type            text not null default 'assistant' check (length(type) between 1 and 100),
            status          text not null default 'active' check (status in ('active', 'paused', 'archived')),
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            -- lets children require "an agent of the same project" with one foreign key
            unique (organization_id, project_id, id),
            unique (organization_id, project_id, name),
            foreign key (organization_id, project_id) references project (organization_id, id)
                on delete cascade
        );
        """
    )


def downgrade() -> None:
    exec_script(op.get_bind(), 
        """
        drop table agent, token_audit_log, platform_token, project, workspace,
                   organization_membership, organization, user_account cascade;
        drop schema auth cascade;
        drop schema app cascade;
        """
    )
