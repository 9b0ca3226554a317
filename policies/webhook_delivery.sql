-- webhook_delivery: one per event (webhook_event) and subscribed webhook, written by the
-- outbox trigger with the event; sent by the delivery worker (tenant_api.webhooks.delivery,
-- in the scheduler process). Read with org:write like webhooks; the API changes a
-- delivery only to send it again (redeliver). Not audited (tests/security/test_catalog.py,
-- NOT_AUDITED): the worker's bookkeeping restates events already audited as changes, and
-- a redelivery is a request, kept as that token's usage record.
call app.tenant_table('public.webhook_delivery', area => 'org',
  read_extra => '(select app.has_scope(''org:write'')) and (select app.unrestricted())',
  write_extra => '(select app.unrestricted())',
  api_grants => 'select, update (status, attempts, next_attempt_at, redelivered_at)');
drop trigger if exists audit on public.webhook_delivery;

-- The worker's three doors, all SECURITY DEFINER owned by tenant_auth, called as the API
-- role (the scheduler process) with no context of its own:
--
--   1. auth.claim_webhook_deliveries(limit, lease[, organization]): locks due deliveries
--      of enabled, unpaused webhooks (FOR UPDATE SKIP LOCKED: two workers never take the
--      same one), never one whose object has an earlier delivery still pending for that
--      webhook (ordering per object), counts the attempt and leases it (a worker that
--      dies mid-send leaves it due again when the lease ends). Returns what sending
--      needs: the url and the secret nonces (the secret is derived in Python).
--   2. auth.webhook_delivery_context(organization, delivery): becomes the webhook's
--      owning credential (auth.begin_request, so revocation, expiry, membership and the
--      current role count as on any request), narrowed to what reading the event needs
--      (org:read and the event's area's :read, each only if the owner has it), for the
--      worker to read the event under RLS. (The API role could call it for any delivery:
--      it then reads, as that owner, the organization's org:read data and that area.) A credential that is refused, or may no longer own
--      webhooks (org:write, unrestricted), pauses the webhook instead: 'paused', and no
--      context at all.
--   3. auth.finish_webhook_delivery(...): records the attempt and settles the delivery:
--      delivered, retried later, failed (gave up), skipped (the event is not visible to
--      the owning credential), or left pending untouched (paused).
create policy worker_select on public.webhook_delivery for select to tenant_auth using (true);
create policy worker_update on public.webhook_delivery for update to tenant_auth using (true) with check (true);
create policy outbox_insert on public.webhook_delivery for insert to tenant_auth with check (true);
grant select, insert,
      update (status, attempts, next_attempt_at, last_attempt_at, last_status_code, last_error, delivered_at)
  on public.webhook_delivery to tenant_auth;
-- Retention (auth.purge_webhook_deliveries, policies/retention.sql): settled deliveries
-- untouched for a day at least; their attempts go with them (the foreign key's cascade).
create policy retention_delete on public.webhook_delivery for delete to tenant_auth
  using (status in ('delivered', 'failed', 'skipped') and updated_at < now() - interval '1 day');
grant delete on public.webhook_delivery to tenant_auth;

create or replace function auth.claim_webhook_deliveries(p_limit integer, p_lease interval, p_org uuid default null)
  returns table (organization_id uuid, id uuid, webhook_id uuid, event_id uuid, attempts integer, url text,
                 secret_nonce bytea, previous_secret_nonce bytea)
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
#variable_conflict use_column
begin
  return query
    with due as (
      select d.organization_id as org, d.id as did
        from public.webhook_delivery d
        join public.webhook w on w.organization_id = d.organization_id and w.id = d.webhook_id
       where d.status = 'pending' and d.next_attempt_at <= now()
         and w.enabled and w.paused_at is null
         and (p_org is null or d.organization_id = p_org)
         and not exists (select from public.webhook_delivery p
                          where p.organization_id = d.organization_id and p.webhook_id = d.webhook_id
                            and p.ordering_key = d.ordering_key and p.status = 'pending'
                            and p.event_seq < d.event_seq)
       order by d.next_attempt_at, d.event_seq
       limit least(greatest(coalesce(p_limit, 20), 1), 1000)
         for update of d skip locked
    ), claimed as (
      update public.webhook_delivery d
         set attempts = d.attempts + 1, next_attempt_at = now() + greatest(p_lease, interval '5 seconds'),
             last_attempt_at = now()
        from due
       where d.organization_id = due.org and d.id = due.did
      returning d.organization_id, d.id, d.webhook_id, d.event_id, d.attempts
    )
    select c.organization_id, c.id, c.webhook_id, c.event_id, c.attempts, w.url, w.secret_nonce,
           case when w.previous_secret_expires_at > now() then w.previous_secret_nonce end
      from claimed c
      join public.webhook w on w.organization_id = c.organization_id and w.id = c.webhook_id;
end
$$;

create or replace function auth.webhook_delivery_context(p_org uuid, p_delivery uuid)
  returns text
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  d record;
  t record;
  r record;
  reason text;
  saved text[];
  narrowed bigint;
begin
  select w.id as webhook_id, w.owner_token_id, w.enabled, e.area into d
    from public.webhook_delivery x
    join public.webhook w on w.organization_id = x.organization_id and w.id = x.webhook_id
    join public.webhook_event e on e.organization_id = x.organization_id and e.id = x.event_id
   where x.organization_id = p_org and x.id = p_delivery;
  if not found or not d.enabled then
    return 'gone';
  end if;
  select pt.kind, pt.token_hash, pt.id, pt.organization_id into t
    from public.platform_token pt where pt.organization_id = p_org and pt.id = d.owner_token_id;
  select * into r from auth.begin_request(case when t.kind = 'api' then t.token_hash end,
                                          case when t.kind = 'session' then t.id end,
                                          case when t.kind = 'session' then t.organization_id end,
                                          'webhook:' || p_delivery::text);
  reason := case
    when r.status = 'not_member' then 'the owning credential''s user is no longer a member'
    when r.status <> 'ok' then 'the owning credential is ' || coalesce(r.status, 'unknown')
    when r.scope_mask & app.scope_bit('org:write') = 0 or r.project_ids is not null
      then 'the owning credential may no longer manage webhooks (org:write, not restricted to projects)'
  end;
  if reason is not null then
    perform set_config('backtrace_functions', '', true);  -- whatever begin_request set: none
    saved := auth.enter_context(p_org, null, null, 'webhook-worker');
    update public.webhook w set paused_reason = reason, paused_at = now()
     where w.organization_id = p_org and w.id = d.webhook_id and w.paused_at is null;
    perform auth.leave_context('{}'::text[]);  -- no context at all, not even the owner's
    return 'paused';
  end if;
  -- As the owner, with no more than reading the event needs (org:read and its area's
  -- :read, if the owner has them): the worker reads the event and nothing else. The
  -- owner is unrestricted (checked above), so the context is written as begin_request
  -- writes an unrestricted one (policies/context.sql), with the narrowed mask.
  narrowed := r.scope_mask & (app.scope_bit('org:read') | app.scope_bit(d.area || ':read'));
  perform set_config('backtrace_functions',
                     app.context_head(r.organization_id, narrowed, r.user_id, r.token_id, null)
                     || app.context_request_id('webhook:' || p_delivery::text)
                     || app.context_tail(r.organization_id, narrowed, false), true);
  return 'ok';
end
$$;

create or replace function auth.finish_webhook_delivery(p_org uuid, p_delivery uuid, p_outcome text,
                                                       p_status_code integer, p_error text, p_duration_ms integer,
                                                       p_retry_in interval, p_excerpt text)
  returns void
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  d record;
begin
  if p_outcome not in ('delivered', 'retry', 'failed', 'skipped', 'paused') then
    raise exception 'unknown outcome %', p_outcome using errcode = 'invalid_parameter_value';
  end if;
  select x.webhook_id, x.attempts into d from public.webhook_delivery x
   where x.organization_id = p_org and x.id = p_delivery and x.status = 'pending'
     for update;
  if not found then
    return;
  end if;
  if p_outcome = 'paused' then
    -- not an attempt: the webhook is paused until someone resumes it
    update public.webhook_delivery x set attempts = greatest(x.attempts - 1, 0), next_attempt_at = now()
     where x.organization_id = p_org and x.id = p_delivery;
    return;
  end if;
  insert into public.webhook_attempt
    (organization_id, webhook_id, delivery_id, attempt, outcome, started_at, duration_ms, status_code, error,
     response_excerpt)
  values (p_org, d.webhook_id, p_delivery, greatest(d.attempts, 1), p_outcome,
          now() - make_interval(secs => coalesce(p_duration_ms, 0) / 1000.0), p_duration_ms, p_status_code,
          left(p_error, 1000), left(p_excerpt, 1024));
  update public.webhook_delivery x
     set status = case p_outcome when 'retry' then 'pending' else p_outcome end,
         next_attempt_at = case when p_outcome = 'retry' then now() + coalesce(p_retry_in, interval '0')
                                else x.next_attempt_at end,
         last_status_code = p_status_code,
         last_error = left(p_error, 1000),
         delivered_at = case when p_outcome = 'delivered' then now() end
   where x.organization_id = p_org and x.id = p_delivery;
end
$$;

grant create on schema auth to tenant_auth;
alter function auth.claim_webhook_deliveries(integer, interval, uuid) owner to tenant_auth;
alter function auth.webhook_delivery_context(uuid, uuid) owner to tenant_auth;
alter function auth.finish_webhook_delivery(uuid, uuid, text, integer, text, integer, interval, text) owner to tenant_auth;
revoke create on schema auth from tenant_auth;
revoke all on function auth.claim_webhook_deliveries(integer, interval, uuid),
                       auth.webhook_delivery_context(uuid, uuid),
                       auth.finish_webhook_delivery(uuid, uuid, text, integer, text, integer, interval, text)
  from public, tenant_api;
grant execute on function auth.claim_webhook_deliveries(integer, interval, uuid),
                          auth.webhook_delivery_context(uuid, uuid),
                          auth.finish_webhook_delivery(uuid, uuid, text, integer, text, integer, interval, text)
  to tenant_duty_webhooks;
