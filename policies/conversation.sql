-- conversation: project-level, area conversations.
-- last_seq is bumped by every posted message (the message's own INSERT is audited) and
-- updated_at moves with it: both are noise, so posting leaves no UPDATE row here.
call app.tenant_table('public.conversation', area => 'conversations', project_column => 'project_id',
                      noise_columns => '{last_seq,updated_at}');
