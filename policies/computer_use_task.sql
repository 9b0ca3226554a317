-- computer_use_task: an instruction for an agent driving a desktop (scope area tasks),
-- run by a runner like a job (tenant_api.runs). The standard pattern, plus its lifecycle
-- enforced for every path (queued -> running | cancelled; running -> queued (lease lost)
-- | succeeded | failed | cancelled), which also stamps started_at and finished_at. Must
-- equal tenant_api.resources.tasks.RUN_MOVES (tested). The runner protocol, noise and
-- secret columns, and the queue notification: as for job (policies/job.sql).
call app.tenant_table('public.computer_use_task', area => 'tasks', project_column => 'project_id',
                      secret_columns => '{claim_secret_hash}',
                      noise_columns => '{lease_expires_at,heartbeat_at,progress,updated_at}');

drop trigger if exists guard_status on public.computer_use_task;
create trigger guard_status before insert or update of status on public.computer_use_task
  for each row execute function app.guard_status(
    'computer_use_task', 'queued',
    '{queued>running,queued>cancelled,running>queued,running>succeeded,running>failed,running>cancelled}',
    'running');

drop trigger if exists guard_run on public.computer_use_task;
create trigger guard_run before update on public.computer_use_task
  for each row execute function app.guard_run('computer_use_task');

drop trigger if exists notify_queued on public.computer_use_task;
create trigger notify_queued after insert or update of status on public.computer_use_task
  for each row execute function app.notify_run_queued('computer_use_task');
