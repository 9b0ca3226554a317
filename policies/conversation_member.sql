-- conversation_member: project-level, area conversations. Members are added and removed,
-- never changed: no UPDATE for the API role.
call app.tenant_table('public.conversation_member', area => 'conversations', project_column => 'project_id',
                      api_grants => 'select, insert, delete');
