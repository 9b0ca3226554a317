-- job_log: a job's output, one row per appended chunk (scope area tasks). Append-only
-- for the API (select, insert; rows go with their job). The chunk text is listed as a
-- "secret" column only so the audit trail does not copy every log line a second
-- time: the audit row still records who appended which seq to which job.
call app.tenant_table('public.job_log', area => 'tasks', project_column => 'project_id',
                      secret_columns => '{data}', api_grants => 'select, insert');
