-- Sign-up and the verified email address (tenant_api.auth.verification).
--
-- An address belongs to whoever proves they read its mail. Sign-up creates the account
-- at once (the person can work in their own organization straight away), but while
-- its address is unverified the account only HOLDS it, until email_hold_until
-- (EMAIL_HOLD_HOURS after sign-up; resending the mail never extends it), and cannot
-- accept or decline invites with the secret the inviter was shown. The mailbox is
-- proven by either secret that only the mail carries:
--   * the verification secret (verify_token_hash), mailed at sign-up, and
--   * an invite's mail secret (project_invite.mail_token_hash; accept_invite verifies).
-- Past its hold, an unverified account no longer holds the address: the next sign-up
-- with it releases it (the old account's email becomes released-<id>@released.invalid,
-- its organization and data untouched, its login by that address gone). A sign-up made
-- through an invite's mail secret (p_claim) proves the mailbox at once, so it releases
-- an unverified holder even inside its hold and creates the account verified: a
-- squatter never blocks the owner. A verified account is never released by anyone.
drop function if exists auth.signup(text, text, text, text);

drop policy if exists auth_verify on public.user_account;
drop policy if exists auth_service on public.user_account;
create policy auth_verify on public.user_account for update to tenant_auth using (kind = 'person')
  with check (kind = 'person');
-- Service accounts' users (auth.create_service_user): kind service, never a login.
create policy auth_service on public.user_account for insert to tenant_auth
  with check (kind = 'service' and (select app.has_scope('members:write')) and (select app.unrestricted()));
grant update (email, email_verified_at, email_hold_until, verify_token_hash) on public.user_account to tenant_auth;

create or replace function auth.signup(p_email text, p_password_hash text, p_display_name text, p_request_id text,
                                       p_hold interval, p_verify_hash bytea, p_nonce bytea, p_subject text,
                                       p_body text, p_claim boolean default false)
  returns table (user_id uuid, organization_id uuid, workspace_id uuid, project_id uuid,
                 email_hold_until timestamptz, released_user_id uuid)
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  saved text[];
  uid uuid := uuidv7();
  org uuid := uuidv7();
  ws uuid := uuidv7();
  prj uuid := uuidv7();
  hold timestamptz := case when p_claim then null else now() + p_hold end;
  released uuid;
begin
  -- An unverified holder gives the address up once its hold has passed, or at once to
  -- someone proving the mailbox. A verified account never does (its row is not
  -- matched, so the insert below raises unique_violation: 409).
  update public.user_account u
     set email = 'released-' || u.id || '@released.invalid', email_hold_until = null, verify_token_hash = null
   where lower(u.email) = lower(p_email) and u.kind = 'person' and u.email_verified_at is null
     and (p_claim or u.email_hold_until <= now())
  returning u.id into released;

  saved := auth.enter_context(org, uid, null, p_request_id);
  insert into public.user_account (id, email, password_hash, display_name, email_verified_at, email_hold_until,
                                   verify_token_hash)
  values (uid, p_email, p_password_hash, p_display_name, case when p_claim then now() end, hold,
          case when p_claim then null else p_verify_hash end);
  insert into public.organization (id, name) values (org, p_display_name || '''s organization');
  insert into public.organization_membership (organization_id, user_id, role) values (org, uid, 'owner');
  insert into public.workspace (organization_id, id, name) values (org, ws, 'Default');
  insert into public.project (organization_id, id, workspace_id, name) values (org, prj, ws, 'Default');
  if not p_claim then
    insert into public.invite_outbox (organization_id, kind, user_id, recipient, subject, body, nonce)
    values (org, 'verify', uid, p_email, p_subject, p_body, p_nonce);
  end if;
  perform auth.leave_context(saved);
  return query select uid, org, ws, prj, hold, released;
end
$$;

-- Follow the verification link. Returns 'ok' (now verified), 'not_found' (no such
-- pending secret: used, superseded, or the address was released meanwhile).
create or replace function auth.verify_email(p_hash bytea, p_request_id text)
  returns table (status text, user_id uuid)
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
#variable_conflict use_column
declare
  uid uuid;
begin
  update public.user_account u
     set email_verified_at = now(), email_hold_until = null, verify_token_hash = null
   where u.verify_token_hash = p_hash and u.kind = 'person' and u.email_verified_at is null
  returning u.id into uid;
  return query select case when uid is null then 'not_found' else 'ok' end, uid;
end
$$;

-- A new verification mail for the request's own user (the previous secret stops
-- working; its mail, if not sent yet, is cancelled). The hold is not extended.
create or replace function auth.issue_verification(p_user_id uuid, p_hash bytea, p_nonce bytea, p_subject text,
                                                   p_body text)
  returns text
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  u public.user_account%rowtype;
  saved text[];
begin
  if p_user_id is null or p_user_id is distinct from app.current_user_id() then
    raise exception 'issue_verification: not the request''s user' using errcode = 'insufficient_privilege';
  end if;
  select * into u from public.user_account a where a.id = p_user_id for update;
  if u.email_verified_at is not null then
    return 'verified';
  end if;
  if u.kind <> 'person' or u.email like '%@released.invalid' then
    return 'released';
  end if;
  update public.user_account a set verify_token_hash = p_hash where a.id = p_user_id;
  saved := auth.enter_context(app.current_organization_id(), app.current_user_id(), app.current_token_id(),
                              app.current_request_id());
  update public.invite_outbox o set status = 'cancelled'
   where o.kind = 'verify' and o.user_id = p_user_id and o.status = 'pending';
  insert into public.invite_outbox (organization_id, kind, user_id, recipient, subject, body, nonce)
  values (app.current_organization_id(), 'verify', p_user_id, u.email, p_subject, p_body, p_nonce);
  perform auth.leave_context(saved);
  return 'ok';
end
$$;

-- What the invite page shows to the holder of an invite secret (either one), before
-- they sign in: whose invite, to what, as what, in which state, and whether an account
-- with the address exists (sign in) or not (sign up). Nothing for an unknown secret.
create or replace function auth.invite_preview(p_hash bytea)
  returns table (status text, kind text, email text, role text, organization_id uuid, organization_name text,
                 project_id uuid, project_name text, invited_by text, expires_at timestamptz, via_mail boolean,
                 account text)
  language sql
  stable
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
    select case when i.revoked_at is not null then 'revoked'
                when i.accepted_at is not null then 'accepted'
                when i.declined_at is not null then 'declined'
                when i.expires_at <= now() then 'expired'
                else 'pending' end,
           case when i.project_id is null then 'organization' else 'project' end,
           i.email, i.role, i.organization_id, o.name, i.project_id, p.name, inviter.display_name, i.expires_at,
           i.mail_token_hash is not distinct from p_hash,
           case when u.id is null then 'none'
                when u.email_verified_at is not null then 'verified'
                when u.email_hold_until > now() then 'unverified'
                else 'none' end  -- past its hold: sign-up claims the address
      from public.project_invite i
      join public.organization o on o.id = i.organization_id
      left join public.project p on p.organization_id = i.organization_id and p.id = i.project_id
      left join public.user_account inviter on inviter.id = i.invited_by_user_id
      left join public.user_account u on lower(u.email) = lower(i.email) and u.kind = 'person'
     where i.token_hash = p_hash or i.mail_token_hash = p_hash
  $$;

-- Where the request's own user can enter: organizations they are a member of (with
-- their role), and organizations where they are a member of some projects only (with
-- those projects and roles). For GET /v1/me/organizations, across organizations.
create or replace function auth.my_organizations(p_user_id uuid)
  returns table (organization_id uuid, organization_name text, role text, projects jsonb)
  language plpgsql
  stable
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
begin
  if p_user_id is null or p_user_id is distinct from app.current_user_id() then
    raise exception 'my_organizations: not the request''s user' using errcode = 'insufficient_privilege';
  end if;
  return query
    select m.organization_id, o.name, m.role, null::jsonb
      from public.organization_membership m join public.organization o on o.id = m.organization_id
     where m.user_id = p_user_id
    union all
    select pm.organization_id, o.name, null::text,
           jsonb_agg(jsonb_build_object('id', p.id, 'name', p.name, 'role', pm.role) order by p.name, p.id)
      from public.project_membership pm
      join public.organization o on o.id = pm.organization_id
      join public.project p on p.organization_id = pm.organization_id and p.id = pm.project_id
     where pm.user_id = p_user_id
       and not exists (select from public.organization_membership m
                        where m.organization_id = pm.organization_id and m.user_id = p_user_id)
     group by pm.organization_id, o.name
     order by 2, 1;
end
$$;

-- A service account's identity: a user_account of kind service (no password, no
-- login, never released), made by an organization admin's request. The API then adds
-- its organization membership and service_account row as the admin (RLS, audit).
create or replace function auth.create_service_user(p_name text)
  returns uuid
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  uid uuid := uuidv7();
begin
  if app.current_organization_id() is null or not app.has_scope('members:write') or not app.unrestricted() then
    raise exception 'create_service_user: needs members:write on the whole organization'
      using errcode = 'insufficient_privilege';
  end if;
  insert into public.user_account (id, email, password_hash, display_name, kind, email_verified_at)
  values (uid, 'sa-' || uid || '@service-accounts.invalid', '!', p_name, 'service', now());
  return uid;
end
$$;

grant create on schema auth to tenant_auth;
alter function auth.signup(text, text, text, text, interval, bytea, bytea, text, text, boolean) owner to tenant_auth;
alter function auth.verify_email(bytea, text) owner to tenant_auth;
alter function auth.issue_verification(uuid, bytea, bytea, text, text) owner to tenant_auth;
alter function auth.invite_preview(bytea) owner to tenant_auth;
alter function auth.my_organizations(uuid) owner to tenant_auth;
alter function auth.create_service_user(text) owner to tenant_auth;
revoke create on schema auth from tenant_auth;
revoke all on function auth.signup(text, text, text, text, interval, bytea, bytea, text, text, boolean),
  auth.verify_email(bytea, text), auth.issue_verification(uuid, bytea, bytea, text, text),
  auth.invite_preview(bytea), auth.my_organizations(uuid), auth.create_service_user(text) from public;
revoke all on function auth.signup(text, text, text, text, interval, bytea, bytea, text, text, boolean),
  auth.verify_email(bytea, text), auth.invite_preview(bytea) from tenant_api;
-- Before any context: the login role's (the public auth routes). Signing up makes a
-- user and opens their session; verifying and previewing are proven by a mailed secret.
grant execute on function auth.signup(text, text, text, text, interval, bytea, bytea, text, text, boolean),
  auth.verify_email(bytea, text), auth.invite_preview(bytea) to tenant_login;
-- Within a request's context: its own user only, or an admin's new service account.
grant execute on function auth.issue_verification(uuid, bytea, bytea, text, text),
  auth.my_organizations(uuid), auth.create_service_user(text) to tenant_api;
