-- workspace: groups projects. Not a project row, so a project-restricted credential can
-- read workspaces (to find its project's) but not change them.
call app.tenant_table('public.workspace', area => 'org',
                      write_extra => '(select app.unrestricted())');

create policy auth_signup on public.workspace for insert to tenant_auth
  with check (organization_id = (select app.current_organization_id()));
grant insert on public.workspace to tenant_auth;
