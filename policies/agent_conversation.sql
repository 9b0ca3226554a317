-- agent_conversation: (agent, conversation_key) -> external conversation id.
call app.tenant_table('public.agent_conversation', area => 'agents', project_column => 'project_id');
