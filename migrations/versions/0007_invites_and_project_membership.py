"""Project invites, project membership and the invite mail outbox.

An organization admin invites an email address to one project (project_invite); the
invitee who accepts becomes a member of that project only (project_membership), which
auth.begin_request turns into a project restriction. Invite mails are written to
invite_outbox in the same transaction as the invite and delivered by the mailer.

Revision ID: 0007
Revises: 0005
Create Date: 2026-11-26
"""

from alembic import op

from tenant_api.db.policies import exec_script

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    exec_script(op.get_bind(),
        """
        create table project_invite (
            organization_id     uuid not null,
            id                  uuid not null default uuidv7(),
            project_id          uuid not null,
            email               text not null check (length(email) between 3 and 320),
            role                text not null check (role in ('admin', 'editor', 'viewer')),
            -- SHA-256 of the secret; the secret itself is never stored.
            token_hash          bytea not null check (length(token_hash) = 32),
            expires_at          timestamptz not null,
            invited_by_user_id  uuid references user_account (id) on delete set null,
            send_count          integer not null default 1 check (send_count >= 1),
            accepted_at         timestamptz,
            accepted_by_user_id uuid references user_account (id) on delete set null,
            declined_at         timestamptz,
            revoked_at          timestamptz,
            created_at          timestamptz not null default now(),
            updated_at          timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, project_id, id),
            foreign key (organization_id, project_id) references project (organization_id, id)
                on delete cascade,
            -- An invite ends at most one way.
            check (num_nonnulls(accepted_at, declined_at, revoked_at) <= 1),
            check (accepted_at is not null or accepted_by_user_id is null)
        );
        -- One open invite per (project, email); "open" = not accepted, declined or revoked.
        -- (Expiry is time, not state: an expired open invite is resent or revoked.)
        create unique index project_invite_open_key on project_invite
            (organization_id, project_id, lower(email))
            where accepted_at is null and declined_at is null and revoked_at is null;
        -- Accepting finds the invite by its hash before the organization is known: like
        -- platform_token_hash_key, an index that cannot lead with organization_id.
        create unique index project_invite_token_hash_key on project_invite (token_hash);

        create table project_membership (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            project_id      uuid not null,
            user_id         uuid not null references user_account (id) on delete cascade,
            role            text not null check (role in ('admin', 'editor', 'viewer')),
            invite_id       uuid,
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, project_id, user_id),
            foreign key (organization_id, project_id) references project (organization_id, id)
                on delete cascade,
            foreign key (organization_id, project_id, invite_id)
                references project_invite (organization_id, project_id, id) on delete set null (invite_id)
        );
        -- begin_request: a user's projects in the credential's organization.
        create index project_membership_user_org_idx on project_membership (organization_id, user_id);
        -- Login looks up the organizations a user can enter before any is known.
        create index project_membership_user_idx on project_membership (user_id);

        create table invite_outbox (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            project_id      uuid not null,
            invite_id       uuid not null,
            recipient       text not null check (length(recipient) between 3 and 320),
            subject         text not null check (length(subject) between 1 and 500),
            body            text not null check (length(body) <= 10000),
            -- Random input from which the mailer re-derives the invite secret with the
            -- server's key (see tenant_api.invites.tokens): the outbox holds no secret.
            nonce           bytea not null check (length(nonce) = 32),
            status          text not null default 'pending'
                            check (status in ('pending', 'sent', 'failed', 'cancelled')),
            attempts        integer not null default 0 check (attempts >= 0),
            next_attempt_at timestamptz not null default now(),
            last_error      text check (length(last_error) <= 1000),
            sent_at         timestamptz,
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            foreign key (organization_id, project_id, invite_id)
                references project_invite (organization_id, project_id, id) on delete cascade
        );
        create index invite_outbox_invite_idx on invite_outbox (organization_id, invite_id, id);
        -- The mailer claims due rows of every organization: a small partial index that
        -- cannot lead with organization_id (the work queue is global by nature).
        create index invite_outbox_due_idx on invite_outbox (next_attempt_at) where status = 'pending';
        """
    )


def downgrade() -> None:
    exec_script(op.get_bind(),
        """
        -- policies/user_account.sql (applied at head) names project_membership; put back
        -- the policy as it was without it, so the table can go and users stay visible.
        drop policy if exists visible_members on public.user_account;
        create policy visible_members on public.user_account for select to tenant_api
          using (
            id = (select app.current_user_id())
            or id in (select m.user_id from public.organization_membership m
                       where m.organization_id = (select app.current_organization_id()))
          );
        -- The older code's policies re-create its own 4-argument auth.create_session; two
        -- overloads would make its calls ambiguous.
        drop function if exists auth.create_session(uuid, uuid, interval, text, uuid[]);
        drop function if exists auth.accept_invite(bytea, uuid, boolean);
        drop function if exists auth.claim_invite_mail(integer, interval);
        drop function if exists auth.finish_invite_mail(uuid, uuid, text, interval);
        drop table invite_outbox, project_membership, project_invite;
        """
    )
