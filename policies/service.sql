-- service: user-defined (Knative) services of a project. Secret env values are
-- write-only: they live in secret_env, which the audit trigger never copies (a change
-- is logged as "[redacted]") and the API never returns. The API role can still read
-- the column, because a PATCH that keeps a secret without re-sending its value must
-- carry the stored value over (resources/services.py).
call app.tenant_table('public.service', area => 'services', project_column => 'project_id',
                      secret_columns => '{secret_env}');
