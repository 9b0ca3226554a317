-- robot_macro_execution: project-level. The history is append-only for the API: rows are
-- created and finished (insert, update), never deleted one by one; they go with their
-- macro (the foreign key cascade). duration_ms is generated, so nobody can write it.
-- An execution is queued, then claimed and run by the robot of its VM, like a job
-- (tenant_api.runs): the runner protocol, noise and secret columns and the queue
-- notification are as for job (policies/job.sql).
call app.tenant_table('public.robot_macro_execution', area => 'desktops', project_column => 'project_id',
                      secret_columns => '{claim_secret_hash}',
                      noise_columns => '{lease_expires_at,heartbeat_at,progress,updated_at}',
                      api_grants => 'select, insert, update');

-- The status lifecycle, enforced for every path; it stamps started_at and finished_at.
-- Must equal tenant_api.resources.desktops.EXECUTION_LIFECYCLE (catalog test).
drop trigger if exists guard_status on public.robot_macro_execution;
create trigger guard_status before insert or update of status on public.robot_macro_execution
  for each row execute function app.guard_status(
    'execution', 'queued',
    '{queued>running,queued>cancelled,running>queued,running>succeeded,running>failed,running>cancelled}',
    'running');

drop trigger if exists guard_run on public.robot_macro_execution;
create trigger guard_run before update on public.robot_macro_execution
  for each row execute function app.guard_run('execution');

drop trigger if exists notify_queued on public.robot_macro_execution;
create trigger notify_queued after insert or update of status on public.robot_macro_execution
  for each row execute function app.notify_run_queued('robot_macro_execution');
