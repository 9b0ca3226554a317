-- project_membership: a user who is not a member of the organization but of some of
-- its projects (an accepted invite), with a project role. auth.begin_request turns
-- these rows into the user's project restriction and scopes in that organization.
--
-- Listed with members:read; role changes and removals with members:write; both inside
-- the project restriction (a project admin manages their own project's members). Rows
-- are created only by auth.accept_invite: the API role has no INSERT.
call app.tenant_table('public.project_membership', area => 'members', project_column => 'project_id',
                      api_grants => 'select, update (role), delete');

-- begin_request and login read a user's project memberships before any context exists;
-- accept_invite inserts them with the inviting organization as the context.
create policy auth_lookup on public.project_membership for select to tenant_auth using (true);
create policy auth_accept on public.project_membership for insert to tenant_auth
  with check (organization_id = (select app.current_organization_id()));
grant select, insert on public.project_membership to tenant_auth;
-- A user who joins the organization leaves its projects' member lists
-- (auth.end_project_memberships, policies/organization_membership.sql): only such rows.
create policy auth_supersede on public.project_membership for delete to tenant_auth
  using (exists (select from public.organization_membership m
                  where m.organization_id = project_membership.organization_id
                    and m.user_id = project_membership.user_id));
grant delete on public.project_membership to tenant_auth;

-- Its user's credentials in this organization are recomputed with every change
-- (auth.refresh_credentials): a new role, a removal, applies to the very next request.
drop trigger if exists refresh_credentials on public.project_membership;
create trigger refresh_credentials after insert or update or delete on public.project_membership
  for each row execute function auth.refresh_credentials();
