-- Cluster-level bootstrap, run once by a superuser (tenant-api bootstrap, the test
-- fixtures, docker-compose's init script). Everything else is applied by migrations,
-- running as tenant_owner.
--
-- The roles, each with one job:
--   tenant_owner  owns the schema; migrations run as it. The API never logs in as it.
--   tenant_api    the API's login role: owns nothing, NOBYPASSRLS, only the grants
--                 the policies files give it. Every query it runs is filtered by RLS.
--   tenant_auth   NOLOGIN; owns the few SECURITY DEFINER functions that must run
--                 before a request context exists (credential lookup, login, signup).
--   tenant_audit  NOLOGIN; owns the audit trigger function, the only writer of
--                 token_audit_log.
--   tenant_api_projects  NOLOGIN; what a project-restricted request runs as (the API
--                 role switches to it with SET LOCAL ROLE): the API role's own grants
--                 and policies, plus the project check (policies/context.sql).
--
-- Background duties (policies/<file>.sql grants each one its definer functions, and
-- nothing else; docs/security.md). NOLOGIN, own nothing, NOBYPASSRLS:
--   tenant_duty_scheduler    claim and fire due job schedules (policies/scheduler.sql)
--   tenant_duty_sealer       seal the audit trail (policies/audit_seal.sql)
--   tenant_duty_retention    purge what retention allows (policies/retention.sql)
--   tenant_duty_run_reaper   return runs whose lease expired to the queue (runners.sql)
--   tenant_duty_webhooks     claim, send as the owning credential, finish deliveries
--   tenant_duty_idempotency  purge expired idempotency keys
--   tenant_duty_mailer       claim and finish invite and verification mails
--   tenant_duty_desktop_reaper  close stale robot connections
--   tenant_duty_usage        write the usage records (app.record_usage)
-- Logins per process kind, each holding the duties its process runs (and nothing of the
-- API role's):
--   tenant_worker     the scheduler process (tenant-api scheduler): scheduler, sealer,
--                     retention, run reaper, webhooks, idempotency. WORKER_DATABASE_URL.
--   tenant_api_jobs   the API process's background threads: mailer, desktop reaper,
--                     usage writer. JOBS_DATABASE_URL.
--   tenant_login      the API process's public auth routes (signup, login, email
--                     verification, invite preview and sign-up): the API role's
--                     privileges plus the functions that read password hashes and open
--                     sessions, which the API role itself may not call. LOGIN_DATABASE_URL.
-- Passwords are set by the caller (ALTER ROLE ... PASSWORD) from its settings.
do $$
declare
  r text;
begin
  if not exists (select from pg_roles where rolname = 'tenant_owner') then
    create role tenant_owner login nosuperuser nocreatedb nocreaterole nobypassrls;
  end if;
  if not exists (select from pg_roles where rolname = 'tenant_api') then
    create role tenant_api login nosuperuser nocreatedb nocreaterole nobypassrls noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'tenant_auth') then
    create role tenant_auth nologin nosuperuser nobypassrls;
  end if;
  if not exists (select from pg_roles where rolname = 'tenant_audit') then
    create role tenant_audit nologin nosuperuser nobypassrls;
  end if;
  if not exists (select from pg_roles where rolname = 'tenant_api_projects') then
    create role tenant_api_projects nologin nosuperuser nocreatedb nocreaterole nobypassrls noinherit;
  end if;
  foreach r in array array['tenant_duty_scheduler', 'tenant_duty_sealer', 'tenant_duty_retention',
                           'tenant_duty_run_reaper', 'tenant_duty_webhooks', 'tenant_duty_idempotency',
                           'tenant_duty_mailer', 'tenant_duty_desktop_reaper', 'tenant_duty_usage'] loop
    if not exists (select from pg_roles where rolname = r) then
      execute format('create role %I nologin nosuperuser nocreatedb nocreaterole nobypassrls noinherit', r);
    end if;
  end loop;
  foreach r in array array['tenant_worker', 'tenant_api_jobs', 'tenant_login'] loop
    if not exists (select from pg_roles where rolname = r) then
      execute format('create role %I login nosuperuser nocreatedb nocreaterole nobypassrls inherit', r);
    end if;
  end loop;
end
$$;

-- The owner creates functions and hands them to the definer roles (ALTER FUNCTION ...
-- OWNER TO needs membership); it never needs their privileges otherwise.
grant tenant_auth to tenant_owner;
grant tenant_audit to tenant_owner;

-- The request context lives in a parameter only tenant_auth (the owner of the definer
-- functions that establish contexts) may set: see policies/context.sql. GRANT SET on a
-- built-in parameter needs a superuser, hence here.
grant set on parameter backtrace_functions to tenant_auth;

-- The API role may switch to its restricted twin (SET ROLE), and gains nothing by it:
-- tenant_api is NOINHERIT and the twin holds the same privileges.
grant tenant_api_projects to tenant_api;

-- Each login holds its process's duties (INHERIT: it calls their functions directly).
grant tenant_duty_scheduler, tenant_duty_sealer, tenant_duty_retention, tenant_duty_run_reaper,
      tenant_duty_webhooks, tenant_duty_idempotency to tenant_worker;
grant tenant_duty_mailer, tenant_duty_desktop_reaper, tenant_duty_usage to tenant_api_jobs;
-- The login role runs the public auth routes, which go on as the API role once a session
-- is open (signing up with an invite accepts it as the new user, in the same transaction).
grant tenant_api to tenant_login;
