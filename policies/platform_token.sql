-- platform_token: API tokens and login sessions; every request runs as one row.
--
-- Members see and manage their own tokens; auditors (audit:read) see everyone's
-- metadata; admins (members:write) can also revoke anyone's -- organization admins
-- only: a project admin (members:write within a project restriction) manages their
-- project's members, never the organization's tokens. A project-restricted credential
-- reads no one else's tokens (audit:read is organization-wide), and of its user's only
-- itself and those whose reach (effective_projects) lies inside its own restriction:
-- never its user's organization-wide tokens or sessions, which would tell it of
-- projects beyond its own. It manages only tokens inside its own restriction (never its
-- user's organization-wide token), itself included (logout). token_hash is never
-- readable by the API role (it is written, never selected), and never audited in clear.

-- What auth.begin_request reads, kept on the row by the database whatever a writer
-- sends: scope_mask (the token's own scopes as a bit mask, app.scope_catalog) and the
-- credential's effective context now (auth.credential_context: its user's role, the
-- effective scopes and projects, the context string). Recomputed when the row is
-- written and, through auth.refresh_credentials, whenever a membership of its user in
-- its organization changes. Runs as tenant_auth, which reads memberships whatever the
-- writer of the token may read (the function: policies/auth.sql).

drop trigger if exists keep_context on public.platform_token;
create trigger keep_context
  before insert or update of id, organization_id, user_id, scopes, project_ids, scope_mask, member_role,
                             effective_mask, effective_projects, context_head, context_tail
  on public.platform_token
  for each row execute function auth.keep_credential_context();

-- Live rows written before these columns existed, or computed by an earlier definition
-- of the roles or the scope catalog: recomputed whenever the policies are applied. RLS
-- is forced on the table, for its owner too: lifted for this statement only (the
-- tenant_table call below forces it again, in the same transaction).
alter table public.platform_token no force row level security;
update public.platform_token set context_head = null where revoked_at is null and expires_at > now();

call app.tenant_table('public.platform_token', area => 'tokens',
  read_extra => '(user_id = (select app.current_user_id())'
                '  and ((select app.unrestricted())'
                '       or id = (select app.current_token_id())'
                '       or (effective_projects is not null'
                '           and effective_projects <@ (select app.current_project_ids()))))'
                ' or ((select app.has_scope(''audit:read'')) and (select app.unrestricted()))'
                ' or ((select app.has_scope(''members:write'')) and (select app.unrestricted()))',
  write_extra => '(user_id = (select app.current_user_id())'
                 '  and ((select app.unrestricted())'
                 '       or (project_ids is not null and project_ids <@ (select app.current_project_ids()))))'
                 ' or ((select app.has_scope(''members:write'')) and (select app.unrestricted()))',
  secret_columns => '{token_hash}',
  -- last_used_at: begin_request keeps it current; an UPDATE that changes only it (and
  -- the updated_at it bumps) leaves no audit row (see policies/audit.sql).
  noise_columns => '{last_used_at,scope_mask,member_role,effective_mask,effective_projects,context_head,context_tail}',
  api_grants => 'select (organization_id, id, user_id, kind, name, prefix, scopes, project_ids,'
                ' expires_at, revoked_at, last_used_at, created_at, updated_at, created_by_token_id),'
                ' insert, update (name, prefix, token_hash, revoked_at)');

-- No escalation, enforced here and not only in the service: a new token carries only
-- scopes the caller has, and stays inside the caller's project restriction. It is the
-- caller's own, or (an organization admin: members:write, unrestricted) a token of one
-- of the organization's service accounts, within that account's scopes and projects.
create policy no_escalation on public.platform_token as restrictive for insert to tenant_api
  with check (
    kind = 'api'
    and scopes is not null
    and scopes <@ (select app.current_scopes())
    and ((select app.unrestricted())
         or (project_ids is not null and project_ids <@ (select app.current_project_ids())))
    and (user_id = (select app.current_user_id())
         or ((select app.has_scope('members:write')) and (select app.unrestricted())
             and exists (select from public.service_account sa
                          where sa.organization_id = platform_token.organization_id
                            and sa.user_id = platform_token.user_id
                            and (sa.scopes is null or platform_token.scopes <@ sa.scopes)
                            and (sa.project_ids is null
                                 or (platform_token.project_ids is not null
                                     and platform_token.project_ids <@ sa.project_ids)))))
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
grant select, insert, update (last_used_at, context_head) on public.platform_token to tenant_auth;

-- Rotation writes a new secret into an existing row: the same no-escalation rule as
-- creating one applies (a narrow token must not obtain a working secret for a wider
-- token, nor anyone for another user's token). RLS policies cannot compare old and new
-- values, so a trigger does, for every path that could rotate.
create or replace function app.guard_token_rotation() returns trigger
  language plpgsql
  as $$
begin
  if new.token_hash is distinct from old.token_hash and current_user = 'tenant_api' then
    if new.user_id is distinct from app.current_user_id()
       or not (coalesce(new.scopes, '{}') <@ app.current_scopes())
       or not (app.unrestricted()
               or (new.project_ids is not null and new.project_ids <@ app.current_project_ids())) then
      raise exception 'token rotation beyond the credential in use'
        using errcode = '42501';
    end if;
  end if;
  return new;
end
$$;

drop trigger if exists guard_rotation on public.platform_token;
create trigger guard_rotation before update on public.platform_token
  for each row execute function app.guard_token_rotation();

