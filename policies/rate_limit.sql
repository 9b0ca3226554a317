-- Per-organization rate limits (organization.rate_limit_requests / _window_seconds,
-- revision 0011; tenant_api.ops.ratelimit). Two narrow definer functions, owned by
-- tenant_auth, each entering the one organization's context it is asked about:
--   auth.rate_limit_of(org)   the API's limiter reads one organization's quota (it
--                             knows the organization from a request that credential
--                             made); returns the two numbers and nothing else.
--   auth.set_rate_limit(...)  operators (tenant-api rate-limit set, as tenant_owner)
--                             set or clear it; audited in that organization with
--                             request id 'operator:rate-limit'.
-- Tenants read their quota (organization is readable with org:read) and never change it:
-- policies/organization.sql grants the API role UPDATE on name only.

create policy rate_limit_read on public.organization for select to tenant_auth
  using (id = (select app.current_organization_id()));
create policy rate_limit_write on public.organization for update to tenant_auth
  using (id = (select app.current_organization_id()))
  with check (id = (select app.current_organization_id()));
grant select (id, rate_limit_requests, rate_limit_window_seconds) on public.organization to tenant_auth;
grant update (rate_limit_requests, rate_limit_window_seconds) on public.organization to tenant_auth;

create or replace function auth.rate_limit_of(p_org uuid)
  returns table (requests integer, window_seconds integer)
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  saved text[];
begin
  saved := auth.enter_context(p_org, null, null, 'rate-limit');
  return query select o.rate_limit_requests, o.rate_limit_window_seconds
                 from public.organization o where o.id = p_org;
  perform auth.leave_context(saved);
end
$$;

create or replace function auth.set_rate_limit(p_org uuid, p_requests integer, p_window_seconds integer)
  returns boolean
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  saved text[];
  updated boolean;
begin
  saved := auth.enter_context(p_org, null, null, 'operator:rate-limit');
  update public.organization o
     set rate_limit_requests = p_requests, rate_limit_window_seconds = p_window_seconds
   where o.id = p_org;
  updated := found;
  perform auth.leave_context(saved);
  return updated;
end
$$;

grant create on schema auth to tenant_auth;
alter function auth.rate_limit_of(uuid) owner to tenant_auth;
alter function auth.set_rate_limit(uuid, integer, integer) owner to tenant_auth;
revoke create on schema auth from tenant_auth;
revoke all on function auth.rate_limit_of(uuid), auth.set_rate_limit(uuid, integer, integer) from public;
grant execute on function auth.rate_limit_of(uuid) to tenant_api;
grant execute on function auth.set_rate_limit(uuid, integer, integer) to tenant_owner;
