-- token_usage: one row per authenticated request, read or write, allowed, refused or
-- failed (and, with `reason` set, per token, reason and minute whose known token was
-- expired, revoked or no longer a member's: a security event, request_count requests). Written only by app.record_usage (as
-- tenant_audit), in batches from the API's usage recorder, never on a request's own
-- transaction; read with audit:read; append-only for the API role like token_audit_log.
-- Organization-wide data like the log: a project-restricted credential reads none of it
-- (docs/security.md: its projects' events or nothing, consistently).
call app.tenant_table('public.token_usage', area => 'audit', api_grants => 'select',
                      read_extra => '(select app.unrestricted())');

-- A usage row is itself audit data: it is not audited again.
drop trigger if exists audit on public.token_usage;

create policy usage_writer on public.token_usage for insert to tenant_audit with check (true);
-- The sealer reads every organization's rows; the purge command deletes sealed ones.
create policy audit_sealer on public.token_usage for select to tenant_audit using (true);
create policy audit_purger on public.token_usage for delete to tenant_audit using (true);
grant select, insert, delete on public.token_usage to tenant_audit;

-- unattributed_security_event: unknown, malformed or rate-limited credentials carry no organization,
-- so no tenant may read them: RLS forced and no policy at all for tenant_api (nor any
-- grant). Operators read it as the owner; the purge command ages it out.
alter table public.unattributed_security_event enable row level security;
alter table public.unattributed_security_event force row level security;
revoke all on public.unattributed_security_event from tenant_api;
drop policy if exists usage_writer on public.unattributed_security_event;
drop policy if exists audit_purger on public.unattributed_security_event;
create policy usage_writer on public.unattributed_security_event for insert to tenant_audit with check (true);
create policy audit_purger on public.unattributed_security_event for all to tenant_audit using (true);
grant select, insert, delete on public.unattributed_security_event to tenant_audit;
-- app.record_usage adds a batch's requests to the minute's row (on conflict ... do update)
grant update (request_count, last_occurred_at) on public.unattributed_security_event to tenant_audit;

-- The usage recorder's one statement: a batch of records as a JSON array. Rows with an
-- organization go to token_usage, the others to unattributed_security_event. Rows of an
-- organization deleted meanwhile are dropped rather than failing the whole batch.
-- The usage writer (tenant_duty_usage) calls it: it can add records, never change or remove one.
-- Every request of the API pays for its record here (bench/RESULTS.md): the batch is
-- parsed once (json, not jsonb: it is read once, in order), and both inserts read the
-- parsed rows.
drop function if exists app.record_usage(jsonb);
create or replace function app.record_usage(p_rows json) returns integer
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  total integer;
begin
  with r as materialized (
    select *
      from rows from (json_to_recordset(p_rows) as (
             organization_id uuid, occurred_at float8, last_occurred_at float8, token_id uuid, user_id uuid,
             prefix text, method text, route text, status smallint, duration_ms numeric, client_ip inet,
             user_agent text, request_id text, reason text, request_count integer)) with ordinality as r(
             organization_id, occurred_at, last_occurred_at, token_id, user_id, prefix, method, route, status,
             duration_ms, client_ip, user_agent, request_id, reason, request_count, n)
  ), attributed as (
    insert into public.token_usage
      (organization_id, occurred_at, token_id, user_id, prefix, method, route, status, duration_ms,
       client_ip, user_agent, request_id, reason, request_count)
    select r.organization_id, to_timestamp(r.occurred_at), r.token_id, r.user_id, r.prefix, r.method,
           r.route, r.status, r.duration_ms, r.client_ip, r.user_agent, r.request_id, r.reason,
           coalesce(r.request_count, 1)
      from r
     where r.organization_id in (select o.id from public.organization o)
     order by r.n  -- ids (uuidv7, taken at insert) follow the order requests finished
    returning 1
  ), unattributed as (
    -- One row per minute, address, reason and prefix: every batch (of every worker) adds to
    -- it. The first request's method, route, status, user agent and request id stand for the row's.
    insert into public.unattributed_security_event as u
      (minute, occurred_at, last_occurred_at, request_count, reason, prefix, method, route, status, client_ip,
       user_agent, request_id)
    select distinct on (b.minute, b.client_ip, b.reason, b.prefix)
           b.minute, min(b.at) over w, max(b.last_at) over w, (sum(b.n) over w)::integer, b.reason, b.prefix,
           b.method, b.route, b.status, b.client_ip, b.user_agent, b.request_id
      from (select date_trunc('minute', to_timestamp(r.occurred_at), 'UTC') as minute,
                   to_timestamp(r.occurred_at) as at,
                   to_timestamp(coalesce(r.last_occurred_at, r.occurred_at)) as last_at,
                   coalesce(r.request_count, 1) as n,
                   r.reason, r.prefix, r.method, r.route, r.status, r.client_ip, r.user_agent, r.request_id
              from r
             where r.organization_id is null) as b
    window w as (partition by b.minute, b.client_ip, b.reason, b.prefix)
     order by b.minute, b.client_ip, b.reason, b.prefix, b.at
    on conflict (minute, client_ip, reason, prefix) do update
       set request_count = u.request_count + excluded.request_count,
           last_occurred_at = greatest(u.last_occurred_at, excluded.last_occurred_at)
    returning 1
  )
  select (select count(*) from attributed) + (select count(*) from unattributed) into total;
  return total;
end
$$;

grant create on schema app to tenant_audit;
alter function app.record_usage(json) owner to tenant_audit;
revoke create on schema app from tenant_audit;
revoke all on function app.record_usage(json) from public, tenant_api;
-- The usage writer's alone (the API process's background login, tenant_api_jobs): the
-- API role's own login cannot add records of requests that never were.
grant execute on function app.record_usage(json) to tenant_duty_usage;
