-- job_schedule: a cron schedule that the scheduler turns into jobs (scope area tasks).
-- The standard pattern, plus:
--   * next_run_at, last_run_at and updated_at are noise: the scheduler advancing a
--     schedule is not a change anyone made (each run is audited as its job's INSERT,
--     request_id 'scheduler:<schedule id>'); a user's change to cron, timezone or
--     enabled is audited as usual (the recomputed next_run_at just isn't repeated);
--   * the scheduler's definer functions (policies/scheduler.sql, owned by tenant_auth)
--     may see and lock enabled schedules of every organization (that is what finding
--     due ones across organizations means), and may advance one only inside the
--     organization context they set for it.
call app.tenant_table('public.job_schedule', area => 'tasks', project_column => 'project_id',
                      noise_columns => '{next_run_at,last_run_at,updated_at}');

create policy scheduler_read on public.job_schedule for select to tenant_auth
  using (enabled);
create policy scheduler_advance on public.job_schedule for update to tenant_auth
  using (enabled)
  with check (enabled and organization_id = (select app.current_organization_id()));
grant select (organization_id, id, project_id, cron, timezone, enabled, target, next_run_at, labels, max_attempts),
      update (next_run_at, last_run_at)
  on public.job_schedule to tenant_auth;
