-- agent_profile: 1:1 with its agent, in the agent's project. PUT is an upsert (INSERT
-- ... ON CONFLICT DO UPDATE), which always touches updated_at: that alone is noise, so
-- re-sending an unchanged profile leaves no audit row.
call app.tenant_table('public.agent_profile', area => 'agents', project_column => 'project_id',
                      noise_columns => '{updated_at}');
