-- agent_email_rule: an agent's inbound/outbound mail routing, in the agent's project.
call app.tenant_table('public.agent_email_rule', area => 'agents', project_column => 'project_id');
