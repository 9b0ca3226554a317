-- desktop_virtual_machine: project-level, the standard pattern. The status state machine
-- is the service's (resources/desktops.py); the check constraint bounds the values.
call app.tenant_table('public.desktop_virtual_machine', area => 'desktops', project_column => 'project_id');
