-- platform_token: API tokens and login sessions; every request runs as one row.
--
-- Members see and manage their own tokens; auditors (audit:read) see everyone's
-- metadata; admins (members:write) can also revoke anyone's. token_hash is never
-- readable by the API role (it is written, never selected), and never audited in clear.
call app.tenant_table('public.platform_token', area => 'tokens',
  read_extra => 'user_id = (select app.current_user_id())'
                ' or (select app.has_scope(''audit:read'')) or (select app.has_scope(''members:write''))',
  write_extra => 'user_id = (select app.current_user_id()) or (select app.has_scope(''members:write''))',
  secret_columns => '{token_hash}',
  -- updated_at too: touch_updated_at bumps it on begin_request's last_used_at write,
  -- which would otherwise leave an audit row per token per minute of use.
  noise_columns => '{last_used_at,updated_at}',
  api_grants => 'select (organization_id, id, user_id, kind, name, prefix, scopes, project_ids,'
                ' expires_at, revoked_at, last_used_at, created_at, updated_at, created_by_token_id),'
                ' insert, update (name, prefix, token_hash, revoked_at)');

-- No escalation, enforced here and not only in the service: a new token is the
-- caller's own, carries only scopes the caller has, and stays inside the caller's
-- project restriction.
create policy no_escalation on public.platform_token as restrictive for insert to tenant_api
  with check (
    user_id = (select app.current_user_id())
    and kind = 'api'
    and scopes is not null
    and scopes <@ (select app.current_scopes())
    and ((select app.unrestricted())
         or (project_ids is not null and project_ids <@ (select app.current_project_ids())))
  );

-- Any credential may revoke itself (logout), whatever its scopes.
create policy revoke_self on public.platform_token for update to tenant_api
  using (id = (select app.current_token_id()))
  with check (id = (select app.current_token_id()) and revoked_at is not null);
-- ...which needs the row to be visible to it.
create policy see_self on public.platform_token for select to tenant_api
  using (id = (select app.current_token_id()));

-- begin_request finds a token by hash (or a session by id) before any context exists,
-- and keeps last_used_at current; create_session inserts session rows.
create policy auth_lookup on public.platform_token for select to tenant_auth using (true);
create policy auth_touch on public.platform_token for update to tenant_auth using (true) with check (true);
create policy auth_session on public.platform_token for insert to tenant_auth
  with check (kind = 'session' and organization_id = (select app.current_organization_id()));
grant select, insert, update (last_used_at) on public.platform_token to tenant_auth;
