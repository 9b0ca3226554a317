-- idempotency_key: the first response to a POST sent with an Idempotency-Key, kept 24
-- hours for the credential that sent it (tenant_api.idempotency). Every credential reads
-- and writes its own keys only, whatever its scopes (a key is part of sending a request,
-- not a resource of some area): the tenant_* policies below (area tokens) add nothing to
-- the own_* ones, they are there because every tenant table is built the same way.
--
-- Nothing here is readable as plain text: the key is stored as an HMAC under a server
-- key, the request as a hash, the response encrypted under a key derived from the
-- Idempotency-Key itself, which the database never sees.
--
-- Not audited (see tests/security/test_catalog.py, NOT_AUDITED): a row restates a request that
-- the audit trail already holds twice, as its usage record and as the change it made.
call app.tenant_table('public.idempotency_key', area => 'tokens',
  read_extra => 'token_id = (select app.current_token_id())',
  write_extra => 'token_id = (select app.current_token_id())',
  secret_columns => '{key_hash,request_hash,response}',
  api_grants => 'select, insert, delete');
drop trigger if exists audit on public.idempotency_key;

create policy own_select on public.idempotency_key for select to tenant_api
  using (organization_id = (select app.current_organization_id()) and token_id = (select app.current_token_id()));
create policy own_insert on public.idempotency_key for insert to tenant_api
  with check (organization_id = (select app.current_organization_id())
              and token_id = (select app.current_token_id()));
create policy own_delete on public.idempotency_key for delete to tenant_api
  using (organization_id = (select app.current_organization_id()) and token_id = (select app.current_token_id()));

-- The scheduler process deletes expired keys of every organization, through this
-- function only (it can delete nothing that has not expired).
create or replace function auth.purge_idempotency_keys(p_limit integer)
  returns integer
  language sql
  volatile
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
    with gone as (
      delete from public.idempotency_key k
       where (k.organization_id, k.id) in (
               select x.organization_id, x.id from public.idempotency_key x
                where x.expires_at <= now()
                order by x.expires_at
                limit least(greatest(coalesce(p_limit, 1000), 1), 10000))
      returning 1)
    select count(*)::integer from gone
  $$;

create policy purge_select on public.idempotency_key for select to tenant_auth using (expires_at <= now());
create policy purge_delete on public.idempotency_key for delete to tenant_auth using (expires_at <= now());
grant select (organization_id, id, expires_at), delete on public.idempotency_key to tenant_auth;

grant create on schema auth to tenant_auth;
alter function auth.purge_idempotency_keys(integer) owner to tenant_auth;
revoke create on schema auth from tenant_auth;
revoke all on function auth.purge_idempotency_keys(integer) from public, tenant_api;
grant execute on function auth.purge_idempotency_keys(integer) to tenant_duty_idempotency;
