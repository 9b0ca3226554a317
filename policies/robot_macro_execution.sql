-- robot_macro_execution: project-level. The history is append-only for the API: rows are
-- created and finished (insert, update), never deleted one by one; they go with their
-- macro (the foreign key cascade). duration_ms is generated, so nobody can write it.
call app.tenant_table('public.robot_macro_execution', area => 'desktops', project_column => 'project_id',
                      api_grants => 'select, insert, update');
