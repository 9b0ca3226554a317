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
end
$$;

-- The owner creates functions and hands them to the definer roles (ALTER FUNCTION ...
-- OWNER TO needs membership); it never needs their privileges otherwise.
grant tenant_auth to tenant_owner;
grant tenant_audit to tenant_owner;
