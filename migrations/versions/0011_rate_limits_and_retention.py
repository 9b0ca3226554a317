"""Per-organization rate limits, and the indexes retention purges walk.

* ``organization.rate_limit_requests`` / ``rate_limit_window_seconds``: an
  organization's own quota per credential (null: the API's default, RATE_LIMIT_REQUESTS
  per RATE_LIMIT_WINDOW_SECONDS). Set by operators (``tenant-api rate-limit set``,
  through auth.set_rate_limit), read by the API's limiter through auth.rate_limit_of;
  tenants can read it, never change it (policies/organization.sql grants the API role
  UPDATE on name only).
* Partial indexes, led by organization_id like every index, over the rows retention
  removes (finished jobs, closed robot connections, delivered invite mails): the
  scheduler's purge functions (policies/retention.sql) find a bounded batch without
  reading the live rows.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from alembic import op

from tenant_api.db.policies import exec_script

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    exec_script(
        op.get_bind(),
        """
        alter table organization
          add column rate_limit_requests integer
            check (rate_limit_requests between 1 and 1000000),
          add column rate_limit_window_seconds integer
            check (rate_limit_window_seconds between 1 and 86400),
          add constraint organization_rate_limit_complete
            check ((rate_limit_requests is null) = (rate_limit_window_seconds is null));

        create index job_finished_idx on job (organization_id, finished_at)
          where status in ('succeeded', 'failed', 'cancelled');
        create index desktop_connection_closed_idx on desktop_connection (organization_id, disconnected_at)
          where status = 'disconnected';
        create index invite_outbox_sent_idx on invite_outbox (organization_id, sent_at)
          where status = 'sent';
        """,
    )


def downgrade() -> None:
    exec_script(
        op.get_bind(),
        """
        drop function if exists auth.rate_limit_of(uuid);
        drop function if exists auth.set_rate_limit(uuid, integer, integer);
        drop function if exists auth.purge_finished_jobs(timestamptz, integer);
        drop function if exists auth.purge_closed_desktop_connections(timestamptz, integer);
        drop function if exists auth.purge_sent_invite_mails(timestamptz, integer);
        drop function if exists app.purge_security_events(timestamptz, integer);
        drop index invite_outbox_sent_idx;
        drop index desktop_connection_closed_idx;
        drop index job_finished_idx;
        alter table organization drop constraint organization_rate_limit_complete,
          drop column rate_limit_window_seconds, drop column rate_limit_requests;
        """,
    )
