-- webhook_event: the outbox. A trigger on each source table below writes the event in
-- the SAME transaction as the change it describes: a rolled-back change never produces
-- one, a committed change always has one. An event is written only when an enabled
-- webhook of the organization subscribes to it, together with one webhook_delivery per
-- such webhook, which the delivery worker then sends (tenant_api.webhooks.delivery).
--
-- Each event keeps a snapshot of the changed row: the columns listed per source below,
-- never a secret one (token and claim hashes, nonces). Who may receive it is decided at
-- delivery time, by RLS: the worker reads the event as the webhook's owning credential,
-- which sees it only with the :read scope of the event's area and inside its project
-- restriction (an event with no project, e.g. a token's, needs an unrestricted one).
--
-- Not audited (tests/security/test_catalog.py, NOT_AUDITED): every event restates a change that
-- the audit trail records on its own table. The API role only reads events.
call app.tenant_table('public.webhook_event', area => 'org', project_column => 'project_id',
  read_extra => 'app.has_scope(area || '':read'')',
  api_grants => 'select');
drop trigger if exists audit on public.webhook_event;

-- The delivery worker (tenant_duty_webhooks, in the scheduler process's login) reads an
-- event as the webhook's owning credential (auth.webhook_delivery_context sets that
-- credential's unrestricted context, narrowed): exactly the API role's read policy.
do $$
begin
  execute format('create policy worker_read on public.webhook_event for select to tenant_duty_webhooks'
                 ' using (%s and (app.has_scope(area || '':read'')))',
                 app.context_check('organization_id', 'org:read', false));
end
$$;
grant select on public.webhook_event to tenant_duty_webhooks;
grant select on app.request_context to tenant_duty_webhooks;  -- (app.has_scope reads it)

create policy outbox_insert on public.webhook_event for insert to tenant_auth with check (true);
-- (the delivery worker's auth.webhook_delivery_context reads an event's area)
create policy worker_area on public.webhook_event for select to tenant_auth using (true);
grant insert, select (organization_id, id, area) on public.webhook_event to tenant_auth;
-- Retention (auth.purge_webhook_deliveries, policies/retention.sql): events a day old at
-- least; the function removes only those no delivery refers to any more.
create policy retention_delete on public.webhook_event for delete to tenant_auth
  using (occurred_at < now() - interval '1 day');
grant select (occurred_at), delete on public.webhook_event to tenant_auth;
grant usage on sequence public.webhook_event_seq to tenant_auth;

-- Does a webhook (its event_types and project filter) want an event? Types are exact
-- ("job.succeeded"), a family ("job.*") or everything ("*"); a webhook with a project
-- filter gets only events of those projects (none without a project).
create or replace function app.webhook_matches(p_types text[], p_projects uuid[], p_type text, p_project uuid)
  returns boolean
  language sql immutable parallel safe
  as $$
    select (p_projects is null or p_project = any (p_projects))
       and exists (select from unnest(p_types) t
                    where t = '*' or t = p_type or (right(t, 2) = '.*' and starts_with(p_type, left(t, -1))))
  $$;

-- The outbox trigger. Arguments (per source, below):
--   TG_ARGV[0]  entity, the event type's prefix ("job")
--   TG_ARGV[1]  the scope area a receiver needs (":read")
--   TG_ARGV[2]  what makes an event: 'status' (<entity>.<status> on insert and on a status
--               change), 'created' (<entity>.created on insert), 'invite' (accepted,
--               declined), 'token' (API tokens: created, revoked, rotated)
--   TG_ARGV[3]  the columns copied into the event's data
--   TG_ARGV[4]  the column whose value orders deliveries (the row's id; a message's
--               conversation_id, so a conversation's messages arrive in order)
-- SECURITY DEFINER (tenant_auth): the one making the change may not see the
-- organization's webhooks (a member posting a message has no org:write); the function
-- only ever writes the outbox of the changed row's own organization.
create or replace function app.webhook_outbox() returns trigger
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  entity   text   := TG_ARGV[0];
  area     text   := TG_ARGV[1];
  mode     text   := TG_ARGV[2];
  cols     text[] := TG_ARGV[3]::text[];
  order_by text   := TG_ARGV[4];
  n        jsonb  := to_jsonb(new);
  o        jsonb;
  etype    text;
  prev     jsonb;
  org      uuid   := (n ->> 'organization_id')::uuid;
  project  uuid   := (n ->> 'project_id')::uuid;
  ev       uuid;
  ev_seq   bigint;
begin
  if TG_OP = 'UPDATE' then
    o := to_jsonb(old);
  end if;
  if mode = 'status' then
    if TG_OP = 'INSERT' or (o ->> 'status') is distinct from (n ->> 'status') then
      etype := entity || '.' || (n ->> 'status');
      if TG_OP = 'UPDATE' then
        prev := jsonb_build_object('status', o ->> 'status');
      end if;
    end if;
  elsif mode = 'created' then
    if TG_OP = 'INSERT' then
      etype := entity || '.created';
    end if;
  elsif mode = 'invite' then
    if TG_OP = 'UPDATE' and o ->> 'accepted_at' is null and n ->> 'accepted_at' is not null then
      etype := 'invite.accepted';
    elsif TG_OP = 'UPDATE' and o ->> 'declined_at' is null and n ->> 'declined_at' is not null then
      etype := 'invite.declined';
    end if;
  elsif mode = 'token' and n ->> 'kind' = 'api' then
    if TG_OP = 'INSERT' then
      etype := 'token.created';
    elsif o ->> 'revoked_at' is null and n ->> 'revoked_at' is not null then
      etype := 'token.revoked';
    elsif (o ->> 'token_hash') is distinct from (n ->> 'token_hash') then
      etype := 'token.rotated';
    end if;
  end if;
  if etype is null or not exists (
       select from public.webhook w
        where w.organization_id = org and w.enabled and app.webhook_matches(w.event_types, w.project_ids, etype, project))
  then
    return null;
  end if;

  ev := uuidv7();
  ev_seq := nextval('public.webhook_event_seq');
  insert into public.webhook_event
    (organization_id, id, seq, type, area, project_id, object_id, ordering_key, actor_token_id, data, previous)
  values (org, ev, ev_seq, etype, area, project, (n ->> 'id')::uuid, (n ->> order_by)::uuid, app.current_token_id(),
          (select jsonb_object_agg(e.key, e.value) from jsonb_each(n) e where e.key = any (cols)), prev);
  insert into public.webhook_delivery (organization_id, id, webhook_id, event_id, event_type, event_seq, ordering_key)
  select org, uuidv7(), w.id, ev, etype, ev_seq, (n ->> order_by)::uuid
    from public.webhook w
   where w.organization_id = org and w.enabled and app.webhook_matches(w.event_types, w.project_ids, etype, project);
  return null;
end
$$;

grant create on schema app to tenant_auth;
alter function app.webhook_outbox() owner to tenant_auth;
revoke create on schema app from tenant_auth;
revoke all on function app.webhook_outbox() from public;

-- The sources. Must match tenant_api.webhooks.events (tests/areas/test_webhooks.py compares).
drop trigger if exists webhook_outbox on public.task;
create trigger webhook_outbox after insert or update of status on public.task
  for each row execute function app.webhook_outbox(
    'task', 'tasks', 'status', '{id,project_id,agent_id,summary,details,steps,status,created_at,updated_at}', 'id');

drop trigger if exists webhook_outbox on public.job;
create trigger webhook_outbox after insert or update of status on public.job
  for each row execute function app.webhook_outbox(
    'job', 'tasks', 'status',
    '{id,project_id,schedule_id,target,labels,status,attempt,max_attempts,exit_code,error,scheduled_for,'
    'started_at,finished_at,claimed_by_token_id,created_at,updated_at}', 'id');

drop trigger if exists webhook_outbox on public.computer_use_task;
create trigger webhook_outbox after insert or update of status on public.computer_use_task
  for each row execute function app.webhook_outbox(
    'computer_use_task', 'tasks', 'status',
    '{id,project_id,instruction,desktop_vm_id,status,result,attempt,max_attempts,exit_code,error,'
    'started_at,finished_at,claimed_by_token_id,created_at,updated_at}', 'id');

drop trigger if exists webhook_outbox on public.robot_macro_execution;
create trigger webhook_outbox after insert or update of status on public.robot_macro_execution
  for each row execute function app.webhook_outbox(
    'robot_macro_execution', 'desktops', 'status',
    '{id,project_id,macro_id,vm_id,status,output,attempt,max_attempts,exit_code,error,'
    'started_at,finished_at,duration_ms,claimed_by_token_id,created_at,updated_at}', 'id');

drop trigger if exists webhook_outbox on public.conversation_message;
create trigger webhook_outbox after insert on public.conversation_message
  for each row execute function app.webhook_outbox(
    'conversation_message', 'conversations', 'created',
    '{id,project_id,conversation_id,seq,sender_type,sender_id,body,created_at}', 'conversation_id');

drop trigger if exists webhook_outbox on public.project_invite;
create trigger webhook_outbox after update of accepted_at, declined_at on public.project_invite
  for each row execute function app.webhook_outbox(
    'invite', 'members', 'invite',
    '{id,project_id,email,role,accepted_at,accepted_by_user_id,declined_at}', 'id');

drop trigger if exists webhook_outbox on public.platform_token;
create trigger webhook_outbox after insert or update of revoked_at, token_hash on public.platform_token
  for each row execute function app.webhook_outbox(
    'token', 'tokens', 'token',
    '{id,user_id,name,prefix,scopes,project_ids,expires_at,revoked_at,created_at,created_by_token_id}', 'id');
