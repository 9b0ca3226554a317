"""Least privilege inside PostgreSQL: a role per background duty, a login role.

The definer functions of the background duties (scheduler, sealer, retention, run
reaper, webhook delivery, idempotency purge, mailer, desktop reaper, usage writer) and
the login functions (password hash lookup, sessions, signup, verification) are no
longer the API role's: each belongs to a NOLOGIN role of its own, held by the login of
the process that runs it (tenant_worker, tenant_api_jobs, tenant_login). The grants live
in policies/*.sql; the roles come from the superuser bootstrap (policies/roles.sql): an
existing installation runs `tenant-api bootstrap` once before this migration, and gives
each process its new URL (docs/security.md).

The database also enforces the membership rules now (policies/organization_membership.sql),
among them: a project membership ends when its user joins the organization. Such rows
left from before are removed here (their organization role already applied).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08
"""

from alembic import op

from tenant_api.db.policies import exec_script

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    exec_script(
        op.get_bind(),
        """
        do $$ begin
          if exists (select from unnest(array['tenant_worker', 'tenant_api_jobs', 'tenant_login',
                                              'tenant_duty_scheduler', 'tenant_duty_sealer', 'tenant_duty_retention',
                                              'tenant_duty_run_reaper', 'tenant_duty_webhooks',
                                              'tenant_duty_idempotency', 'tenant_duty_mailer',
                                              'tenant_duty_desktop_reaper', 'tenant_duty_usage']) r
                      where not exists (select from pg_roles where rolname = r)) then
            raise exception 'run `tenant-api bootstrap` (as a superuser) once before migrating: each background'
                            ' duty and the login functions have roles of their own (policies/roles.sql)';
          end if;
          execute format('grant connect on database %I to tenant_worker, tenant_api_jobs, tenant_login',
                         current_database());
        end $$;

        alter table public.project_membership no force row level security;
        delete from public.project_membership pm
         using public.organization_membership m
         where m.organization_id = pm.organization_id and m.user_id = pm.user_id;
        alter table public.project_membership force row level security;
        """,
    )


def downgrade() -> None:
    # The roles stay (cluster-level); the grants of revision 0014's policies come back
    # with its policies. Removed project memberships are not restored.
    exec_script(op.get_bind(), "select 1")
