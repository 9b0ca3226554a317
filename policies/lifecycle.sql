-- Trigger functions shared by several tables' policies files, which attach them:
-- re-applied at every upgrade like every policy (the revisions that first created them
-- keep their own copies, for their history). Each runs as the invoker and reads only
-- NEW/OLD (guard_run also the request's token).

-- --- status lifecycles (task, job, computer_use_task, robot_macro_execution,
-- desktop_virtual_machine; tenant_api.resources.lifecycle mirrors the moves) -----------
-- One trigger function for every status lifecycle. Arguments (set per table in
-- policies/<table>.sql):
--   TG_ARGV[0]  the entity's name, for messages ("task")
--   TG_ARGV[1]  the status every new row starts in
--   TG_ARGV[2]  the allowed moves, a text[] literal of 'from>to'
--   TG_ARGV[3]  the status that means "work started" ('' = the table has no
--               started_at/finished_at): entering it sets started_at; entering a
--               terminal status (one with no move out) sets finished_at.
-- Runs as the invoker (no privileges of its own needed: it only reads NEW/OLD).
create or replace function app.guard_status() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
  as $$
declare
  entity  text   := TG_ARGV[0];
  initial text   := TG_ARGV[1];
  moves   text[] := TG_ARGV[2]::text[];
  started text   := TG_ARGV[3];
  stamps  jsonb  := '{}';
begin
  if TG_OP = 'INSERT' then
    if new.status is distinct from initial then
      raise exception 'a new % starts as %, not %', entity, initial, new.status
        using errcode = 'check_violation', constraint = TG_TABLE_NAME || '_status_transition';
    end if;
    return new;
  end if;
  if new.status is not distinct from old.status then
    return new;
  end if;
  if not (old.status || '>' || new.status) = any (moves) then
    raise exception 'cannot move % from % to %', entity, old.status, new.status
      using errcode = 'check_violation', constraint = TG_TABLE_NAME || '_status_transition';
  end if;
  if started <> '' then
    if new.status = started then
      stamps := stamps || jsonb_build_object('started_at', now());
    end if;
    if not exists (select from unnest(moves) m where split_part(m, '>', 1) = new.status) then
      stamps := stamps || jsonb_build_object('finished_at', now());
    end if;
    if stamps <> '{}' then
      new := jsonb_populate_record(new, stamps);
    end if;
  end if;
  return new;
end
$$;

-- --- the runner protocol (job, computer_use_task, robot_macro_execution) --------------
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
