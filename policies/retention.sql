-- Retention: what is finished is purged after a while, by the scheduler process
-- (tenant_api.ops.retention), in bounded batches, through one narrow definer function
-- per kind. Each can only delete rows of its kind that are finished and older than the
-- cutoff it is given, never younger than a day whatever the caller asks, at most 10,000
-- per call, and returns a count, nothing else. (No row locks: the functions may read
-- and delete, never update, and two schedulers deleting the same row just find it gone.)
-- Deletions of tenant rows are audited in their organization with request id
-- 'retention' (no token, no user).
--
-- Another kind adds its function here and its entry in tenant_api.ops.retention.PURGES
-- (the delete policies it needs go in its table's own file: app.tenant_table replaces a
-- table's policies, and the table files run after this one).

-- Finished jobs, their logs with them (job_log cascades).
create policy retention_select on public.job for select to tenant_auth
  using (status in ('succeeded', 'failed', 'cancelled'));
create policy retention_delete on public.job for delete to tenant_auth
  using (status in ('succeeded', 'failed', 'cancelled') and finished_at < now() - interval '1 day');
grant select (organization_id, id, status, finished_at), delete on public.job to tenant_auth;

-- The loop the purges below share: up to p_limit rows of p_table whose p_finished holds
-- (a condition on the alias t) and whose p_time column is older than the cutoff (never
-- younger than a day), oldest first, deleted organization by organization, each in that
-- organization's context (its audit trigger attributes the deletion to 'retention');
-- returns the rows deleted. Not a definer function and executable by no one else: it runs
-- inside the purge functions, as their owner (tenant_auth); its table, condition and
-- column come from them, never from a caller.
create or replace function auth.purge_in_context(p_table regclass, p_finished text, p_time text,
                                                 p_before timestamptz, p_limit integer) returns integer
  language plpgsql
  set search_path = pg_catalog, pg_temp
  as $$
declare
  r record;
  n integer := 0;
  deleted integer;
  saved text[];
  entered text[];
begin
  for r in execute format(
      'select b.organization_id, array_agg(b.id) as ids from ('
      '  select t.organization_id, t.id from %s t'
      '   where (%s) and t.%I < least($1, now() - interval ''1 day'')'
      '   order by t.organization_id, t.%I'
      '   limit least(greatest($2, 1), 10000)) b'
      ' group by b.organization_id order by b.organization_id',
      p_table, p_finished, p_time, p_time) using p_before, p_limit
  loop
    entered := auth.enter_context(r.organization_id, null, null, 'retention');
    saved := coalesce(saved, entered);  -- the caller's, from the first switch
    execute format('delete from %s t where t.organization_id = $1 and t.id = any($2)', p_table)
      using r.organization_id, r.ids;
    get diagnostics deleted = row_count;
    n := n + deleted;
  end loop;
  if saved is not null then
    perform auth.leave_context(saved);
  end if;
  return n;
end
$$;

create or replace function auth.purge_finished_jobs(p_before timestamptz, p_limit integer) returns integer
  language sql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
    select auth.purge_in_context('public.job', 't.status in (''succeeded'', ''failed'', ''cancelled'')',
                                 'finished_at', p_before, p_limit);
$$;

-- Closed robot connections (the reaper's policies already let tenant_auth see them).
create policy retention_delete on public.desktop_connection for delete to tenant_auth
  using (status = 'disconnected' and disconnected_at < now() - interval '1 day');
grant delete on public.desktop_connection to tenant_auth;

create or replace function auth.purge_closed_desktop_connections(p_before timestamptz, p_limit integer) returns integer
  language sql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
    select auth.purge_in_context('public.desktop_connection', 't.status = ''disconnected''', 'disconnected_at', p_before, p_limit);
$$;

-- Delivered invite mails (recipient, subject, body): the invite itself stays; its
-- delivery_status reads null once its mails are gone.
create policy retention_delete on public.invite_outbox for delete to tenant_auth
  using (status = 'sent' and sent_at < now() - interval '1 day');
grant delete on public.invite_outbox to tenant_auth;

create or replace function auth.purge_sent_invite_mails(p_before timestamptz, p_limit integer) returns integer
  language sql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
    select auth.purge_in_context('public.invite_outbox', 't.status = ''sent''', 'sent_at', p_before, p_limit);
$$;

-- Settled webhook deliveries (delivered, failed, skipped) whose last change (a send, a
-- redelivery: updated_at) is older than the cutoff, their attempts with them (cascade);
-- then the events older than the cutoff that no delivery refers to any more (theirs were
-- purged, or their webhook was deleted). A pending delivery, e.g. of a paused webhook,
-- and its event stay. Not audited: none of the three tables is (the worker's
-- bookkeeping). The delete policies are in policies/webhook_delivery.sql and
-- webhook_event.sql. Returns deliveries plus events removed (each at most p_limit).
create or replace function auth.purge_webhook_deliveries(p_before timestamptz, p_limit integer) returns integer
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  cutoff timestamptz := least(p_before, now() - interval '1 day');
  batch integer := least(greatest(p_limit, 1), 10000);
  deliveries integer;
  events integer;
begin
  delete from public.webhook_delivery d
   using (select x.organization_id, x.id from public.webhook_delivery x
           where x.status in ('delivered', 'failed', 'skipped') and x.updated_at < cutoff
           order by x.organization_id, x.updated_at
           limit batch) doomed
   where d.organization_id = doomed.organization_id and d.id = doomed.id;
  get diagnostics deliveries = row_count;
  delete from public.webhook_event e
   using (select x.organization_id, x.id from public.webhook_event x
           where x.occurred_at < cutoff
             and not exists (select from public.webhook_delivery d
                              where d.organization_id = x.organization_id and d.event_id = x.id)
           order by x.organization_id, x.occurred_at
           limit batch) doomed
   where e.organization_id = doomed.organization_id and e.id = doomed.id;
  get diagnostics events = row_count;
  return deliveries + events;
end
$$;

grant create on schema auth to tenant_auth;
alter function auth.purge_in_context(regclass, text, text, timestamptz, integer) owner to tenant_auth;
alter function auth.purge_finished_jobs(timestamptz, integer) owner to tenant_auth;
alter function auth.purge_closed_desktop_connections(timestamptz, integer) owner to tenant_auth;
alter function auth.purge_sent_invite_mails(timestamptz, integer) owner to tenant_auth;
alter function auth.purge_webhook_deliveries(timestamptz, integer) owner to tenant_auth;
revoke create on schema auth from tenant_auth;
revoke all on function auth.purge_in_context(regclass, text, text, timestamptz, integer) from public;
revoke all on function auth.purge_finished_jobs(timestamptz, integer),
                       auth.purge_closed_desktop_connections(timestamptz, integer),
                       auth.purge_sent_invite_mails(timestamptz, integer),
                       auth.purge_webhook_deliveries(timestamptz, integer) from public, tenant_api;
-- The retention duty's alone (the scheduler process: tenant_worker).
grant execute on function auth.purge_finished_jobs(timestamptz, integer),
                          auth.purge_closed_desktop_connections(timestamptz, integer),
                          auth.purge_sent_invite_mails(timestamptz, integer),
                          auth.purge_webhook_deliveries(timestamptz, integer) to tenant_duty_retention;

-- Unattributed security events (no organization, no tenant reads them): owned by
-- tenant_audit like the rest of the audit machinery, whose purge policy they already
-- have. Not audited: they are audit data themselves.
create or replace function app.purge_security_events(p_before timestamptz, p_limit integer) returns integer
  language sql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
    with doomed as (
      select e.id from public.unattributed_security_event e
       where e.occurred_at < least(p_before, now() - interval '1 day')
       order by e.occurred_at
       limit least(greatest(p_limit, 1), 10000)
      ), gone as (
      delete from public.unattributed_security_event e using doomed where e.id = doomed.id returning 1
    )
    select count(*)::integer from gone
  $$;

grant create on schema app to tenant_audit;
alter function app.purge_security_events(timestamptz, integer) owner to tenant_audit;
revoke create on schema app from tenant_audit;
revoke all on function app.purge_security_events(timestamptz, integer) from public, tenant_api;
grant execute on function app.purge_security_events(timestamptz, integer) to tenant_duty_retention;
