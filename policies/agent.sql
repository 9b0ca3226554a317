-- agent: the first project-level resource. Everything else under a project follows
-- this one line.
call app.tenant_table('public.agent', area => 'agents', project_column => 'project_id');
