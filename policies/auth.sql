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
-- The background duties (policies/roles.sql) call their own functions here and in app.
grant usage on schema auth, app to tenant_duty_scheduler, tenant_duty_sealer, tenant_duty_retention,
  tenant_duty_run_reaper, tenant_duty_webhooks, tenant_duty_idempotency, tenant_duty_mailer,
  tenant_duty_desktop_reaper, tenant_duty_usage;
grant usage on schema app to tenant_auth, tenant_audit;
grant execute on all functions in schema app to tenant_auth, tenant_audit;

-- For definer functions acting for someone else for a moment (the scheduler firing a
-- schedule, the reaper closing a connection, an invitee joining another organization,
-- the mailer): enter_context sets a context of the function's own choosing (its
-- organization, user and token for attribution, no scope at all: such functions act
-- through policies of their own owners' roles) and returns the caller's, which
-- leave_context puts back. Executable by tenant_auth alone.
create or replace function auth.enter_context(p_org uuid, p_user uuid, p_token uuid, p_request_id text)
  returns text[]
  language plpgsql
  volatile
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  saved text[] := array[current_setting('backtrace_functions')];
begin
  perform set_config('backtrace_functions',
                     case when p_org is null then ''
                          else app.context_head(p_org, 0, p_user, p_token, null)
                               || app.context_request_id(p_request_id) || app.context_tail(p_org, 0, false) end,
                     true);
  return saved;
end
$$;

create or replace function auth.leave_context(saved text[]) returns void
  language sql
  volatile
  security definer
  set search_path = pg_catalog, pg_temp
  as $$ select set_config('backtrace_functions', coalesce(saved[1], ''), true) $$;

-- The fixed scope set of each organization role. Mirrored by tenant_api.scopes
-- (a test asserts both agree) and listed in docs/isolation.md.
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
-- tenant_api.scopes.PROJECT_ROLE_SCOPES and listed in docs/isolation.md. No org-wide
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

-- The fixed role scope sets as masks (app.scope_catalog), precomputed when this file is
-- applied: begin_request ANDs two integers instead of expanding and intersecting arrays.
do $gen$
declare
  cases text := '';
  pcases text := '';
  r text;
begin
  foreach r in array array['owner', 'admin', 'member', 'auditor'] loop
    cases := cases || format(' when %L then %s', r, app.scope_mask(auth.role_scopes(r)));
  end loop;
  foreach r in array array['viewer', 'editor', 'admin'] loop
    pcases := pcases || format(' when %L then %s', r, app.scope_mask(auth.project_role_scopes(r)));
  end loop;
  execute format('create or replace function auth.role_mask(role text) returns bigint language sql immutable'
                 ' as $f$ select case role%s else 0::bigint end $f$', cases);
  execute format('create or replace function auth.project_role_mask(role text) returns bigint language sql immutable'
                 ' as $f$ select case role%s else 0::bigint end $f$', pcases);
end
$gen$;

drop function if exists auth.expand_scopes(text[]);
drop function if exists auth.sign_context();

-- What a credential is in its organization now: its user's role there (or, for a member
-- of some projects only, the lowest of those roles and those projects), the effective
-- scope mask (never more than the role allows) and the context string up to the request
-- id. platform_token keeps these for every credential (policies/platform_token.sql), and
-- every change of a membership refreshes them for that user's credentials in the same
-- transaction (auth.refresh_credentials), so auth.begin_request reads one row.
--
--   * an organization member: their organization role; the restriction is the
--     token's project_ids (NULL = every project);
--   * otherwise a member of some of its projects (an accepted invite): the
--     restriction is those projects (within the token's project_ids, if any) and the
--     role is the LOWEST of their roles in them, reported as 'project:<role>'.
--     Scopes belong to a credential, not to a project: the lowest role is the only
--     choice that never grants in one project what a role in another allows. To act
--     with a higher role in one project, log in (or make a token) restricted to it.
--   * neither (or none of the token's projects any more): member_role NULL, and
--     begin_request answers 'not_member'.
create or replace function auth.credential_context(p_org uuid, p_user uuid, p_token uuid, p_token_mask bigint,
                                                   p_token_projects uuid[],
                                                   out member_role text, out effective_mask bigint,
                                                   out effective_projects uuid[], out context_head text,
                                                   out context_tail text)
  language plpgsql
  stable
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  p_role text;
begin
  select m.role into member_role from public.organization_membership m
   where m.organization_id = p_org and m.user_id = p_user;
  if member_role is not null then
    effective_mask := auth.role_mask(member_role) & coalesce(p_token_mask, -1);
    effective_projects := p_token_projects;
  else
    select array_agg(pm.project_id order by pm.project_id),
           (array_agg(pm.role order by auth.project_role_rank(pm.role)))[1]
      into effective_projects, p_role
      from public.project_membership pm
     where pm.organization_id = p_org and pm.user_id = p_user
       and (p_token_projects is null or pm.project_id = any (p_token_projects));
    if p_role is null then
      effective_projects := null;
      return;
    end if;
    member_role := 'project:' || p_role;
    effective_mask := auth.project_role_mask(p_role) & coalesce(p_token_mask, -1);
  end if;
  context_head := app.context_head(p_org, effective_mask, p_user, p_token, effective_projects);
  context_tail := app.context_tail(p_org, effective_mask, effective_projects is not null);
end
$$;

-- After a membership changes (organization or project, added, changed or removed): the
-- user's live credentials in that organization are recomputed, in the same transaction
-- (touching context_head makes platform_token's trigger recompute the row).
create or replace function auth.refresh_credentials() returns trigger
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
begin
  if tg_op <> 'INSERT' then
    update public.platform_token pt set context_head = null
     where pt.organization_id = old.organization_id and pt.user_id = old.user_id
       and pt.revoked_at is null and pt.expires_at > now();
  end if;
  if tg_op = 'INSERT' or (new.organization_id, new.user_id) is distinct from (old.organization_id, old.user_id) then
    update public.platform_token pt set context_head = null
     where pt.organization_id = new.organization_id and pt.user_id = new.user_id
       and pt.revoked_at is null and pt.expires_at > now();
  end if;
  return null;
end
$$;

-- platform_token's trigger (policies/platform_token.sql): its effective context, kept.
create or replace function auth.keep_credential_context() returns trigger
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
begin
  new.scope_mask := app.scope_mask(new.scopes);
  select c.member_role, c.effective_mask, c.effective_projects, c.context_head, c.context_tail
    into new.member_role, new.effective_mask, new.effective_projects, new.context_head, new.context_tail
    from auth.credential_context(new.organization_id, new.user_id, new.id, new.scope_mask, new.project_ids) c;
  return new;
end
$$;

-- Start a request: find the credential's platform_token row, refuse it if it is
-- revoked, expired or its user is no longer a member (see auth.credential_context, kept
-- current on the row), and write the transaction's context (policies/context.sql).
-- Returns one row; status <> 'ok' means no context was set. API tokens are found by the
-- SHA-256 of the secret; sessions by the id in the JWT (whose signature the API has
-- already checked) within the JWT's organization. A restricted context (project_ids not
-- NULL) is read by tenant_api_projects: the caller switches to it (SET LOCAL ROLE).
--
-- A transaction gets one context: called again once one is set, it refuses, so no
-- statement can see two credentials. Every request pays for this function: it reads one
-- row by one index and writes one setting (bench/RESULTS.md). It returns a named row
-- type, whose shape PostgreSQL keeps cached (OUT parameters are re-read on every call).
drop function if exists auth.begin_request(bytea, uuid, uuid, text);
drop type if exists auth.request_principal;
create type auth.request_principal as (
  status text,
  token_id uuid,
  organization_id uuid,
  user_id uuid,
  kind text,
  role text,
  scope_mask bigint,
  project_ids uuid[],
  prefix text,
  expires_at timestamptz
);

create or replace function auth.begin_request(p_token_hash bytea, p_session_id uuid, p_session_org uuid,
                                              p_request_id text)
  returns auth.request_principal
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  p auth.request_principal;
  last_used timestamptz;
  head text;
  tail text;
begin
  if current_setting('backtrace_functions') <> '' then
    raise exception 'auth.begin_request: this transaction already has a context' using errcode = '42501';
  end if;

  -- Two statements, not one with OR: each keeps its own index (the hash, or the key).
  if p_token_hash is not null then
    select case when pt.revoked_at is not null then 'revoked' when pt.expires_at <= now() then 'expired'
                when pt.member_role is null then 'not_member' else 'ok' end,
           pt.id, pt.organization_id, pt.user_id, pt.kind, pt.member_role, pt.effective_mask,
           pt.effective_projects, pt.prefix, pt.expires_at, pt.last_used_at, pt.context_head, pt.context_tail
      into p.status, p.token_id, p.organization_id, p.user_id, p.kind, p.role, p.scope_mask,
           p.project_ids, p.prefix, p.expires_at, last_used, head, tail
      from public.platform_token pt
     where pt.token_hash = p_token_hash and pt.kind = 'api';
  else
    select case when pt.revoked_at is not null then 'revoked' when pt.expires_at <= now() then 'expired'
                when pt.member_role is null then 'not_member' else 'ok' end,
           pt.id, pt.organization_id, pt.user_id, pt.kind, pt.member_role, pt.effective_mask,
           pt.effective_projects, pt.prefix, pt.expires_at, pt.last_used_at, pt.context_head, pt.context_tail
      into p.status, p.token_id, p.organization_id, p.user_id, p.kind, p.role, p.scope_mask,
           p.project_ids, p.prefix, p.expires_at, last_used, head, tail
      from public.platform_token pt
     where pt.organization_id = p_session_org and pt.id = p_session_id and pt.kind = 'session';
  end if;
  if p.status is null then
    p.status := 'unknown';
    return p;
  end if;
  if p.status <> 'ok' then
    p.role := null; p.scope_mask := null; p.project_ids := null;
    return p;
  end if;

  perform set_config('backtrace_functions', head || app.context_request_id(p_request_id) || tail, true);

  -- To the minute is enough: at most one write per token per minute, and the audit
  -- trigger treats last_used_at as noise. SKIP LOCKED: the row stays locked until this
  -- request commits, and a concurrent request of the same credential must not wait for
  -- that (it skips the touch; one of them made it). NO KEY UPDATE, the lock the UPDATE
  -- itself takes: FOR UPDATE would also block every foreign-key check on this row (rows
  -- written by other requests of the credential) until this request commits.
  if last_used is null or last_used < now() - interval '1 minute' then
    update public.platform_token pt set last_used_at = now()
      from (select x.organization_id, x.id from public.platform_token x
             where x.organization_id = p.organization_id and x.id = p.token_id
               for no key update skip locked) locked
     where pt.organization_id = locked.organization_id and pt.id = locked.id;
  end if;
  return p;
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

-- Ownership and the only grants: tenant_api may call begin_request, nothing else here;
-- the login functions (the password hash of an email; a session for a user id) belong
-- to the login role alone (tenant_login, policies/roles.sql), which the API process uses
-- for its public auth routes only: the API role's login can neither read a password
-- hash nor open a session for anyone.
-- (CREATE on the schema is needed by the new owner for the moment of the ALTER only.)
grant create on schema auth to tenant_auth;
alter function auth.begin_request(bytea, uuid, uuid, text) owner to tenant_auth;
alter function auth.login_lookup(text) owner to tenant_auth;
alter function auth.create_session(uuid, uuid, interval, text, uuid[]) owner to tenant_auth;
alter function auth.enter_context(uuid, uuid, uuid, text) owner to tenant_auth;
alter function auth.leave_context(text[]) owner to tenant_auth;
alter function auth.credential_context(uuid, uuid, uuid, bigint, uuid[]) owner to tenant_auth;
alter function auth.refresh_credentials() owner to tenant_auth;
alter function auth.keep_credential_context() owner to tenant_auth;
revoke create on schema auth from tenant_auth;
revoke all on all functions in schema auth from public;
grant execute on function auth.role_scopes(text), auth.project_role_scopes(text), auth.role_mask(text),
  auth.project_role_mask(text), auth.project_role_rank(text) to tenant_auth;
revoke all on function auth.login_lookup(text), auth.create_session(uuid, uuid, interval, text, uuid[])
  from tenant_api;
grant execute on function auth.begin_request(bytea, uuid, uuid, text) to tenant_api;
grant execute on function auth.login_lookup(text), auth.create_session(uuid, uuid, interval, text, uuid[])
  to tenant_login;
