-- desktop_virtual_machine: project-level, the standard pattern. The status state machine
-- is the service's (resources/desktops.py); the check constraint bounds the values.
call app.tenant_table('public.desktop_virtual_machine', area => 'desktops', project_column => 'project_id');

-- The status lifecycle, enforced for every path (the API checks first, for a 409 naming
-- both states). Must equal tenant_api.resources.desktops.VM_LIFECYCLE (a catalog test
-- compares every guarded table with its Python lifecycle).
drop trigger if exists guard_status on public.desktop_virtual_machine;
create trigger guard_status before insert or update of status on public.desktop_virtual_machine
  for each row execute function app.guard_status(
    'VM', 'provisioning',
    '{provisioning>running,provisioning>failed,running>stopped,running>terminated,stopped>running,stopped>terminated}',
    '');
