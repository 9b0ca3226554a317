-- robot_macro: project-level, the standard pattern.
call app.tenant_table('public.robot_macro', area => 'desktops', project_column => 'project_id');
