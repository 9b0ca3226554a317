-- The audit trail, written by the database in the same transaction as the change.
--
-- One trigger function for every tenant table (installed by app.tenant_table). It runs
-- as tenant_audit (SECURITY DEFINER), the only role allowed to insert into
-- token_audit_log; tenant_api can read it (audit:read) but never write, update or
-- delete it, so the trail is append-only for the API.
--
-- Trigger arguments, set per table by app.tenant_table:
--   TG_ARGV[0]  secret columns: never copied into the log; a change to one is recorded
--               as "[redacted]" so an auditor still sees that a secret was rotated.
--   TG_ARGV[1]  noise columns (e.g. last_used_at): ignored in diffs; an UPDATE that
--               changes nothing else leaves no audit row.
--   TG_ARGV[2]  the column holding the organization id (organization.id for the
--               organization table itself).

create or replace function app.audit_row() returns trigger
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  secret   text[] := TG_ARGV[0]::text[];
  noise    text[] := TG_ARGV[1]::text[];
  org_col  text   := TG_ARGV[2];
  old_full jsonb;
  new_full jsonb;
  changes  jsonb;
  col      text;
  row_data jsonb;
  ctx record;
begin
  if TG_OP <> 'INSERT' then old_full := to_jsonb(OLD); end if;
  if TG_OP <> 'DELETE' then new_full := to_jsonb(NEW); end if;

  if TG_OP = 'INSERT' then
    changes := new_full - secret;
  elsif TG_OP = 'DELETE' then
    changes := old_full - secret;
  else
    select coalesce(jsonb_object_agg(n.key, jsonb_build_object('old', old_full -> n.key, 'new', n.value)), '{}')
      into changes
      from jsonb_each(new_full - secret - noise) n
     where n.value is distinct from old_full -> n.key;
    foreach col in array secret loop
      if (new_full -> col) is distinct from (old_full -> col) then
        changes := changes || jsonb_build_object(col, '[redacted]');
      end if;
    end loop;
    -- updated_at alone does not count: the touch_updated_at trigger bumps it on every
    -- UPDATE, including one that changes only noise (begin_request's last_used_at).
    if changes - 'updated_at' = '{}'::jsonb then
      return null;  -- only noise changed: nothing an auditor needs
    end if;
  end if;

  row_data := coalesce(new_full, old_full);
  select c.token_id, c.user_id, c.request_id into ctx from app.request_context c;
  insert into public.token_audit_log
    (organization_id, token_id, user_id, request_id, table_name, row_id, action, changes)
  values (
    (row_data ->> org_col)::uuid,
    ctx.token_id,
    ctx.user_id,
    ctx.request_id,
    TG_TABLE_NAME,
    (row_data ->> 'id')::uuid,
    TG_OP,
    changes);
  return null;
end
$$;

-- Handing a function to a role needs that role to have CREATE on the schema, for the
-- moment of the ALTER only.
grant create on schema app to tenant_audit;
alter function app.audit_row() owner to tenant_audit;
revoke create on schema app from tenant_audit;
revoke all on function app.audit_row() from public;
