-- Cluster-level bootstrap, run once by a superuser (tenant-api bootstrap, the test
-- fixtures, docker-compose's init script). Everything else is applied by migrations,
-- running as tenant_owner.
--
-- Four roles, each with one job:
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
-- Passwords are set by the caller (ALTER ROLE ... PASSWORD) from its settings.
do $$
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
