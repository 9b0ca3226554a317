"""Audit: usage records, security events, the unified event view, tamper-evident seals.

* ``txid`` (the writing transaction's id, xid8) on token_audit_log and token_usage: the
  order of the audit trail. Listing and sealing only ever look at rows written by
  transactions older than every transaction still running (``pg_snapshot_xmin``), so a
  row that commits late can never land behind a page boundary or a seal already handed
  out: ordering by (txid, id) puts every row not yet final after every row that is.
  (UUIDv7 ids alone are not enough: ids are taken at insert, commits happen later and
  in any order.) No lock, no sequence, nothing added to the write path but a default.
* ``token_usage``: one row per authenticated request (and per request whose known token
  was refused as expired/revoked/not a member: ``reason`` set, a security event).
* ``unattributed_security_event``: unknown or malformed credentials, whose organization
  cannot be known. Not a tenant table: no API role access at all; operators read it.
* ``audit_event``: the auditor's single timeline (data changes + requests + security
  events), and the one definition of each event's canonical content that the seals
  hash. It lives in a revision, not in policies/, on purpose: changing ``content``
  would make every existing seal fail to verify, so it must be a deliberate, versioned
  change (a new view and a new seal format), never an edit re-applied in place.
* ``audit_seal``: per organization, a SHA-256 chain of blocks of event hashes (and
  purge records), written only by app.audit_seal / app.audit_purge (policies/audit_seal.sql).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from alembic import op

from tenant_api.db.policies import exec_script

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    exec_script(op.get_bind(),
        """
        alter table token_audit_log add column txid xid8 not null default pg_current_xact_id();
        drop index token_audit_log_token_idx;
        create index token_audit_log_token_idx on token_audit_log (organization_id, token_id, txid, id);
        create index token_audit_log_order_idx on token_audit_log (organization_id, txid, id);

        create table token_usage (
            organization_id uuid not null references organization (id) on delete cascade,
            id              uuid not null default uuidv7(),
            txid            xid8 not null default pg_current_xact_id(),
            occurred_at     timestamptz not null,
            token_id        uuid not null,
            user_id         uuid,
            prefix          text not null check (length(prefix) <= 32),
            method          text not null check (length(method) between 1 and 16),
            route           text not null check (length(route) between 1 and 512),
            status          smallint not null check (status between 100 and 599),
            duration_ms     numeric(12, 3) not null check (duration_ms >= 0),
            client_ip       inet,
            user_agent      text check (length(user_agent) <= 512),
            request_id      text check (length(request_id) <= 64),
            -- set: the credential was refused before any work (a security event)
            reason          text check (reason in ('expired', 'revoked', 'not_member')),
            primary key (organization_id, id)
        );
        create index token_usage_order_idx on token_usage (organization_id, txid, id);
        create index token_usage_token_idx on token_usage (organization_id, token_id, txid, id);
        create index token_usage_time_idx on token_usage (organization_id, occurred_at);

        create table unattributed_security_event (
            id          uuid primary key default uuidv7(),
            occurred_at timestamptz not null,
            reason      text not null check (reason in ('unknown', 'malformed')),
            prefix      text check (length(prefix) <= 32),
            method      text not null check (length(method) between 1 and 16),
            route       text not null check (length(route) between 1 and 512),
            status      smallint not null check (status between 100 and 599),
            client_ip   inet,
            user_agent  text check (length(user_agent) <= 512),
            request_id  text check (length(request_id) <= 64)
        );
        create index unattributed_security_event_time_idx on unattributed_security_event (occurred_at);

        create view audit_event with (security_invoker = true) as
        select organization_id, id, txid, occurred_at, 'change'::text as kind,
               token_id, user_id, request_id, table_name, row_id, action, changes,
               null::text as method, null::text as route, null::smallint as status,
               null::numeric as duration_ms, null::inet as client_ip, null::text as user_agent,
               null::text as prefix, null::text as reason,
               jsonb_build_array('change', organization_id, id, txid::text,
                                 (extract(epoch from occurred_at) * 1000000)::bigint,
                                 token_id, user_id, request_id, table_name, row_id, action, changes)
                 as content
          from token_audit_log
        union all
        select organization_id, id, txid, occurred_at,
               case when reason is null then 'request' else 'security' end,
               token_id, user_id, request_id, null, null, null, null,
               method, route, status, duration_ms, client_ip, user_agent, prefix, reason,
               jsonb_build_array('usage', organization_id, id, txid::text,
                                 (extract(epoch from occurred_at) * 1000000)::bigint,
                                 token_id, user_id, request_id, prefix, method, route, status,
                                 duration_ms, client_ip::text, user_agent, reason)
          from token_usage;

        create table audit_seal (
            organization_id   uuid not null references organization (id) on delete cascade,
            id                uuid not null default uuidv7(),
            seq               bigint not null check (seq >= 1),
            kind              text not null check (kind in ('block', 'purge')),
            -- block: its last event's key; purge: the last purged block's last key
            last_txid         xid8 not null,
            last_id           uuid not null,
            event_count       integer not null check (event_count >= 0),
            event_ids         uuid[] not null default '{}',
            event_hashes      bytea[] not null default '{}',
            first_occurred_at timestamptz,
            last_occurred_at  timestamptz,
            purged_through_seq bigint,
            previous_digest   bytea not null check (length(previous_digest) = 32),
            digest            bytea not null check (length(digest) = 32),
            sealed_at         timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, seq),
            check ((kind = 'purge') = (purged_through_seq is not null)),
            check (cardinality(event_ids) = cardinality(event_hashes)),
            check (kind = 'purge' or cardinality(event_ids) = event_count)
        );
        """
    )


def downgrade() -> None:
    exec_script(op.get_bind(),
        """
        drop function if exists app.record_usage(jsonb);
        drop function if exists app.audit_seal(uuid, integer);
        drop function if exists app.audit_seal_candidates();
        drop function if exists app.audit_sealed_through(uuid);
        drop function if exists app.audit_purge(timestamptz, uuid);
        drop function if exists app.audit_purge_candidates(timestamptz);
        drop function if exists app.audit_genesis(uuid);
        drop view audit_event;
        drop table audit_seal, unattributed_security_event, token_usage;
        drop index token_audit_log_order_idx;
        drop index token_audit_log_token_idx;
        alter table token_audit_log drop column txid;
        create index token_audit_log_token_idx on token_audit_log (organization_id, token_id, id);
        """
    )
