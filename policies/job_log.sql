-- job_log: a job's output, one row per appended chunk (scope area tasks). Append-only
-- for the API (select, insert; rows go with their job). The chunk text is listed as a
-- "secret" column only so the audit trail does not copy every log line a second
-- time: the audit row still records who appended which seq to which job.
-- Only the job's running attempt appends (app.guard_job_log, below): once the job has
-- finished, or has been claimed again, its log is closed to the previous holder.
call app.tenant_table('public.job_log', area => 'tasks', project_column => 'project_id',
                      secret_columns => '{data}', api_grants => 'select, insert');

-- A job's log is open to its running attempt only (closed once it finishes). A job
-- this credential cannot see is left to RLS and the foreign key to refuse.
create or replace function app.guard_job_log() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
  as $$
declare
  j record;
begin
  select status, attempt into j from public.job
   where organization_id = new.organization_id and id = new.job_id
     for share;
  if found and (j.status <> 'running' or j.attempt <> new.attempt) then
    raise exception 'job %: only its running attempt appends logs (the job is %, attempt %)',
                    new.job_id, j.status, j.attempt
      using errcode = 'check_violation', constraint = 'job_log_running_attempt';
  end if;
  return new;
end
$$;

drop trigger if exists guard_log on public.job_log;
create trigger guard_log before insert on public.job_log
  for each row execute function app.guard_job_log();
