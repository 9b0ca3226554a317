-- The tenant-table pattern, written once.
--
-- Every tenant table's own file (policies/<table>.sql) calls app.tenant_table(...)
-- with what differs for that table: its scope area, the column that carries its
-- project (if any), extra conditions, secret and noise columns. The procedure:
--   * enables AND forces RLS (forced: the owner is filtered too, so a migration or a
--     definer function can't read across organizations by accident);
--   * replaces the table's policies with four for tenant_api:
--       select  organization matches, <area>:read, inside the project restriction
--       insert  organization matches, <area>:write, inside the project restriction
--       update  same as insert, on both the old row (USING) and the new (WITH CHECK)
--       delete  same as insert
--     so a row of another organization is invisible, cannot be updated or deleted,
--     and cannot be created, whatever the handler asks for;
--   * grants tenant_api exactly the statements it needs;
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
  tenant text;
  readable text;
  writable text;
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

  tenant := format('%I = (select app.current_organization_id())', org_column);
  if project_column is not null then
    tenant := tenant || format(
      ' and ((select app.unrestricted()) or %I = any ((select app.current_project_ids())::uuid[]))',
      project_column);
  end if;

  readable := tenant || format(' and (select app.has_scope(%L))', area || ':read');
  writable := tenant || format(' and (select app.has_scope(%L))', area || ':write');
  if read_extra is not null then
    readable := readable || ' and (' || read_extra || ')';
  end if;
  if write_extra is not null then
    writable := writable || ' and (' || write_extra || ')';
  end if;

  execute format('create policy tenant_select on %s for select to tenant_api using (%s)', tbl, readable);
  execute format('create policy tenant_insert on %s for insert to tenant_api with check (%s)', tbl, writable);
  execute format('create policy tenant_update on %s for update to tenant_api using (%s and %s) with check (%s)',
                 tbl, readable, writable, writable);
  execute format('create policy tenant_delete on %s for delete to tenant_api using (%s and %s)',
                 tbl, readable, writable);

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
