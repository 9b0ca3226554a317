-- project_invite: an email invited to one project (project_id set: role admin, editor
-- or viewer), or to the organization itself (project_id null: role admin, member or
-- auditor, managed by unrestricted credentials only, since a null project is outside
-- every project restriction). Managed with
-- members:write, listed with members:read, inside the project restriction (so a
-- project admin manages the invites of their own project only).
--
-- Two secrets per invite: token_hash is the one shown to the inviter (API response),
-- mail_token_hash the one only the mail carries (tenant_api.auth.mail_secrets). Both
-- accept; only the mail secret proves the invitee reads that mailbox, so only it lets an
-- unverified account answer (and verifies it). Neither hash is readable by the API role
-- or copied into the audit log (a resend shows them as "[redacted]"). No DELETE:
-- revoking sets revoked_at, so the history of an invite stays.
call app.tenant_table('public.project_invite', area => 'members', project_column => 'project_id',
  secret_columns => '{token_hash,mail_token_hash}',
  api_grants => 'select (organization_id, id, project_id, email, role, expires_at, invited_by_user_id,'
                ' send_count, accepted_at, accepted_by_user_id, declined_at, revoked_at, created_at, updated_at),'
                ' insert, update (role, token_hash, mail_token_hash, expires_at, send_count, revoked_at)');

-- Accepting and declining happen as the INVITEE, whose request context is their own
-- organization: the API role cannot see the invite there. auth.accept_invite finds it by
-- its hash (before the inviting organization is known), locks it, and changes it with
-- the inviting organization set as the context.
create policy auth_lookup on public.project_invite for select to tenant_auth using (true);
create policy auth_respond on public.project_invite for update to tenant_auth
  using (true)
  with check (organization_id = (select app.current_organization_id()));
grant select, update (accepted_at, accepted_by_user_id, declined_at) on public.project_invite to tenant_auth;

-- Accept (or decline) an invite, exactly once. Returns one row whose status the API maps:
--   ok              201 (accept) / 204 (decline)
--   not_found       404: no invite with this secret, or one addressed to another email
--                   (the caller learns nothing about invites that are not theirs)
--   unverified      403: the caller's address is not verified and the secret is the
--                   inviter's, not the mail's (an unverified squatter gains nothing)
--   expired, revoked, used, declined   410, saying which
--   already_member  409: the user is already in that organization or project
-- The row lock (FOR UPDATE) makes concurrent accepts queue on the invite: the first
-- consumes it, every later one sees it consumed ('used'). Answering with the mail's
-- secret verifies the caller's address (the mailbox is proven).
-- An organization invite (project_id null) makes an organization membership; the
-- invitee's project memberships there, if any, are removed in the same transaction by
-- the membership trigger (policies/organization_membership.sql; as with
-- POST /v1/organization/members): the organization role applies from then on.
drop function if exists auth.accept_invite(bytea, uuid, boolean);
create or replace function auth.accept_invite(p_token_hash bytea, p_user_id uuid, p_decline boolean default false)
  returns table (status text, organization_id uuid, project_id uuid, membership_id uuid, role text,
                 verified boolean)
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
#variable_conflict use_column
declare
  inv public.project_invite%rowtype;
  who public.user_account%rowtype;
  via_mail boolean;
  saved text[];
  result text;
  mid uuid;
begin
  -- Only for the request's own user: the API passes it, the context proves it.
  if p_user_id is null or p_user_id is distinct from app.current_user_id() then
    raise exception 'accept_invite: not the request''s user' using errcode = 'insufficient_privilege';
  end if;
  select * into who from public.user_account u where u.id = p_user_id;
  select * into inv from public.project_invite i
   where i.token_hash = p_token_hash or i.mail_token_hash = p_token_hash for update;
  if inv.id is null or who.kind <> 'person' or lower(inv.email) <> lower(who.email) then
    return query select 'not_found'::text, null::uuid, null::uuid, null::uuid, null::text, false;
    return;
  end if;
  via_mail := inv.mail_token_hash is not distinct from p_token_hash;

  result := case
    when who.email_verified_at is null and not via_mail then 'unverified'
    when inv.revoked_at is not null then 'revoked'
    when inv.accepted_at is not null then 'used'
    when inv.declined_at is not null then 'declined'
    when inv.expires_at <= now() then 'expired'
    when p_decline then 'ok'
    when exists (select from public.organization_membership m
                  where m.organization_id = inv.organization_id and m.user_id = p_user_id)
      or (inv.project_id is not null
          and exists (select from public.project_membership pm
                       where pm.organization_id = inv.organization_id and pm.project_id = inv.project_id
                         and pm.user_id = p_user_id)) then 'already_member'
    else 'ok'
  end;
  if result <> 'ok' then
    return query select result, null::uuid, null::uuid, null::uuid, null::text, false;
    return;
  end if;

  if via_mail and who.email_verified_at is null then
    update public.user_account u set email_verified_at = now(), email_hold_until = null, verify_token_hash = null
     where u.id = p_user_id;
  end if;
  -- The inviting organization is the context for the moment of the change (the
  -- tenant_auth policies check it; the audit rows are filed under it, attributed to the
  -- invitee's user, token and request), then the caller's context is put back.
  saved := auth.enter_context(inv.organization_id, app.current_user_id(), app.current_token_id(),
                              app.current_request_id());
  if p_decline then
    update public.project_invite i set declined_at = now()
     where i.organization_id = inv.organization_id and i.id = inv.id;
  else
    mid := uuidv7();
    -- Consumed first: the membership guard (policies/organization_membership.sql) admits
    -- an organization member by the invite they accepted.
    update public.project_invite i set accepted_at = now(), accepted_by_user_id = p_user_id
     where i.organization_id = inv.organization_id and i.id = inv.id;
    if inv.project_id is null then
      insert into public.organization_membership (organization_id, id, user_id, role)
      values (inv.organization_id, mid, p_user_id, inv.role);
    else
      insert into public.project_membership (organization_id, id, project_id, user_id, role, invite_id)
      values (inv.organization_id, mid, inv.project_id, p_user_id, inv.role, inv.id);
    end if;
  end if;
  perform auth.leave_context(saved);
  return query select 'ok'::text, inv.organization_id, inv.project_id, mid, inv.role,
                      via_mail and who.email_verified_at is null;
end
$$;

grant create on schema auth to tenant_auth;
alter function auth.accept_invite(bytea, uuid, boolean) owner to tenant_auth;
revoke create on schema auth from tenant_auth;
revoke all on function auth.accept_invite(bytea, uuid, boolean) from public;
grant execute on function auth.accept_invite(bytea, uuid, boolean) to tenant_api;
