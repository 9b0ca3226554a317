-- service_account: an organization's own principals, for integrations. Each is a
-- user_account of kind service (auth.create_service_user) with an organization
-- membership (its role, read live by auth.begin_request like anyone's) and this row:
-- its name, and the most its tokens may carry (scopes, projects), fixed at creation.
-- Managed by unrestricted credentials with members:write (organization admins), read
-- with members:read; a project-restricted credential sees none.
call app.tenant_table('public.service_account', area => 'members',
  read_extra => '(select app.unrestricted())',
  write_extra => '(select app.unrestricted())',
  api_grants => 'select, insert, update (name, description), delete');

-- The membership guard (policies/organization_membership.sql) asks whose a service user is.
create policy auth_guard on public.service_account for select to tenant_auth using (true);
grant select (organization_id, user_id) on public.service_account to tenant_auth;
