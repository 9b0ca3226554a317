-- webhook: an organization's HTTP endpoint for events (tenant_api.webhooks). Managed AND
-- read with org:write, by credentials not restricted to projects: webhook URLs often
-- carry secrets of their own (a chat service's incoming-webhook URL is one), so members
-- and auditors (org:read) do not see them. The url is kept out of the audit trail, which
-- records its url_origin (scheme, host, port) instead: an auditor still sees where
-- events go. The signing secret is not stored at all: it is HMAC(server key,
-- organization, id, nonce), and the nonces are neither readable by the API role nor
-- audited (a rotation shows as "[redacted]").
--
-- Deliveries carry what the webhook's owner_token_id can read when they are made. A
-- credential may make a webhook its own, never another token's (no borrowing a wider
-- credential's view): the restrictive policy and the trigger below, for every path.
call app.tenant_table('public.webhook', area => 'org',
  read_extra => '(select app.has_scope(''org:write'')) and (select app.unrestricted())',
  write_extra => '(select app.unrestricted())',
  secret_columns => '{url,secret_nonce,previous_secret_nonce}',
  api_grants => 'select (organization_id, id, url, url_origin, description, event_types, project_ids, enabled,'
                ' owner_token_id, paused_reason, paused_at, previous_secret_expires_at, secret_rotated_at,'
                ' created_at, updated_at),'
                ' insert,'
                ' update (url, url_origin, description, event_types, project_ids, enabled, owner_token_id,'
                ' paused_reason, paused_at, secret_nonce, previous_secret_expires_at, secret_rotated_at),'
                ' delete');

create policy own_owner on public.webhook as restrictive for insert to tenant_api
  with check (owner_token_id = (select app.current_token_id()));

create or replace function app.guard_webhook() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
  as $$
begin
  if new.owner_token_id is distinct from old.owner_token_id and current_user = 'tenant_api'
     and new.owner_token_id is distinct from app.current_token_id() then
    raise exception 'a webhook can be made the credential''s own, not another token''s'
      using errcode = '42501';
  end if;
  -- A rotation (a new nonce) keeps the current secret valid as the previous one until
  -- previous_secret_expires_at, if the rotation set one: the API role never reads nonces.
  if new.secret_nonce is distinct from old.secret_nonce then
    if new.previous_secret_expires_at > now() then
      new.previous_secret_nonce := old.secret_nonce;
    else
      new.previous_secret_nonce := null;
      new.previous_secret_expires_at := null;
    end if;
  end if;
  return new;
end
$$;

drop trigger if exists guard_webhook on public.webhook;
create trigger guard_webhook before update on public.webhook
  for each row execute function app.guard_webhook();

-- The outbox trigger (policies/webhook_event.sql) finds an organization's subscribed
-- webhooks whoever made the change; the delivery worker's functions
-- (policies/webhook_delivery.sql) read the url and nonces and pause a webhook whose
-- credential no longer may own it. All of them run as tenant_auth.
create policy worker_read on public.webhook for select to tenant_auth using (true);
create policy worker_pause on public.webhook for update to tenant_auth
  using (true) with check (organization_id = (select app.current_organization_id()));
grant select, update (paused_reason, paused_at) on public.webhook to tenant_auth;
