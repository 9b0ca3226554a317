-- desktop_connection: one row per robot client WebSocket (resources/desktop_connections.py).
--
-- The API writes rows only from the WebSocket handler, as the connecting credential:
-- insert on connect, last_seen_at while alive, status/disconnected_at/close_reason on
-- close. HTTP routes only read. last_seen_at (and the updated_at it touches) is noise: a
-- heartbeat leaves no audit row; the connect and the close do.
call app.tenant_table('public.desktop_connection', area => 'desktops', project_column => 'project_id',
  noise_columns => '{last_seen_at,updated_at}',
  api_grants => 'select, insert, update (last_seen_at, status, disconnected_at, close_reason)');

-- The reaper. Rows whose API instance died (crash, kill -9, lost network) were never
-- closed by their handler; rows of a credential revoked or expired since cannot be closed
-- by that credential. Both span organizations, so one narrow SECURITY DEFINER function
-- closes them: it can only turn open rows into closed ones (the policies below), never
-- read anything back but a count, and never reach another table.
--
-- Closes an open row when
--   * last_seen_at is older than p_stale_after (at least 30 seconds, whatever the caller
--     passes: a live socket's row is never that old, see docs/desktops.md), or
--   * it belongs to the API instance p_instance (an instance closing its own rows at
--     shutdown, or at start-up the rows of its previous life when its id is stable), or
--   * its credential has been revoked or has expired.
--
-- Attribution: before each update it sets the row's organization, its token (and that
-- token's user) and the request id 'desktop-reaper' as the transaction context, so the
-- audit row says "this token's connection was closed by the reaper". The caller's
-- context (normally none) is restored afterwards.
create or replace function auth.reap_desktop_connections(p_stale_after interval, p_instance text default null)
  returns integer
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  r record;
  n integer := 0;
  saved text[];
  entered text[];
  cutoff timestamptz := now() - greatest(coalesce(p_stale_after, interval '30 seconds'), interval '30 seconds');
begin
  for r in
    select c.organization_id, c.id, c.token_id, t.user_id,
           case when c.api_instance_id = p_instance then 'api_instance_gone'
                when t.revoked_at is not null or t.expires_at <= now() then 'credential_revoked'
                else 'stale' end as reason
      from public.desktop_connection c
      join public.platform_token t on t.organization_id = c.organization_id and t.id = c.token_id
     where c.status = 'connected'
       and (c.last_seen_at < cutoff or c.api_instance_id = p_instance
            or t.revoked_at is not null or t.expires_at <= now())
     order by c.organization_id
     for update of c skip locked
  loop
    entered := auth.enter_context(r.organization_id, r.user_id, r.token_id, 'desktop-reaper');
    saved := coalesce(saved, entered);  -- the caller's, from the first switch
    update public.desktop_connection c
       set status = 'disconnected', disconnected_at = now(), close_reason = r.reason
     where c.organization_id = r.organization_id and c.id = r.id;
    n := n + 1;
  end loop;
  if saved is not null then
    perform auth.leave_context(saved);
  end if;
  return n;
end
$$;

-- What the function may do, as tenant_auth: see the rows, and close open ones.
-- (The new row of an UPDATE whose WHERE reads columns must pass a SELECT policy too.)
create policy reaper_select on public.desktop_connection for select to tenant_auth using (true);
create policy reaper_close on public.desktop_connection for update to tenant_auth
  using (status = 'connected') with check (status = 'disconnected');
grant select, update (status, disconnected_at, close_reason) on public.desktop_connection to tenant_auth;

grant create on schema auth to tenant_auth;
alter function auth.reap_desktop_connections(interval, text) owner to tenant_auth;
revoke create on schema auth from tenant_auth;
-- auth.sql's "revoke ... from public" ran before this file: revoke here, explicitly.
revoke all on function auth.reap_desktop_connections(interval, text) from public, tenant_api;
grant execute on function auth.reap_desktop_connections(interval, text) to tenant_duty_desktop_reaper;
