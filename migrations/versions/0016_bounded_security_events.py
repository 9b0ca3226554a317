"""Security events stay bounded under a flood of refused credentials (issue 10).

Each refused credential used to add a row: 1,000 requests, 1,000 rows. Now the usage
recorder aggregates them (tenant_api.audit.usage) and a row stands for several requests:

* ``unattributed_security_event`` (unknown, malformed or rate-limited credentials): one
  row per client address, reason and prefix per minute (``minute``), with
  ``request_count`` and ``last_occurred_at``; the recorder upserts on that key, so every
  worker and instance adds to the same row. Existing rows are merged the same way.
* ``token_usage`` rows with a ``reason`` (a known token refused as expired, revoked or no
  longer a member's): one row per token, reason and minute, with ``request_count``.
  Sealed rows are never updated: the recorder holds such a row until its minute ends.
  ``audit_event.content`` (what seals hash) gains the count only when it is above one,
  so every existing row's content, and every existing seal, stays as it was.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-10
"""

from alembic import op

from tenant_api.db.policies import exec_script

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_AUDIT_EVENT = """
    create or replace view audit_event with (security_invoker = true) as
    select organization_id, id, txid, occurred_at, 'change'::text as kind,
           token_id, user_id, request_id, table_name, row_id, action, changes,
           null::text as method, null::text as route, null::smallint as status,
           null::numeric as duration_ms, null::inet as client_ip, null::text as user_agent,
           null::text as prefix, null::text as reason,
           jsonb_build_array('change', organization_id, id, txid::text,
                             (extract(epoch from occurred_at) * 1000000)::bigint,
                             token_id, user_id, request_id, table_name, row_id, action, changes)
             as content{change_count}
      from token_audit_log
    union all
    select organization_id, id, txid, occurred_at,
           case when reason is null then 'request' else 'security' end,
           token_id, user_id, request_id, null, null, null, null,
           method, route, status, duration_ms, client_ip, user_agent, prefix, reason,
           jsonb_build_array('usage', organization_id, id, txid::text,
                             (extract(epoch from occurred_at) * 1000000)::bigint,
                             token_id, user_id, request_id, prefix, method, route, status,
                             duration_ms, client_ip::text, user_agent, reason){usage_count}
      from token_usage;
"""


def upgrade() -> None:
    exec_script(
        op.get_bind(),
        """
        alter table token_usage
            add column request_count integer not null default 1
                check (request_count >= 1 and (request_count = 1 or reason is not null));

        alter table unattributed_security_event
            add column minute           timestamptz,
            add column last_occurred_at timestamptz,
            add column request_count    integer not null default 1 check (request_count >= 1);
        update unattributed_security_event
           set minute = date_trunc('minute', occurred_at, 'UTC'), last_occurred_at = occurred_at;
        -- the rows of one key and minute become one
        with g as (
            select (array_agg(id order by occurred_at, id))[1] as keep, array_agg(id) as ids,
                   sum(request_count)::integer as n, max(last_occurred_at) as last_at
              from unattributed_security_event
             group by minute, client_ip, reason, prefix
            having count(*) > 1
        ), merged as (
            update unattributed_security_event u set request_count = g.n, last_occurred_at = g.last_at
              from g where u.id = g.keep
        )
        delete from unattributed_security_event u using g where u.id = any(g.ids) and u.id <> g.keep;
        alter table unattributed_security_event
            alter column minute set not null,
            alter column last_occurred_at set not null,
            drop constraint unattributed_security_event_reason_check,
            add constraint unattributed_security_event_reason_check
                check (reason in ('unknown', 'malformed', 'rate_limited'));
        create unique index unattributed_security_event_bucket_key
            on unattributed_security_event (minute, client_ip, reason, prefix) nulls not distinct;
        """
        + _AUDIT_EVENT.format(
            change_count=",\n           null::integer as request_count",
            usage_count="\n           || case when request_count > 1 then jsonb_build_array(request_count)"
                        " else '[]'::jsonb end,\n           request_count",
        ),
    )


def downgrade() -> None:
    exec_script(
        op.get_bind(),
        """
        drop view audit_event cascade;
        """
        + _AUDIT_EVENT.format(change_count="", usage_count="")
        + """
        drop index unattributed_security_event_bucket_key;
        delete from unattributed_security_event where reason = 'rate_limited';
        alter table unattributed_security_event
            drop constraint unattributed_security_event_reason_check,
            add constraint unattributed_security_event_reason_check check (reason in ('unknown', 'malformed')),
            drop column request_count, drop column last_occurred_at, drop column minute;
        alter table token_usage drop column request_count;
        """,
    )
