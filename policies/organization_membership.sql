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
