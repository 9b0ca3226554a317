-- workspace: groups projects. Not a project row, so a project-restricted credential can
-- read only the workspaces holding its projects (the subquery is filtered by project's
-- own policy), and change none.
call app.tenant_table('public.workspace', area => 'org',
                      read_extra => '(select app.unrestricted()) or id in (select p.workspace_id from public.project p'
                                    ' where p.organization_id = (select app.current_organization_id()))',
                      write_extra => '(select app.unrestricted())');

create policy auth_signup on public.workspace for insert to tenant_auth
  with check (organization_id = (select app.current_organization_id()));
grant insert on public.workspace to tenant_auth;
