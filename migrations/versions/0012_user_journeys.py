"""The users' journeys: verified email, organization invites, service accounts.

* user_account: ``kind`` (person | service), ``email_verified_at``, ``email_hold_until``
  (an unverified account holds its address until then, see policies/verification.sql)
  and ``verify_token_hash`` (SHA-256 of the pending verification secret). Accounts that
  exist before this revision predate verification and are taken as verified.
* project_invite: ``project_id`` null = an organization invite (role admin, member or
  auditor); ``mail_token_hash``, the hash of the second secret, the one only the mail
  carries (accepting with it proves the mailbox).
* invite_outbox: also carries verification mails (``kind`` verify, ``user_id``).
* service_account: organization-owned principals (a user_account of kind service with
  an organization membership), for integrations.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from alembic import op

from tenant_api.db.policies import exec_script

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    exec_script(op.get_bind(),
        """
        alter table user_account
            add column kind text not null default 'person' check (kind in ('person', 'service')),
            add column email_verified_at timestamptz,
            add column email_hold_until timestamptz,
            add column verify_token_hash bytea check (length(verify_token_hash) = 32);
        -- They predate verification: taken as verified rather than made claimable.
        update user_account set email_verified_at = created_at;
        -- Verifying finds the account by the secret's hash, before anything else is known.
        create unique index user_account_verify_token_hash_key on user_account (verify_token_hash)
            where verify_token_hash is not null;

        alter table project_invite
            alter column project_id drop not null,
            add column mail_token_hash bytea check (length(mail_token_hash) = 32),
            drop constraint project_invite_role_check,
            add constraint project_invite_role_check check (
                (project_id is not null and role in ('admin', 'editor', 'viewer'))
                or (project_id is null and role in ('admin', 'member', 'auditor')));
        drop index project_invite_open_key;
        -- One open invite per (project or organization, email): NULLS NOT DISTINCT makes
        -- the organization's own invites (project_id null) one group.
        create unique index project_invite_open_key on project_invite
            (organization_id, project_id, lower(email)) nulls not distinct
            where accepted_at is null and declined_at is null and revoked_at is null;
        -- Like project_invite_token_hash_key: found by hash before the organization is known.
        create unique index project_invite_mail_token_hash_key on project_invite (mail_token_hash);

        alter table invite_outbox
            alter column project_id drop not null,
            alter column invite_id drop not null,
            add column kind text not null default 'invite' check (kind in ('invite', 'verify')),
            add column user_id uuid references user_account (id) on delete cascade,
            add constraint invite_outbox_kind_fields_check check (
                (kind = 'invite' and invite_id is not null and user_id is null)
                or (kind = 'verify' and invite_id is null and project_id is null and user_id is not null));
        -- The composite key (organization, project, invite) stays for project invites; an
        -- organization invite's mail (project_id null) is tied by (organization, invite).
        alter table invite_outbox add constraint invite_outbox_invite_fkey
            foreign key (organization_id, invite_id) references project_invite (organization_id, id)
            on delete cascade;

        create table service_account (
            organization_id    uuid not null references organization (id) on delete cascade,
            id                 uuid not null default uuidv7(),
            user_id            uuid not null references user_account (id),
            name               text not null check (length(name) between 1 and 200),
            description        text not null default '' check (length(description) <= 2000),
            -- The most its tokens may carry (null: the role's scopes), and the projects
            -- they are restricted to (null: every project). Fixed at creation.
            scopes             text[],
            project_ids        uuid[],
            created_by_user_id uuid references user_account (id) on delete set null,
            created_at         timestamptz not null default now(),
            updated_at         timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, user_id)
        );
        """
    )


def downgrade() -> None:
    exec_script(op.get_bind(),
        """
        drop function if exists auth.signup(text, text, text, text, interval, bytea, bytea, text, text, boolean);
        drop function if exists auth.verify_email(bytea, text);
        drop function if exists auth.issue_verification(uuid, bytea, bytea, text, text, interval);
        drop function if exists auth.invite_preview(bytea);
        drop function if exists auth.my_organizations(uuid);
        drop function if exists auth.create_service_user(text);
        drop table service_account;
        delete from invite_outbox where kind = 'verify';
        alter table invite_outbox drop constraint invite_outbox_invite_fkey,
            drop constraint invite_outbox_kind_fields_check, drop column kind, drop column user_id,
            alter column project_id set not null, alter column invite_id set not null;
        delete from project_invite where project_id is null;
        drop index project_invite_mail_token_hash_key;
        drop index project_invite_open_key;
        create unique index project_invite_open_key on project_invite
            (organization_id, project_id, lower(email))
            where accepted_at is null and declined_at is null and revoked_at is null;
        alter table project_invite drop constraint project_invite_role_check,
            add constraint project_invite_role_check check (role in ('admin', 'editor', 'viewer')),
            drop column mail_token_hash, alter column project_id set not null;
        drop index user_account_verify_token_hash_key;
        delete from user_account where kind = 'service';
        alter table user_account drop column kind, drop column email_verified_at,
            drop column email_hold_until, drop column verify_token_hash;
        """
    )
