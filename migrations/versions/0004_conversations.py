"""Conversations: channels and DMs of a project, their members, their messages.

conversation          project-level; kind CHANNEL (named, name unique per project) or DM.
                      last_seq is the per-conversation message counter: posting a message
                      runs UPDATE ... SET last_seq = last_seq + 1 RETURNING in the same
                      transaction, so seq is gap-free, race-free, and (because the row lock
                      is held until commit) messages become visible in seq order.
conversation_member   USER or AGENT members. Agent members reference an agent of the SAME
                      project, user members a membership of the SAME organization, both by
                      composite foreign keys on generated columns.
conversation_message  immutable; (organization_id, conversation_id, seq) is unique. The
                      sender is a plain record, not a foreign key: history outlives a
                      deleted agent or a departed user.

The NOTIFY trigger lives in policies/conversation_message.sql (re-applied at each upgrade).

Revision ID: 0004
Revises: 0003
"""

from alembic import op

from tenant_api.db.policies import exec_script

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    exec_script(op.get_bind(),
        """
        create table conversation (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            project_id      uuid not null,
            kind            text not null check (kind in ('CHANNEL', 'DM')),
            name            text check (length(name) between 1 and 200),
            last_seq        bigint not null default 0 check (last_seq >= 0),
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            -- lets members and messages require "a conversation of the same project"
            unique (organization_id, project_id, id),
            check (kind <> 'CHANNEL' or name is not null),
            foreign key (organization_id, project_id) references project (organization_id, id)
                on delete cascade
        );
        create unique index conversation_channel_name_key
            on conversation (organization_id, project_id, lower(name)) where kind = 'CHANNEL';

        create table conversation_member (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            project_id      uuid not null,
            conversation_id uuid not null,
            member_type     text not null check (member_type in ('USER', 'AGENT')),
            member_id       uuid not null,
            -- member_id split by type, only so that each kind gets its foreign key
            agent_id        uuid generated always as (case when member_type = 'AGENT' then member_id end) stored,
            user_id         uuid generated always as (case when member_type = 'USER' then member_id end) stored,
            created_at      timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, conversation_id, member_type, member_id),
            foreign key (organization_id, project_id, conversation_id)
                references conversation (organization_id, project_id, id) on delete cascade,
            foreign key (organization_id, project_id, agent_id)
                references agent (organization_id, project_id, id) on delete cascade,
            -- leaving the organization removes the user from its conversations
            foreign key (organization_id, user_id)
                references organization_membership (organization_id, user_id) on delete cascade
        );
        create index conversation_member_agent_idx on conversation_member (organization_id, project_id, agent_id)
            where agent_id is not null;
        create index conversation_member_user_idx on conversation_member (organization_id, user_id)
            where user_id is not null;

        create table conversation_message (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            project_id      uuid not null,
            conversation_id uuid not null,
            seq             bigint not null check (seq > 0),
            sender_type     text not null check (sender_type in ('USER', 'AGENT', 'SYSTEM')),
            sender_id       uuid,
            body            text not null check (length(body) between 1 and 16000),
            created_at      timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, conversation_id, seq),
            check ((sender_type = 'SYSTEM') = (sender_id is null)),
            foreign key (organization_id, project_id, conversation_id)
                references conversation (organization_id, project_id, id) on delete cascade
        );
        """
    )


def downgrade() -> None:
    exec_script(op.get_bind(),
        """
        drop table conversation_message, conversation_member, conversation;
        drop function if exists app.notify_conversation_message();
        """
    )
