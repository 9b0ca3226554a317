"""Integrations: runners claim work, webhooks say what changed, retries are safe.

Runs (job, computer_use_task, robot_macro_execution) get the runner protocol's columns:
the attempt number and its maximum, the lease, the SHA-256 of the claim secret, the
claiming token, progress and the outcome (exit code, error). Each may go back to the
queue (running -> queued, only once its lease has expired; the scheduler process does it)
and robot macro executions now start queued too, so that a robot can claim them.
app.guard_run() enforces the protocol for every path (the API checks first, for a 409);
app.guard_job_log() closes a job's log except to its running attempt;
app.notify_run_queued() wakes long-polling claims (ids only in the payload).

Rows that were running before this revision had no holder: they get attempt 1 of 1 and
a lease of one hour, so they fail ("lease expired") unless someone cancels them first.
Nobody can finish them (no claim secret was ever handed out).

New tables:
  * idempotency_key: one per (credential, Idempotency-Key) for 24 hours: hashes of the
    key and the request, and the first response, encrypted under a key derived from the
    Idempotency-Key (tenant_api.idempotency);
  * webhook, webhook_event (the outbox, written by a trigger in the changing
    transaction), webhook_delivery (one per event and subscribed webhook) and
    webhook_attempt (one per HTTP attempt): tenant_api.webhooks.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from alembic import op

from tenant_api.db.policies import exec_script

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    exec_script(
        op.get_bind(),
        """
        -- --- runs: the runner protocol's columns --------------------------------------------
        alter table job_schedule
          add column max_attempts integer not null default 3 check (max_attempts between 1 and 100),
          add column labels text[] not null default '{}' check (cardinality(labels) <= 20);

        alter table job
          add column labels text[] not null default '{}' check (cardinality(labels) <= 20),
          add column max_attempts integer not null default 3 check (max_attempts between 1 and 100),
          add column attempt integer not null default 0,
          add column lease_expires_at timestamptz,
          add column claim_secret_hash bytea check (octet_length(claim_secret_hash) = 32),
          add column claimed_by_token_id uuid,
          add column claimed_at timestamptz,
          add column heartbeat_at timestamptz,
          add column progress jsonb check (octet_length(progress::text) <= 4096),
          add column error text check (length(error) between 1 and 2000);

        alter table computer_use_task
          add column max_attempts integer not null default 3 check (max_attempts between 1 and 100),
          add column attempt integer not null default 0,
          add column lease_expires_at timestamptz,
          add column claim_secret_hash bytea check (octet_length(claim_secret_hash) = 32),
          add column claimed_by_token_id uuid,
          add column claimed_at timestamptz,
          add column heartbeat_at timestamptz,
          add column progress jsonb check (octet_length(progress::text) <= 4096),
          add column exit_code integer,
          add column error text check (length(error) between 1 and 2000);

        -- Executions now start queued (a robot claims them); started_at is set when one runs.
        alter table robot_macro_execution drop constraint robot_macro_execution_status_check;
        alter table robot_macro_execution drop constraint robot_macro_execution_check;
        alter table robot_macro_execution
          alter column status set default 'queued',
          alter column started_at drop not null,
          alter column started_at drop default,
          add constraint robot_macro_execution_status_check
            check (status in ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
          add constraint robot_macro_execution_finished_check
            check ((status in ('queued', 'running')) = (finished_at is null)),
          add column max_attempts integer not null default 3 check (max_attempts between 1 and 100),
          add column attempt integer not null default 0,
          add column lease_expires_at timestamptz,
          add column claim_secret_hash bytea check (octet_length(claim_secret_hash) = 32),
          add column claimed_by_token_id uuid,
          add column claimed_at timestamptz,
          add column heartbeat_at timestamptz,
          add column progress jsonb check (octet_length(progress::text) <= 4096),
          add column exit_code integer,
          add column error text check (length(error) between 1 and 2000);
        create index robot_macro_execution_status_idx on robot_macro_execution (organization_id, status, id);

        -- Running rows from before had no holder: one attempt, one hour, then failed.
        -- (The owner is subject to the forced RLS too: lifted for these statements only.)
        alter table job no force row level security;
        alter table computer_use_task no force row level security;
        alter table robot_macro_execution no force row level security;
        update job set attempt = 1, max_attempts = 1, lease_expires_at = now() + interval '1 hour',
                       claim_secret_hash = sha256(convert_to(gen_random_uuid()::text, 'UTF8'))
         where status = 'running';
        update computer_use_task set attempt = 1, max_attempts = 1, lease_expires_at = now() + interval '1 hour',
                       claim_secret_hash = sha256(convert_to(gen_random_uuid()::text, 'UTF8'))
         where status = 'running';
        update robot_macro_execution set attempt = 1, max_attempts = 1, lease_expires_at = now() + interval '1 hour',
                       claim_secret_hash = sha256(convert_to(gen_random_uuid()::text, 'UTF8'))
         where status = 'running';
        alter table job force row level security;
        alter table computer_use_task force row level security;
        alter table robot_macro_execution force row level security;

        alter table job
          add constraint job_lease_check check ((status = 'running') = (lease_expires_at is not null)),
          add constraint job_claim_check check ((status = 'running') = (claim_secret_hash is not null)),
          add constraint job_attempt_check check (attempt between 0 and max_attempts),
          add constraint job_outcome_check check (error is null or status in ('succeeded', 'failed', 'cancelled'));
        alter table computer_use_task
          add constraint computer_use_task_lease_check check ((status = 'running') = (lease_expires_at is not null)),
          add constraint computer_use_task_claim_check check ((status = 'running') = (claim_secret_hash is not null)),
          add constraint computer_use_task_attempt_check check (attempt between 0 and max_attempts),
          add constraint computer_use_task_outcome_check
            check ((exit_code is null and error is null) or status in ('succeeded', 'failed', 'cancelled'));
        alter table robot_macro_execution
          add constraint robot_macro_execution_lease_check
            check ((status = 'running') = (lease_expires_at is not null)),
          add constraint robot_macro_execution_claim_check
            check ((status = 'running') = (claim_secret_hash is not null)),
          add constraint robot_macro_execution_attempt_check check (attempt between 0 and max_attempts),
          add constraint robot_macro_execution_outcome_check
            check ((exit_code is null and error is null) or status in ('succeeded', 'failed', 'cancelled'));

        -- The lease reaper looks for expired leases across organizations (a global queue).
        create index job_lease_idx on job (lease_expires_at) where status = 'running';
        create index computer_use_task_lease_idx on computer_use_task (lease_expires_at) where status = 'running';
        create index robot_macro_execution_lease_idx on robot_macro_execution (lease_expires_at)
          where status = 'running';

        -- Each log chunk names the attempt that wrote it.
        alter table job_log add column attempt integer not null default 0;

        -- The protocol, for every path (the API checks the same first, for a 409). UPDATE
        -- only: a new row's invariants are the CHECK constraints above, which PostgreSQL
        -- checks after RLS (a BEFORE INSERT trigger would answer before RLS does).
        --   TG_ARGV[0]  the entity's name, for messages ("job")
        create or replace function app.guard_run() returns trigger
          language plpgsql
          set search_path = pg_catalog, pg_temp
          as $$
        declare
          entity text := TG_ARGV[0];
          problem text;
        begin
          if new.attempt is distinct from old.attempt
             and not (old.status = 'queued' and new.status = 'running' and new.attempt = old.attempt + 1) then
            problem := 'the attempt number changes only when a runner claims the ' || entity;
          elsif old.status = 'queued' and new.status = 'running' then
            if new.claim_secret_hash is null or new.lease_expires_at is null or new.lease_expires_at <= now()
               or new.claimed_by_token_id is null
               or new.claimed_by_token_id is distinct from app.current_token_id() then
              problem := 'a ' || entity || ' starts running only when a runner claims it'
                         || ' (a lease, a claim secret, the claiming token)';
            end if;
          elsif old.status = 'running' and new.status = 'running' then
            if new.claim_secret_hash is distinct from old.claim_secret_hash
               or new.claimed_by_token_id is distinct from old.claimed_by_token_id then
              problem := 'the claim on a running ' || entity || ' cannot change hands';
            end if;
          elsif old.status = 'running' and new.status = 'queued' then
            if old.lease_expires_at > now() then
              problem := 'a running ' || entity || ' goes back to the queue only once its lease has expired';
            end if;
          elsif old.status = 'running' and new.status = 'succeeded' then
            if new.exit_code is distinct from 0 or new.error is not null then
              problem := 'a ' || entity || ' succeeds with exit code 0 and no error only';
            end if;
          elsif old.status = 'running' and new.status = 'failed' then
            if new.error is null and coalesce(new.exit_code, 0) = 0 then
              problem := 'a failed ' || entity || ' needs an exit code other than 0 or an error';
            end if;
          end if;
          if problem is null and old.status in ('succeeded', 'failed', 'cancelled')
             and (new.exit_code is distinct from old.exit_code or new.error is distinct from old.error
                  or new.progress is distinct from old.progress) then
            problem := 'a finished ' || entity || ' is final';
          end if;
          if problem is not null then
            raise exception '%', problem
              using errcode = 'check_violation', constraint = TG_TABLE_NAME || '_run_protocol';
          end if;
          return new;
        end
        $$;

        -- A job's log is open to its running attempt only (closed once it finishes). A job
        -- this credential cannot see is left to RLS and the foreign key to refuse.
        create or replace function app.guard_job_log() returns trigger
          language plpgsql
          set search_path = pg_catalog, pg_temp
          as $$
        declare
          j record;
        begin
          select status, attempt into j from public.job
           where organization_id = new.organization_id and id = new.job_id
             for share;
          if found and (j.status <> 'running' or j.attempt <> new.attempt) then
            raise exception 'job %: only its running attempt appends logs (the job is %, attempt %)',
                            new.job_id, j.status, j.attempt
              using errcode = 'check_violation', constraint = 'job_log_running_attempt';
          end if;
          return new;
        end
        $$;

        -- Long-polling claims wait on this channel (one LISTEN connection per API process).
        -- Ids only: every listening session receives every notification, whatever RLS
        -- would let it read. Sent at commit; a rolled-back change wakes nobody.
        --   TG_ARGV[0]  the kind ("job", "computer_use_task", "robot_macro_execution")
        create or replace function app.notify_run_queued() returns trigger
          language plpgsql
          set search_path = pg_catalog, pg_temp
          as $$
        begin
          if new.status = 'queued' then
            perform pg_notify('run_queued', json_build_object(
              'organization_id', new.organization_id, 'kind', TG_ARGV[0])::text);
          end if;
          return null;
        end
        $$;

        -- --- idempotency keys ----------------------------------------------------------------
        create table idempotency_key (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            token_id        uuid not null,
            -- HMAC-SHA256 under a server key of (organization, token, key): a guessable
            -- key cannot be tested against a copy of this table
            key_hash        bytea not null check (octet_length(key_hash) = 32),
            request_hash    bytea not null check (octet_length(request_hash) = 32),
            method          text not null check (length(method) between 1 and 10),
            path            text not null check (length(path) between 1 and 2000),
            status_code     integer not null check (status_code between 100 and 599),
            content_type    text check (length(content_type) <= 200),
            -- nonce || AES-256-GCM(body), under a key derived from the Idempotency-Key
            response        bytea not null check (octet_length(response) <= 8388608),
            created_at      timestamptz not null default now(),
            expires_at      timestamptz not null,
            primary key (organization_id, id),
            unique (organization_id, token_id, key_hash),
            foreign key (organization_id, token_id) references platform_token (organization_id, id)
                on delete cascade
        );
        create index idempotency_key_expiry_idx on idempotency_key (expires_at);

        -- --- webhooks --------------------------------------------------------------------------
        create table webhook (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            url             text not null check (length(url) between 8 and 2000),
            -- scheme://host[:port]: what the audit trail shows of the url (a path can
            -- itself be a secret, e.g. a chat service's incoming-webhook URL)
            url_origin      text not null check (length(url_origin) between 8 and 300),
            description     text not null default '' check (length(description) <= 500),
            event_types     text[] not null check (cardinality(event_types) between 1 and 50),
            project_ids     uuid[] check (project_ids is null or cardinality(project_ids) between 1 and 1000),
            enabled         boolean not null default true,
            -- deliveries carry what this credential can read at delivery time
            owner_token_id  uuid not null,
            paused_reason   text check (length(paused_reason) between 1 and 200),
            paused_at       timestamptz,
            -- the signing secret is HMAC(server key, organization, id, nonce): no secret here
            secret_nonce    bytea not null check (octet_length(secret_nonce) = 32),
            previous_secret_nonce bytea check (octet_length(previous_secret_nonce) = 32),
            previous_secret_expires_at timestamptz,
            secret_rotated_at timestamptz,
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            check ((previous_secret_nonce is null) = (previous_secret_expires_at is null)),
            check ((paused_reason is null) = (paused_at is null)),
            foreign key (organization_id, owner_token_id) references platform_token (organization_id, id)
        );

        -- The outbox. Ordering per object uses seq (a sequence: the second of two changes
        -- to one row waits for the first's commit before it draws its number).
        create sequence webhook_event_seq;
        create table webhook_event (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            seq             bigint not null default nextval('webhook_event_seq'),
            type            text not null check (length(type) between 3 and 100),
            -- the scope area whose :read scope the webhook's credential needs to receive it
            area            text not null,
            project_id      uuid,
            object_id       uuid not null,
            ordering_key    uuid not null,
            actor_token_id  uuid,
            data            jsonb not null,
            previous        jsonb,
            occurred_at     timestamptz not null default now(),
            primary key (organization_id, id),
            foreign key (organization_id, project_id) references project (organization_id, id) on delete cascade
        );
        alter sequence webhook_event_seq owned by webhook_event.seq;

        create table webhook_delivery (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            webhook_id      uuid not null,
            event_id        uuid not null,
            event_type      text not null,
            event_seq       bigint not null,
            ordering_key    uuid not null,
            status          text not null default 'pending'
                            check (status in ('pending', 'delivered', 'failed', 'skipped')),
            attempts        integer not null default 0 check (attempts >= 0),
            next_attempt_at timestamptz not null default now(),
            last_attempt_at timestamptz,
            last_status_code integer,
            last_error      text check (length(last_error) <= 1000),
            delivered_at    timestamptz,
            redelivered_at  timestamptz,
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, webhook_id, event_id),
            foreign key (organization_id, webhook_id) references webhook (organization_id, id) on delete cascade,
            foreign key (organization_id, event_id) references webhook_event (organization_id, id) on delete cascade
        );
        -- The delivery worker claims due deliveries of every organization (a global queue).
        create index webhook_delivery_due_idx on webhook_delivery (next_attempt_at) where status = 'pending';
        -- ... and holds one back while an earlier one for the same object is pending.
        create index webhook_delivery_order_idx
            on webhook_delivery (organization_id, webhook_id, ordering_key, event_seq) where status = 'pending';
        create index webhook_delivery_list_idx on webhook_delivery (organization_id, webhook_id, id);
        -- Retention (auth.purge_webhook_deliveries): settled deliveries by last change, an
        -- event's deliveries (the cascade from webhook_event, and "no delivery left"), and
        -- events by age.
        create index webhook_delivery_settled_idx on webhook_delivery (organization_id, updated_at)
            where status <> 'pending';
        create index webhook_delivery_event_idx on webhook_delivery (organization_id, event_id);
        create index webhook_event_occurred_idx on webhook_event (organization_id, occurred_at);

        create table webhook_attempt (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            webhook_id      uuid not null,
            delivery_id     uuid not null,
            attempt         integer not null check (attempt >= 1),
            outcome         text not null check (outcome in ('delivered', 'retry', 'failed', 'skipped')),
            started_at      timestamptz not null default now(),
            duration_ms     integer check (duration_ms >= 0),
            status_code     integer,
            error           text check (length(error) <= 1000),
            response_excerpt text check (length(response_excerpt) <= 1024),
            primary key (organization_id, id),
            foreign key (organization_id, delivery_id) references webhook_delivery (organization_id, id)
                on delete cascade,
            foreign key (organization_id, webhook_id) references webhook (organization_id, id) on delete cascade
        );
        create index webhook_attempt_delivery_idx on webhook_attempt (organization_id, delivery_id, id);
        create index webhook_attempt_webhook_idx on webhook_attempt (organization_id, webhook_id, id);
        """,
    )


def downgrade() -> None:
    exec_script(
        op.get_bind(),
        """
        drop policy if exists lease_reaper_select on job;
        drop policy if exists lease_reaper_update on job;
        drop policy if exists lease_reaper_select on computer_use_task;
        drop policy if exists lease_reaper_update on computer_use_task;
        drop policy if exists lease_reaper_select on robot_macro_execution;
        drop policy if exists lease_reaper_update on robot_macro_execution;
        drop function if exists auth.claim_webhook_deliveries(integer, interval, uuid);
        drop function if exists auth.webhook_delivery_context(uuid, uuid);
        drop function if exists auth.finish_webhook_delivery(uuid, uuid, text, integer, text, integer, interval, text);
        drop function if exists auth.requeue_expired_runs(integer);
        drop function if exists auth.purge_idempotency_keys(integer);
        drop function if exists auth.purge_webhook_deliveries(timestamptz, integer);
        drop table webhook_attempt, webhook_delivery, webhook_event, webhook, idempotency_key cascade;
        drop function if exists app.webhook_outbox() cascade;
        drop trigger if exists guard_log on job_log;
        drop trigger if exists guard_run on job;
        drop trigger if exists guard_run on computer_use_task;
        drop trigger if exists guard_run on robot_macro_execution;
        drop trigger if exists notify_queued on job;
        drop trigger if exists notify_queued on computer_use_task;
        drop trigger if exists notify_queued on robot_macro_execution;
        drop function app.guard_run(), app.guard_job_log(), app.notify_run_queued();
        alter table job_log drop column attempt;
        drop index job_lease_idx, computer_use_task_lease_idx, robot_macro_execution_lease_idx,
                   robot_macro_execution_status_idx;
        alter table job drop constraint job_lease_check, drop constraint job_claim_check,
          drop constraint job_attempt_check, drop constraint job_outcome_check,
          drop column labels, drop column max_attempts, drop column attempt, drop column lease_expires_at,
          drop column claim_secret_hash, drop column claimed_by_token_id, drop column claimed_at,
          drop column heartbeat_at, drop column progress, drop column error;
        alter table computer_use_task drop constraint computer_use_task_lease_check,
          drop constraint computer_use_task_claim_check, drop constraint computer_use_task_attempt_check,
          drop constraint computer_use_task_outcome_check,
          drop column max_attempts, drop column attempt, drop column lease_expires_at,
          drop column claim_secret_hash, drop column claimed_by_token_id, drop column claimed_at,
          drop column heartbeat_at, drop column progress, drop column exit_code, drop column error;
        delete from robot_macro_execution where status = 'queued' or started_at is null;
        alter table robot_macro_execution drop constraint robot_macro_execution_lease_check,
          drop constraint robot_macro_execution_claim_check, drop constraint robot_macro_execution_attempt_check,
          drop constraint robot_macro_execution_outcome_check,
          drop constraint robot_macro_execution_finished_check, drop constraint robot_macro_execution_status_check,
          drop column max_attempts, drop column attempt, drop column lease_expires_at,
          drop column claim_secret_hash, drop column claimed_by_token_id, drop column claimed_at,
          drop column heartbeat_at, drop column progress, drop column exit_code, drop column error,
          alter column status set default 'running',
          alter column started_at set default now(),
          alter column started_at set not null,
          add constraint robot_macro_execution_status_check
            check (status in ('running', 'succeeded', 'failed', 'cancelled')),
          add constraint robot_macro_execution_check check ((status = 'running') = (finished_at is null));
        alter table job_schedule drop column max_attempts, drop column labels;
        """,
    )
