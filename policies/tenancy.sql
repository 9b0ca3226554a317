-- The tenant-table pattern, written once.
--
-- Every tenant table's own file (policies/<table>.sql) calls app.tenant_table(...)
-- with what differs for that table: its scope area, the column that carries its
-- project (if any), extra conditions, secret and noise columns. The procedure:
--   * enables AND forces RLS (forced: the owner is filtered too, so a migration or a
--     definer function can't read across organizations by accident);
--   * replaces the table's policies with four for tenant_api (unrestricted contexts)
--     and four for tenant_api_projects (project-restricted ones, with the project check
--     for tables that have a project column):
--       select  organization matches, <area>:read, inside the project restriction
--       insert  organization matches, <area>:write, inside the project restriction
--       update  <area>:read and :write on the old row (USING), :write on the new
--       delete  <area>:read and :write
--     so a row of another organization is invisible, cannot be updated or deleted,
--     and cannot be created, whatever the handler asks for;
--   * grants tenant_api exactly the statements it needs (tenant_api_projects gets the
--     same: policies/restricted_credentials.sql);
--   * installs the audit trigger and the updated_at trigger.
-- It is idempotent: migrations re-apply every policies/*.sql on each upgrade.

create or replace procedure app.tenant_table(
  tbl regclass,
  area text,
  project_column text default null,
  read_extra text default null,
  write_extra text default null,
  secret_columns text[] default '{}',
  noise_columns text[] default '{}',
  org_column text default 'organization_id',
  api_grants text default 'select, insert, update, delete'
)
language plpgsql
as $proc$
declare
  pol record;
  readable text;
  writable text;
  changeable text;
  projects text;
  restricted boolean;
  role_name text;
  suffix text;
begin
  execute format('alter table %s enable row level security', tbl);
  execute format('alter table %s force row level security', tbl);

  for pol in select policyname from pg_policies
              where schemaname || '.' || tablename = (select n.nspname || '.' || c.relname
                                                        from pg_class c join pg_namespace n on n.oid = c.relnamespace
                                                       where c.oid = tbl)
  loop
    execute format('drop policy %I on %s', pol.policyname, tbl);
  end loop;

  -- The organization and the scope are one comparison with the context (see
  -- policies/context.sql): it joins the query's own organization filter, so the planner
  -- checks it once per statement and keeps the organization-leading indexes. The API
  -- role's policies read the fields of unrestricted contexts only; tenant_api_projects,
  -- which a project-restricted request switches to, reads the fields of restricted ones
  -- and, for tables whose rows belong to a project, checks the project once per
  -- statement too (an InitPlan).
  if app.scope_bit(area || ':read') = 0 then
    raise exception 'app.tenant_table(%): % is not in app.scope_catalog()', tbl, area || ':read';
  end if;
  foreach restricted in array array[false, true] loop
    if restricted and project_column is not null then
      projects := format(' and (coalesce(%I, ''00000000-0000-0000-0000-000000000000''::uuid)'
                         ' = any ((select app.context_projects())::uuid[])) is not false', project_column);
    else
      projects := '';
    end if;
    readable := app.context_check(org_column, area || ':read', restricted) || projects;
    writable := app.context_check(org_column, area || ':write', restricted) || projects;
    changeable := app.context_check(org_column, area || ':read', restricted) || ' and '
                  || app.context_check(org_column, area || ':write', restricted) || projects;
    if read_extra is not null then
      readable := readable || ' and (' || read_extra || ')';
      changeable := changeable || ' and (' || read_extra || ')';
    end if;
    if write_extra is not null then
      writable := writable || ' and (' || write_extra || ')';
      changeable := changeable || ' and (' || write_extra || ')';
    end if;
    role_name := case when restricted then 'tenant_api_projects' else 'tenant_api' end;
    suffix := case when restricted then '_restricted' else '' end;
    execute format('create policy %I on %s for select to %I using (%s)',
                   'tenant_select' || suffix, tbl, role_name, readable);
    execute format('create policy %I on %s for insert to %I with check (%s)',
                   'tenant_insert' || suffix, tbl, role_name, writable);
    execute format('create policy %I on %s for update to %I using (%s) with check (%s)',
                   'tenant_update' || suffix, tbl, role_name, changeable, writable);
    execute format('create policy %I on %s for delete to %I using (%s)',
                   'tenant_delete' || suffix, tbl, role_name, changeable);
  end loop;

  execute format('revoke all on %s from tenant_api', tbl);
  if api_grants <> '' then
    execute format('grant %s on %s to tenant_api', api_grants, tbl);
  end if;

  execute format('drop trigger if exists audit on %s', tbl);
  execute format(
    'create trigger audit after insert or update or delete on %s for each row '
    'execute function app.audit_row(%L, %L, %L)',
    tbl, secret_columns::text, noise_columns::text, org_column);

  execute format('drop trigger if exists touch_updated_at on %s', tbl);
  if exists (select from pg_attribute where attrelid = tbl and attname = 'updated_at' and not attisdropped) then
    execute format(
      'create trigger touch_updated_at before update on %s for each row '
      'execute function app.touch_updated_at()', tbl);
  end if;
end
$proc$;

create or replace function app.touch_updated_at() returns trigger
  language plpgsql
  as $$
begin
  new.updated_at := now();
  return new;
end
$$;

-- Only migrations (the owner) call the procedure.
revoke all on procedure app.tenant_table(regclass, text, text, text, text, text[], text[], text, text) from public;
