-- job: one run of a command or workflow (scope area tasks), made by hand (POST
-- /v1/jobs) or by the scheduler, run by a runner (tenant_api.runs). The standard
-- pattern, plus:
--   * its lifecycle enforced for every path, stamping started_at / finished_at
--     (must equal tenant_api.resources.tasks.RUN_MOVES, tested); running -> queued is
--     the lease reaper's move (lease lost, back to the queue);
--   * the runner protocol (app.guard_run, policies/lifecycle.sql): only a claim starts it, the
--     claim never changes hands, the outcome matches the status, a finished job is final;
--   * log_seq, the lease and heartbeat bookkeeping, progress and updated_at are noise:
--     appending a log chunk is audited by its own job_log row, a heartbeat by nothing;
--     the claim (status, attempt, claimed_by_token_id) and the finish are audited, as
--     the runner's token; the claim secret's hash is never copied;
--   * a job entering the queue wakes long-polling claims (app.notify_run_queued);
--   * the scheduler (auth.fire_schedule, as tenant_auth) may insert queued jobs of
--     a schedule, only in the organization whose context it set for that schedule.
call app.tenant_table('public.job', area => 'tasks', project_column => 'project_id',
                      secret_columns => '{claim_secret_hash}',
                      noise_columns => '{log_seq,lease_expires_at,heartbeat_at,progress,updated_at}');

drop trigger if exists guard_status on public.job;
create trigger guard_status before insert or update of status on public.job
  for each row execute function app.guard_status(
    'job', 'queued',
    '{queued>running,queued>cancelled,running>queued,running>succeeded,running>failed,running>cancelled}',
    'running');

drop trigger if exists guard_run on public.job;
create trigger guard_run before update on public.job
  for each row execute function app.guard_run('job');

drop trigger if exists notify_queued on public.job;
create trigger notify_queued after insert or update of status on public.job
  for each row execute function app.notify_run_queued('job');

create policy scheduler_insert on public.job for insert to tenant_auth
  with check (organization_id = (select app.current_organization_id())
              and schedule_id is not null and scheduled_for is not null and status = 'queued');
grant insert (organization_id, id, project_id, schedule_id, target, status, scheduled_for, labels, max_attempts)
  on public.job to tenant_auth;
