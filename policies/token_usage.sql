-- token_usage: one row per authenticated request, read or write, allowed, refused or
-- failed (and, with `reason` set, per request whose known token was expired, revoked or
-- no longer a member's: a security event). Written only by app.record_usage (as
-- tenant_audit), in batches from the API's usage recorder, never on a request's own
-- transaction; read with audit:read; append-only for the API role like token_audit_log.
call app.tenant_table('public.token_usage', area => 'audit', api_grants => 'select');

-- A usage row is itself audit data: it is not audited again.
drop trigger if exists audit on public.token_usage;

create policy usage_writer on public.token_usage for insert to tenant_audit with check (true);
-- The sealer reads every organization's rows; the purge command deletes sealed ones.
create policy audit_sealer on public.token_usage for select to tenant_audit using (true);
create policy audit_purger on public.token_usage for delete to tenant_audit using (true);
grant select, insert, delete on public.token_usage to tenant_audit;

-- unattributed_security_event: unknown or malformed credentials carry no organization,
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

-- The usage recorder's one statement: a batch of records as a JSON array. Rows with an
-- organization go to token_usage, the others to unattributed_security_event. Rows of an
-- organization deleted meanwhile are dropped rather than failing the whole batch.
-- The API role may call it: it is the witness of its own requests (see docs/audit.md); it can
-- add records, never change or remove one.
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
             organization_id uuid, occurred_at float8, token_id uuid, user_id uuid, prefix text,
             method text, route text, status smallint, duration_ms numeric, client_ip inet,
             user_agent text, request_id text, reason text)) with ordinality as r(
             organization_id, occurred_at, token_id, user_id, prefix, method, route, status, duration_ms,
             client_ip, user_agent, request_id, reason, n)
  ), attributed as (
    insert into public.token_usage
      (organization_id, occurred_at, token_id, user_id, prefix, method, route, status, duration_ms,
       client_ip, user_agent, request_id, reason)
    select r.organization_id, to_timestamp(r.occurred_at), r.token_id, r.user_id, r.prefix, r.method,
           r.route, r.status, r.duration_ms, r.client_ip, r.user_agent, r.request_id, r.reason
      from r
     where r.organization_id in (select o.id from public.organization o)
     order by r.n  -- ids (uuidv7, taken at insert) follow the order requests finished
    returning 1
  ), unattributed as (
    insert into public.unattributed_security_event
      (occurred_at, reason, prefix, method, route, status, client_ip, user_agent, request_id)
    select to_timestamp(r.occurred_at), r.reason, r.prefix, r.method, r.route, r.status, r.client_ip,
           r.user_agent, r.request_id
      from r
     where r.organization_id is null
     order by r.n
    returning 1
  )
  select (select count(*) from attributed) + (select count(*) from unattributed) into total;
  return total;
end
$$;

grant create on schema app to tenant_audit;
alter function app.record_usage(json) owner to tenant_audit;
revoke create on schema app from tenant_audit;
revoke all on function app.record_usage(json) from public;
grant execute on function app.record_usage(json) to tenant_api;
