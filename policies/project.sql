-- project: the working unit. Its own id is what the project restriction lists, so a
-- restricted credential sees only its projects and cannot create new ones (a new id
-- is never inside the restriction).
call app.tenant_table('public.project', area => 'org', project_column => 'id');

create policy auth_signup on public.project for insert to tenant_auth
  with check (organization_id = (select app.current_organization_id()));
-- Login checks that the projects a session is restricted to exist (auth.create_session).
create policy auth_lookup on public.project for select to tenant_auth using (true);
grant select, insert on public.project to tenant_auth;
