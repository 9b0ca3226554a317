-- job: one run of a command or workflow (scope area tasks), made by hand (POST
-- /v1/jobs) or by the scheduler. The standard pattern, plus:
--   * its lifecycle enforced for every path, stamping started_at / finished_at
--     (must equal tenant_api.resources.tasks.RUN_LIFECYCLE, tested);
--   * log_seq (bumped by every log append) and updated_at are noise: appending a log
--     chunk is audited by its own job_log row, not by a second row here;
--   * the scheduler (auth.fire_schedule, as tenant_auth) may insert queued jobs of
--     a schedule, only in the organization whose context it set for that schedule.
call app.tenant_table('public.job', area => 'tasks', project_column => 'project_id',
                      noise_columns => '{log_seq,updated_at}');

drop trigger if exists guard_status on public.job;
create trigger guard_status before insert or update of status on public.job
  for each row execute function app.guard_status(
    'job', 'queued',
    '{queued>running,queued>cancelled,running>succeeded,running>failed,running>cancelled}',
    'running');

create policy scheduler_insert on public.job for insert to tenant_auth
  with check (organization_id = (select app.current_organization_id())
              and schedule_id is not null and scheduled_for is not null and status = 'queued');
grant insert (organization_id, id, project_id, schedule_id, target, status, scheduled_for)
  on public.job to tenant_auth;
