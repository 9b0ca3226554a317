-- organization: the tenant itself; its id is the organization id.
-- Readable with org:read; only unrestricted credentials (not limited to some projects)
-- may change it. Rows are created only by auth.signup.
call app.tenant_table('public.organization', area => 'org', org_column => 'id',
                      write_extra => '(select app.unrestricted())',
                      api_grants => 'select, update (name, updated_at)');

create policy auth_signup on public.organization for insert to tenant_auth
  with check (id = (select app.current_organization_id()));
grant insert on public.organization to tenant_auth;

-- The usage recorder and the sealer (tenant_audit definer functions) iterate over, and
-- check the existence of, organizations.
create policy audit_list on public.organization for select to tenant_audit using (true);
grant select (id) on public.organization to tenant_audit;

-- The invite page's preview and GET /v1/me/organizations name organizations before (or
-- outside) any context of theirs: auth.invite_preview, auth.my_organizations.
create policy auth_lookup on public.organization for select to tenant_auth using (true);
grant select (id, name) on public.organization to tenant_auth;
