-- agent_template: the organization's catalog of agent blueprints. Organization-wide
-- (no project), so like workspace a project-restricted credential can read templates
-- (to create its agents from them) but not change the catalog.
call app.tenant_table('public.agent_template', area => 'agents',
                      write_extra => '(select app.unrestricted())');
