-- job_log: a job's output, one row per appended chunk (scope area tasks). Append-only
-- for the API (select, insert; rows go with their job). The chunk text is listed as a
-- "secret" column only so the audit trail does not copy every log line a second
-- time: the audit row still records who appended which seq to which job.
-- Only the job's running attempt appends (app.guard_job_log, revision 0013): once the job
-- has finished, or has been claimed again, its log is closed to the previous holder.
call app.tenant_table('public.job_log', area => 'tasks', project_column => 'project_id',
                      secret_columns => '{data}', api_grants => 'select, insert');

drop trigger if exists guard_log on public.job_log;
create trigger guard_log before insert on public.job_log
  for each row execute function app.guard_job_log();
