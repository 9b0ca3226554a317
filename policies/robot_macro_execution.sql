-- robot_macro_execution: project-level. The history is append-only for the API: rows are
-- created and finished (insert, update), never deleted one by one; they go with their
-- macro (the foreign key cascade). duration_ms is generated, so nobody can write it.
call app.tenant_table('public.robot_macro_execution', area => 'desktops', project_column => 'project_id',
                      api_grants => 'select, insert, update');

-- The status lifecycle, enforced for every path (finished_at is set by the service).
-- Must equal tenant_api.resources.desktops.EXECUTION_LIFECYCLE (catalog test).
drop trigger if exists guard_status on public.robot_macro_execution;
create trigger guard_status before insert or update of status on public.robot_macro_execution
  for each row execute function app.guard_status(
    'execution', 'running', '{running>succeeded,running>failed,running>cancelled}', '');
