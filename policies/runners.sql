-- The runner protocol's background duty (tenant_api.runs.reaper; the scheduler process
-- runs it every few seconds): runs whose lease ran out go back to the queue with their
-- attempt number kept (the next claim makes it attempt + 1), or, once they have used
-- their max_attempts, fail with an error saying so. Jobs, computer-use tasks and robot
-- macro executions alike.
--
-- A runner that is alive renews its lease with heartbeats long before it ends, so only
-- a runner that died, hung or lost its network is overtaken; when it comes back, every
-- write of its old claim is refused (409): the claim secret is gone with the lease.
--
-- Spans organizations, so it is a narrow SECURITY DEFINER function owned by tenant_auth:
-- it can only move running rows whose lease has expired back to queued or to failed
-- (the policies below, and app.guard_run, which refuses to requeue a live lease). Each
-- change is made in the row's organization with request id 'lease-reaper' (no user, no
-- token: the audit trail attributes it to the system, the previous claim to its runner).
create or replace function auth.requeue_expired_runs(p_limit integer)
  returns table (kind text, organization_id uuid, id uuid, status text, attempt integer)
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  tbl text;
  r record;
  saved text[];
  entered text[];
  outcome text;
  lim integer := least(greatest(coalesce(p_limit, 100), 1), 1000);
begin
  foreach tbl in array array['job', 'computer_use_task', 'robot_macro_execution'] loop
    for r in execute format(
      'select t.organization_id, t.id, t.attempt, t.max_attempts from public.%I t'
      ' where t.status = ''running'' and t.lease_expires_at <= now()'
      ' order by t.lease_expires_at limit %s for update of t skip locked', tbl, lim)
    loop
      entered := auth.enter_context(r.organization_id, null, null, 'lease-reaper');
      saved := coalesce(saved, entered);  -- the caller's, from the first switch
      outcome := case when r.attempt >= r.max_attempts then 'failed' else 'queued' end;
      execute format(
        'update public.%I t set status = $1, lease_expires_at = null, claim_secret_hash = null,'
        ' error = case when $1 = ''failed'' then $2 end,'
        ' started_at = case when $1 = ''queued'' then null else t.started_at end,'
        ' progress = case when $1 = ''queued'' then null else t.progress end'
        ' where t.organization_id = $3 and t.id = $4', tbl)
        using outcome, format('lease expired on attempt %s of %s', r.attempt, r.max_attempts),
              r.organization_id, r.id;
      kind := tbl;
      organization_id := r.organization_id;
      id := r.id;
      status := outcome;
      attempt := r.attempt;
      return next;
    end loop;
  end loop;
  if saved is not null then
    perform auth.leave_context(saved);
  end if;
end
$$;

-- What the function may do, as tenant_auth: see the rows (an UPDATE's new row must pass a
-- SELECT policy too), and move expired running ones to queued or failed.
do $$
declare
  tbl text;
begin
  foreach tbl in array array['job', 'computer_use_task', 'robot_macro_execution'] loop
    execute format('drop policy if exists lease_reaper_select on public.%I', tbl);
    execute format('create policy lease_reaper_select on public.%I for select to tenant_auth using (true)', tbl);
    execute format('drop policy if exists lease_reaper_update on public.%I', tbl);
    execute format(
      'create policy lease_reaper_update on public.%I for update to tenant_auth'
      ' using (status = ''running'' and lease_expires_at <= now())'
      ' with check (status in (''queued'', ''failed'')'
      '             and organization_id = (select app.current_organization_id()))', tbl);
    execute format('grant select, update (status, error, lease_expires_at, claim_secret_hash, started_at, progress)'
                   ' on public.%I to tenant_auth', tbl);
  end loop;
end
$$;

grant create on schema auth to tenant_auth;
alter function auth.requeue_expired_runs(integer) owner to tenant_auth;
revoke create on schema auth from tenant_auth;
revoke all on function auth.requeue_expired_runs(integer) from public, tenant_api;
grant execute on function auth.requeue_expired_runs(integer) to tenant_duty_run_reaper;
