-- What must run before a request context exists: credential lookup, login, signup.
--
-- These are the only doors around RLS, so each is narrow: SECURITY DEFINER owned by
-- tenant_auth (NOLOGIN, a few explicit policies in the table files), a fixed
-- search_path, fully qualified names, and results limited to what the caller needs.
-- tenant_api may execute exactly these functions and nothing else in this schema.

create schema if not exists auth;
revoke all on schema auth from public;
grant usage on schema auth to tenant_auth;
grant usage on schema auth to tenant_api;
grant usage on schema app to tenant_auth, tenant_audit;
grant execute on all functions in schema app to tenant_auth, tenant_audit;
revoke execute on function app.context_mac(text) from tenant_audit;

-- Sign the context just set (policies/context.sql): every definer function that sets
-- or restores context settings ends with it. Executable by tenant_auth alone, so only
-- functions owned by tenant_auth can produce a context the policies accept.
create or replace function auth.sign_context() returns void
  language sql
  volatile
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
    select set_config('app.context_mac', app.context_mac(app.context_payload()), true)
  $$;

-- For definer functions acting for someone else for a moment (the scheduler firing a
-- schedule, the reaper closing a connection, an invitee joining another organization,
-- the mailer): enter_context sets a complete, signed context of the function's own
-- choosing and returns the caller's settings, which leave_context puts back verbatim,
-- signature included. Nothing the caller set is ever signed here: a hand-made context
-- stays as unsigned (and as powerless) after the call as before it.
create or replace function auth.enter_context(p_org uuid, p_user uuid, p_token uuid, p_request_id text)
  returns text[]
  language plpgsql
  volatile
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  saved text[] := array[
    current_setting('app.organization_id', true), current_setting('app.user_id', true),
    current_setting('app.token_id', true), current_setting('app.scopes', true),
    current_setting('app.project_ids', true), current_setting('app.request_id', true),
    current_setting('app.context_mac', true)];
begin
  perform set_config('app.organization_id', coalesce(p_org::text, ''), true),
          set_config('app.user_id', coalesce(p_user::text, ''), true),
          set_config('app.token_id', coalesce(p_token::text, ''), true),
          set_config('app.scopes', '', true),
          set_config('app.project_ids', '', true),
          set_config('app.request_id', coalesce(p_request_id, ''), true);
  perform auth.sign_context();
  return saved;
end
$$;

create or replace function auth.leave_context(saved text[]) returns void
  language sql
  volatile
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
    select set_config('app.organization_id', coalesce(saved[1], ''), true),
           set_config('app.user_id', coalesce(saved[2], ''), true),
           set_config('app.token_id', coalesce(saved[3], ''), true),
           set_config('app.scopes', coalesce(saved[4], ''), true),
           set_config('app.project_ids', coalesce(saved[5], ''), true),
           set_config('app.request_id', coalesce(saved[6], ''), true),
           set_config('app.context_mac', coalesce(saved[7], ''), true)
  $$;

-- The fixed scope set of each organization role. Mirrored by tenant_api.auth.scopes
-- (a test asserts both agree) and listed in the README.
create or replace function auth.role_scopes(role text) returns text[]
  language sql immutable
  as $$
    select case role
      when 'owner' then array[
        'org:write', 'members:write', 'agents:write', 'tasks:write', 'conversations:write',
        'desktops:write', 'calls:write', 'services:write', 'notifications:write',
        'billing:write', 'tokens:write', 'audit:read']
      when 'admin' then array[
        'org:write', 'members:write', 'agents:write', 'tasks:write', 'conversations:write',
        'desktops:write', 'calls:write', 'services:write', 'notifications:write',
        'billing:read', 'tokens:write', 'audit:read']
      when 'member' then array[
        'org:read', 'members:read', 'agents:write', 'tasks:write', 'conversations:write',
        'desktops:write', 'calls:write', 'services:write', 'notifications:write',
        'billing:read', 'tokens:write']
      when 'auditor' then array[
        'org:read', 'members:read', 'agents:read', 'tasks:read', 'conversations:read',
        'desktops:read', 'calls:read', 'services:read', 'notifications:read',
        'billing:read', 'tokens:read', 'audit:read', 'tokens:write']  -- tokens:write: their own tokens only
      else '{}'::text[]
    end
  $$;

-- The fixed scope set of each project role (project_membership.role), for a user who
-- is not a member of the organization but of some of its projects. Nested (viewer <
-- editor < admin: each has everything the one before has), so "the lowest role" and
-- "the intersection of the roles" are the same set. Mirrored by
-- tenant_api.auth.scopes.PROJECT_ROLE_SCOPES and listed in the README. No org-wide
-- area: no billing, no audit (the log is not per project), no org:write.
create or replace function auth.project_role_scopes(role text) returns text[]
  language sql immutable
  as $$
    select case role
      when 'admin' then array[
        'org:read', 'members:write', 'tokens:write', 'agents:write', 'tasks:write',
        'conversations:write', 'desktops:write', 'calls:write', 'services:write',
        'notifications:write']
      when 'editor' then array[
        'org:read', 'members:read', 'tokens:write', 'agents:write', 'tasks:write',
        'conversations:write', 'desktops:write', 'calls:write', 'services:write',
        'notifications:write']
      when 'viewer' then array[
        'org:read', 'members:read', 'agents:read', 'tasks:read', 'conversations:read',
        'desktops:read', 'calls:read', 'services:read', 'notifications:read']
      else '{}'::text[]
    end
  $$;

create or replace function auth.project_role_rank(role text) returns integer
  language sql immutable
  as $$ select case role when 'viewer' then 1 when 'editor' then 2 when 'admin' then 3 end $$;

-- "<area>:write implies <area>:read": the stored context holds both, so policies test
-- one exact string.
create or replace function auth.expand_scopes(scopes text[]) returns text[]
  language sql immutable
  as $$
    select coalesce(array_agg(distinct s order by s), '{}')
      from (select unnest(scopes) as s
            union
            select replace(x, ':write', ':read') from unnest(scopes) x where x like '%:write') u
  $$;

-- Start a request: find the credential's platform_token row, refuse it if it is
-- revoked, expired or its user is no longer a member, compute the effective scopes
-- (the token's scopes, never more than the user's role now allows) and set the
-- transaction-local context. Returns one row; status <> 'ok' means no context was set.
--
-- Who the user is in the token's organization, read now (so a change of role or a
-- removal applies to the very next request):
--   * an organization member: their organization role; the restriction is the
--     token's project_ids (NULL = every project);
--   * otherwise a member of some of its projects (an accepted invite): the
--     restriction is those projects (within the token's project_ids, if any) and the
--     role is the LOWEST of their roles in them, reported as 'project:<role>'.
--     Scopes belong to a credential, not to a project: the lowest role is the only
--     choice that never grants in one project what a role in another allows. To act
--     with a higher role in one project, log in (or make a token) restricted to it.
--   * neither (or none of the token's projects any more): 'not_member'.
--
-- API tokens are found by the SHA-256 of the secret; sessions by the id in the JWT
-- (whose signature the API has already checked) within the JWT's organization.
create or replace function auth.begin_request(
  p_token_hash bytea,
  p_session_id uuid,
  p_session_org uuid,
  p_request_id text
) returns table (
  status text,
  token_id uuid,
  organization_id uuid,
  user_id uuid,
  kind text,
  role text,
  scopes text[],
  project_ids uuid[],
  prefix text,
  expires_at timestamptz
)
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  t public.platform_token%rowtype;
  m_role text;
  p_role text;
  restriction uuid[];
  effective text[];
begin
  if p_token_hash is not null then
    select * into t from public.platform_token pt
     where pt.token_hash = p_token_hash and pt.kind = 'api';
  else
    select * into t from public.platform_token pt
     where pt.organization_id = p_session_org and pt.id = p_session_id and pt.kind = 'session';
  end if;

  if t.id is null then
    return query select 'unknown'::text, null::uuid, null::uuid, null::uuid, null::text, null::text,
                        null::text[], null::uuid[], null::text, null::timestamptz;
    return;
  end if;

  select m.role into m_role from public.organization_membership m
   where m.organization_id = t.organization_id and m.user_id = t.user_id;
  restriction := t.project_ids;
  if m_role is not null then
    effective := auth.role_scopes(m_role);
  else
    select array_agg(pm.project_id order by pm.project_id),
           (array_agg(pm.role order by auth.project_role_rank(pm.role)))[1]
      into restriction, p_role
      from public.project_membership pm
     where pm.organization_id = t.organization_id and pm.user_id = t.user_id
       and (t.project_ids is null or pm.project_id = any (t.project_ids));
    if p_role is not null then
      m_role := 'project:' || p_role;
      effective := auth.project_role_scopes(p_role);
    end if;
  end if;

  status := case
    when t.revoked_at is not null then 'revoked'
    when t.expires_at <= now() then 'expired'
    when m_role is null then 'not_member'
    else 'ok'
  end;
  if status <> 'ok' then
    return query select status, t.id, t.organization_id, t.user_id, t.kind, null::text,
                        null::text[], null::uuid[], t.prefix, t.expires_at;
    return;
  end if;

  effective := auth.expand_scopes(effective);
  if t.scopes is not null then
    -- effective ∩ expand_scopes(t.scopes), written to be cheap (every request pays for
    -- it; bench/RESULTS.md): a scope of effective stays if the token has it, or has the
    -- write scope that implies this read scope.
    effective := array(select s from unnest(effective) s
                        where s = any (t.scopes)
                           or (s like '%:read' and replace(s, ':read', ':write') = any (t.scopes))
                        order by s);
  end if;

  perform set_config('app.organization_id', t.organization_id::text, true),
          set_config('app.user_id', t.user_id::text, true),
          set_config('app.token_id', t.id::text, true),
          set_config('app.scopes', effective::text, true),
          set_config('app.project_ids', coalesce(restriction::text, 'all'), true),
          set_config('app.request_id', coalesce(p_request_id, ''), true);
  perform auth.sign_context();

  -- To the minute is enough: at most one write per token per minute, and the audit
  -- trigger treats last_used_at as noise.
  if t.last_used_at is null or t.last_used_at < now() - interval '1 minute' then
    update public.platform_token pt set last_used_at = now()
     where pt.organization_id = t.organization_id and pt.id = t.id;
  end if;

  return query select 'ok'::text, t.id, t.organization_id, t.user_id, t.kind, m_role,
                      effective, restriction, t.prefix, t.expires_at;
end
$$;

-- Login, step 1: the password hash for an email, so the API can verify it with argon2
-- outside the database. Nothing else about the user is returned.
create or replace function auth.login_lookup(p_email text)
  returns table (user_id uuid, password_hash text)
  language sql
  stable
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
    select u.id, u.password_hash from public.user_account u where lower(u.email) = lower(p_email) and u.kind = 'person'
  $$;

-- Login, step 2 (after the password checked out): open a session in the requested
-- organization, or else the user's oldest one: organization memberships first, then
-- organizations where the user is a member of some project. p_project_ids (optional)
-- restricts the session to those projects, each of which the user must be able to
-- enter there. Returns nothing if the user may not enter.
drop function if exists auth.create_session(uuid, uuid, interval, text);
create or replace function auth.create_session(p_user_id uuid, p_org uuid, p_ttl interval, p_request_id text,
                                               p_project_ids uuid[] default null)
  returns table (token_id uuid, organization_id uuid, expires_at timestamptz)
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  saved text[];
  org uuid;
  org_member boolean;
  tid uuid;
  exp timestamptz := now() + p_ttl;
  wanted uuid[] := array(select distinct x from unnest(p_project_ids) x order by 1);
begin
  select e.organization_id, e.org_member into org, org_member
    from (select m.organization_id, true as org_member, m.created_at, m.id
            from public.organization_membership m
           where m.user_id = p_user_id and (p_org is null or m.organization_id = p_org)
          union all
          select pm.organization_id, false, pm.created_at, pm.id
            from public.project_membership pm
           where pm.user_id = p_user_id and (p_org is null or pm.organization_id = p_org)) e
   order by e.org_member desc, e.created_at, e.id
   limit 1;
  if org is null then
    return;
  end if;
  if p_project_ids is not null then
    if cardinality(wanted) = 0 or exists (
         select from unnest(wanted) w(project_id)
          where not (case when org_member
                       then exists (select from public.project p
                                     where p.organization_id = org and p.id = w.project_id)
                       else exists (select from public.project_membership pm
                                     where pm.organization_id = org and pm.user_id = p_user_id
                                       and pm.project_id = w.project_id)
                     end)) then
      return;
    end if;
  end if;
  -- The session row is created in the user's own context so the audit trail
  -- attributes it to the user, and the session's own token id.
  -- (and the context is left again: the login request itself needs none after this).
  tid := uuidv7();
  saved := auth.enter_context(org, p_user_id, tid, p_request_id);
  insert into public.platform_token (organization_id, id, user_id, kind, name, prefix, expires_at, project_ids)
  values (org, tid, p_user_id, 'session', 'session', 'session', exp,
          case when p_project_ids is not null then wanted end);
  perform auth.leave_context(saved);
  return query select tid, org, exp;
end
$$;

-- Signup lives in policies/verification.sql (it holds the address until verified).

-- Ownership and the only grants: tenant_api may call these four, nothing else here.
-- (CREATE on the schema is needed by the new owner for the moment of the ALTER only.)
grant create on schema auth to tenant_auth;
alter function auth.begin_request(bytea, uuid, uuid, text) owner to tenant_auth;
alter function auth.login_lookup(text) owner to tenant_auth;
alter function auth.create_session(uuid, uuid, interval, text, uuid[]) owner to tenant_auth;
alter function auth.sign_context() owner to tenant_auth;
alter function auth.enter_context(uuid, uuid, uuid, text) owner to tenant_auth;
alter function auth.leave_context(text[]) owner to tenant_auth;
revoke create on schema auth from tenant_auth;
revoke all on all functions in schema auth from public;
grant execute on function auth.role_scopes(text), auth.expand_scopes(text[]), auth.project_role_scopes(text),
  auth.project_role_rank(text) to tenant_auth;
grant execute on function
  auth.begin_request(bytea, uuid, uuid, text),
  auth.login_lookup(text),
  auth.create_session(uuid, uuid, interval, text, uuid[])
to tenant_api;
