"""The request context moves into a parameter only tenant_auth may set.

Revision 0010 signed the context (transaction-local custom settings) with a MAC keyed
by a secret only tenant_auth could read, and every policy accessor re-checked that MAC
through a definer function: correct, but it cost PostgreSQL more than the rows it
guarded (bench/RESULTS.md, issue 9). Custom settings cannot be protected; a built-in
parameter can (GRANT SET ON PARAMETER, PostgreSQL 15+). auth.begin_request now writes
the whole context, transaction-locally, into backtrace_functions, which the API role
can read and never write, so policies compare without checking anything
(policies/context.sql). The key table goes.

Every credential carries its effective context, kept by triggers in the transaction of
every change that affects it (its own row, its user's memberships): its user's role,
the effective scope mask and projects, and the context string (platform_token.
member_role, effective_mask, effective_projects, context_head and context_tail; scope_mask is the
token's own scopes as a mask). auth.begin_request reads one row and writes one setting.

Project-restricted credentials run as a role of their own, tenant_api_projects, so the
API role's policies never pay for the project check (policies/context.sql).

The grant and the role come from the superuser bootstrap (policies/roles.sql): an
existing installation runs `tenant-api bootstrap` once before this migration.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from alembic import op

from tenant_api.db.policies import exec_script

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    exec_script(
        op.get_bind(),
        """
        do $$ begin
          if not has_parameter_privilege('tenant_auth', 'backtrace_functions', 'SET')
             or not exists (select from pg_roles where rolname = 'tenant_api_projects') then
            raise exception 'run `tenant-api bootstrap` (as a superuser) once before migrating: the request'
                            ' context lives in backtrace_functions, which tenant_auth must be granted SET on, and'
                            ' restricted credentials run as tenant_api_projects (policies/roles.sql, context.sql)';
          end if;
        end $$;

        drop table auth.context_key cascade;

        -- Kept by policies/platform_token.sql (a trigger, and the backfill it runs).
        alter table public.platform_token add column scope_mask bigint,
                                          add column member_role text,
                                          add column effective_mask bigint,
                                          add column effective_projects uuid[],
                                          add column context_head text,
                                          add column context_tail text;
        """,
    )


def downgrade() -> None:
    exec_script(
        op.get_bind(),
        """
        -- The trigger and policies applied at head read these columns; the previous
        -- release's `tenant-api migrate` applies its own (docs/operating.md, rolling back).
        drop trigger if exists keep_context on public.platform_token;
        do $$
        declare p record;
        begin
          for p in select polname from pg_policy where polrelid = 'public.platform_token'::regclass loop
            execute format('drop policy %I on public.platform_token', p.polname);
          end loop;
        end
        $$;
        alter table public.platform_token drop column scope_mask, drop column member_role,
          drop column effective_mask, drop column effective_projects, drop column context_head,
          drop column context_tail;
        create table auth.context_key (
            singleton boolean primary key default true check (singleton),
            key bytea not null default sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8'))
        );
        insert into auth.context_key default values;
        revoke all on auth.context_key from public;
        """,
    )
