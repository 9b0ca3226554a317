-- organization_membership: who belongs to the organization, with which role.
-- A project-restricted credential (an invitee of one project) sees only its own
-- membership row: the member list is organization-wide data.
call app.tenant_table('public.organization_membership', area => 'members',
                      read_extra => '(select app.unrestricted()) or user_id = (select app.current_user_id())',
                      write_extra => '(select app.unrestricted())');

-- begin_request and login must find a user's memberships before any context exists.
create policy auth_lookup on public.organization_membership for select to tenant_auth using (true);
create policy auth_signup on public.organization_membership for insert to tenant_auth
  with check (organization_id = (select app.current_organization_id()));
grant select, insert on public.organization_membership to tenant_auth;

-- Its user's credentials in this organization are recomputed with every change
-- (auth.refresh_credentials): a new role, a removal, applies to the very next request.
drop trigger if exists refresh_credentials on public.organization_membership;
create trigger refresh_credentials after insert or update or delete on public.organization_membership
  for each row execute function auth.refresh_credentials();

-- The membership rules, in the database (whatever a handler or a raw connection sends):
--   * members are users the organization can see: its first member (signup makes the
--     organization and its owner together), an invitee who accepted an invite to the
--     organization (auth.accept_invite), a member of one of its projects (POST
--     /v1/organization/members), or a service account's user (auth.create_service_user
--     made it for this organization: no one else holds it);
--   * a membership never moves to another organization or user;
--   * only an owner (the request's user is an owner here) makes, changes or removes an
--     owner, and the last owner stays (neither removed nor demoted).
-- (A superuser's session, above RLS anyway, is above these rules too.)
-- Owner changes of one organization queue on a transaction-level advisory lock, so two
-- concurrent demotions of the last two owners cannot both pass.
-- SECURITY DEFINER (tenant_auth): it must see memberships, invites and service
-- accounts whatever the writer's own policies show.
create or replace function auth.guard_membership() returns trigger
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  org uuid := coalesce(new.organization_id, old.organization_id);
  actor_is_owner boolean;
begin
  -- A superuser's session (an operator's repair, the test suite's fixtures) is above
  -- these rules as it is above RLS.
  if (select r.rolsuper from pg_catalog.pg_roles r where r.rolname = session_user) then
    return coalesce(new, old);
  end if;
  if tg_op = 'UPDATE' and (new.organization_id, new.user_id) is distinct from (old.organization_id, old.user_id) then
    raise exception 'a membership never moves to another organization or user' using errcode = '42501';
  end if;
  if tg_op = 'INSERT'
     and exists (select from public.organization_membership m where m.organization_id = org)
     and not exists (select from public.project_invite i
                      where i.organization_id = org and i.project_id is null
                        and i.accepted_by_user_id = new.user_id and i.role = new.role)
     and not exists (select from public.project_membership pm
                      where pm.organization_id = org and pm.user_id = new.user_id)
     and not exists (select from public.user_account u
                      where u.id = new.user_id and u.kind = 'service'
                        and not exists (select from public.organization_membership m where m.user_id = u.id)
                        and not exists (select from public.service_account sa
                                         where sa.user_id = u.id and sa.organization_id <> org)) then
    raise exception 'not a user this organization can see (invite them, or add a member of one of its projects)'
      using errcode = '42501';
  end if;
  if (tg_op <> 'DELETE' and new.role = 'owner') or (tg_op <> 'INSERT' and old.role = 'owner') then
    if tg_op = 'UPDATE' and new.role = old.role then
      return new;
    end if;
    perform pg_advisory_xact_lock(hashtextextended('organization_membership owners ' || org::text, 0));
    -- An organization's first owner comes with it (signup); after that, owners only.
    if exists (select from public.organization_membership m where m.organization_id = org and m.role = 'owner') then
      select exists (select from public.organization_membership m
                      where m.organization_id = org and m.role = 'owner'
                        and m.user_id = app.current_user_id()) into actor_is_owner;
      if not actor_is_owner then
        raise exception 'only an owner can make, change or remove an owner' using errcode = '42501';
      end if;
    end if;
    if tg_op <> 'INSERT' and old.role = 'owner'
       and not exists (select from public.organization_membership m
                        where m.organization_id = org and m.role = 'owner' and m.id <> old.id)
       and exists (select from public.organization o where o.id = org) then
      raise exception 'the last owner cannot be removed or demoted' using errcode = '23514';
    end if;
  end if;
  return coalesce(new, old);
end
$$;

-- A user who joins the organization leaves its projects' member lists: the organization
-- role applies from now on, and a project role kept beside it would be stale (shown to
-- project admins, editable, and back in force if the organization membership ended).
create or replace function auth.end_project_memberships() returns trigger
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
begin
  delete from public.project_membership pm where pm.organization_id = new.organization_id and pm.user_id = new.user_id;
  return null;
end
$$;

grant create on schema auth to tenant_auth;
alter function auth.guard_membership() owner to tenant_auth;
alter function auth.end_project_memberships() owner to tenant_auth;
revoke create on schema auth from tenant_auth;
revoke all on function auth.guard_membership(), auth.end_project_memberships() from public;

-- (What the guard reads: policies/service_account.sql, user_account.sql, project_invite.sql;
-- what the second removes: policies/project_membership.sql.)
drop trigger if exists guard_membership on public.organization_membership;
create trigger guard_membership before insert or update or delete on public.organization_membership
  for each row execute function auth.guard_membership();
drop trigger if exists end_project_memberships on public.organization_membership;
create trigger end_project_memberships after insert on public.organization_membership
  for each row execute function auth.end_project_memberships();
