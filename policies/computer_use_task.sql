-- computer_use_task: an instruction for an agent driving a desktop (scope area tasks).
-- The standard pattern, plus its lifecycle enforced for every path (queued -> running |
-- cancelled; running -> succeeded | failed | cancelled), which also stamps started_at
-- and finished_at. Must equal tenant_api.resources.tasks.RUN_LIFECYCLE (tested).
call app.tenant_table('public.computer_use_task', area => 'tasks', project_column => 'project_id');

drop trigger if exists guard_status on public.computer_use_task;
create trigger guard_status before insert or update of status on public.computer_use_task
  for each row execute function app.guard_status(
    'computer_use_task', 'queued',
    '{queued>running,queued>cancelled,running>succeeded,running>failed,running>cancelled}',
    'running');
