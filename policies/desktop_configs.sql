-- desktop_configs (formerly WorkspaceConfig): project-level, the standard pattern.
call app.tenant_table('public.desktop_configs', area => 'desktops', project_column => 'project_id');
