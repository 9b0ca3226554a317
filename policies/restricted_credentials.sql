-- tenant_api_projects: the role a project-restricted request runs as (policies/context.sql).
--
-- It may do exactly what the API role may, through the same hand-written policies; only
-- the generated tenant-table policies differ (app.tenant_table writes four for each
-- role). Rather than every file granting twice, this file runs after all the others and
-- makes the role's privileges and policies a copy of the API role's: relations and their
-- columns, sequences, functions, schemas; every policy that names tenant_api (but the
-- generated tenant_* ones) names tenant_api_projects too. What tenant_api_projects held
-- beyond that is revoked. tests/security/test_catalog.py compares the two roles.

create or replace procedure app.mirror_api_role()
language plpgsql
as $proc$
declare
  r record;
begin
  -- Relations (tables, views, sequences): revoke everything, then grant what tenant_api
  -- has, table-wide and per column.
  for r in select c.oid::regclass as rel, case when c.relkind = 'S' then 'sequence' else 'table' end as kind,
                  (select string_agg(distinct a.privilege_type, ', ')
                     from aclexplode(c.relacl) a where a.grantee = 'tenant_api'::regrole) as privileges
             from pg_class c
            where c.relnamespace in ('public'::regnamespace, 'app'::regnamespace, 'auth'::regnamespace)
              and c.relkind in ('r', 'v', 'S', 'p', 'm')
  loop
    execute format('revoke all on %s %s from tenant_api_projects', r.kind, r.rel);
    if r.privileges is not null then
      execute format('grant %s on %s %s to tenant_api_projects', r.privileges, r.kind, r.rel);
    end if;
  end loop;
  for r in select distinct c.oid::regclass as rel, at.attname
             from pg_class c
             join pg_attribute at on at.attrelid = c.oid and at.attnum > 0 and not at.attisdropped
             cross join lateral aclexplode(at.attacl) a
            where c.relnamespace in ('public'::regnamespace, 'app'::regnamespace, 'auth'::regnamespace)
              and a.grantee = 'tenant_api_projects'::regrole
  loop
    execute format('revoke all (%I) on table %s from tenant_api_projects', r.attname, r.rel);
  end loop;
  -- (each privilege names its column: "grant select, update (c)" would grant SELECT on
  -- the whole table)
  for r in select c.oid::regclass as rel,
                  string_agg(format('%s (%I)', a.privilege_type, at.attname), ', ') as privileges
             from pg_class c
             join pg_attribute at on at.attrelid = c.oid and at.attnum > 0 and not at.attisdropped
             cross join lateral aclexplode(at.attacl) a
            where c.relnamespace in ('public'::regnamespace, 'app'::regnamespace, 'auth'::regnamespace)
              and a.grantee = 'tenant_api'::regrole
            group by 1
  loop
    execute format('grant %s on table %s to tenant_api_projects', r.privileges, r.rel);
  end loop;

  -- Functions and procedures the API role was granted (most run for PUBLIC anyway).
  for r in select p.oid::regprocedure as fn, p.prokind
             from pg_proc p
            where p.pronamespace in ('public'::regnamespace, 'app'::regnamespace, 'auth'::regnamespace)
  loop
    if has_function_privilege('tenant_api', r.fn, 'EXECUTE') then
      execute format('grant execute on %s %s to tenant_api_projects',
                     case when r.prokind = 'p' then 'procedure' else 'function' end, r.fn);
    else
      execute format('revoke execute on %s %s from tenant_api_projects',
                     case when r.prokind = 'p' then 'procedure' else 'function' end, r.fn);
    end if;
  end loop;

  -- Schemas.
  for r in select n.nspname from pg_namespace n where n.nspname in ('public', 'app', 'auth') loop
    if has_schema_privilege('tenant_api', r.nspname, 'USAGE') then
      execute format('grant usage on schema %I to tenant_api_projects', r.nspname);
    else
      execute format('revoke usage on schema %I from tenant_api_projects', r.nspname);
    end if;
  end loop;

  -- Hand-written policies for the API role apply to its restricted twin as well.
  for r in select p.polname, p.polrelid::regclass as rel,
                  array(select quote_ident(rolname) from pg_roles where oid = any (p.polroles)) as roles
             from pg_policy p
            where 'tenant_api'::regrole = any (p.polroles)
              and not 'tenant_api_projects'::regrole = any (p.polroles)
              and p.polname not in ('tenant_select', 'tenant_insert', 'tenant_update', 'tenant_delete')
  loop
    execute format('alter policy %I on %s to %s', r.polname, r.rel,
                   array_to_string(r.roles || array['tenant_api_projects'], ', '));
  end loop;
end
$proc$;

revoke all on procedure app.mirror_api_role() from public;
call app.mirror_api_role();
