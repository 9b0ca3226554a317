-- audit_seal: each organization's audit trail, sealed in blocks (like CloudTrail's
-- digest files). Block n holds the ids and SHA-256 hashes of the next events in
-- (txid, id) order, and digest_n = sha256(digest_{n-1} || hash_1 || ... || hash_k); the
-- first block chains to app.audit_genesis(org). A purge leaves a 'purge' record in the
-- same chain naming the last block it emptied. Readable with audit:read; written only
-- by app.audit_seal and app.audit_purge (tenant_audit); never changed by anyone.
-- The seals cover the whole organization's trail, which a project-restricted credential
-- cannot read (token_audit_log, token_usage): it reads no seal either, so
-- /v1/audit/verify has nothing to check for it, and never reports a false "tampered".
call app.tenant_table('public.audit_seal', area => 'audit', api_grants => 'select',
                      read_extra => '(select app.unrestricted())');
drop trigger if exists audit on public.audit_seal;

create policy sealer_read on public.audit_seal for select to tenant_audit using (true);
create policy sealer_write on public.audit_seal for insert to tenant_audit with check (true);
grant select, insert on public.audit_seal to tenant_audit;

-- The unified timeline (created by revision 0008; security_invoker, so RLS of the
-- underlying tables applies to whoever reads it).
revoke all on public.audit_event from public;
grant select on public.audit_event to tenant_api, tenant_audit;

create or replace function app.audit_genesis(org uuid) returns bytea
  language sql immutable
  as $$ select sha256(convert_to('tenant-api audit trail ' || org::text, 'UTF8')) $$;

-- Where sealing resumes: after the last *block* (a newer purge record names an older key).
create or replace function app.audit_sealed_through(org uuid, out last_txid xid8, out last_id uuid)
  language sql stable
  set search_path = pg_catalog, pg_temp
  as $$
    select coalesce((select s.last_txid from public.audit_seal s
                      where s.organization_id = org and s.kind = 'block' order by s.seq desc limit 1), '0'::xid8),
           coalesce((select s.last_id from public.audit_seal s
                      where s.organization_id = org and s.kind = 'block' order by s.seq desc limit 1),
                    '00000000-0000-0000-0000-000000000000'::uuid)
  $$;

-- The organizations with final events not sealed yet (the seal command's work list).
create or replace function app.audit_seal_candidates() returns setof uuid
  language sql stable
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
    select o.id from public.organization o, app.audit_sealed_through(o.id) h
     where exists (select from public.audit_event e
                    where e.organization_id = o.id
                      and e.txid < pg_snapshot_xmin(pg_current_snapshot())
                      and (e.txid, e.id) > (h.last_txid, h.last_id))
     order by o.id
  $$;

-- Seal every final, not yet sealed event of one organization. "Final": written by a
-- transaction older than every transaction still running, so no event can later appear
-- inside a sealed range except out of band. Runs in the background (the `tenant-api
-- audit seal` command, the scheduler), one organization per call so that each call is a
-- short transaction holding one advisory lock; that lock only keeps two sealers apart
-- (a busy organization is skipped: blocks = -1), never a request.
create or replace function app.audit_seal(p_org uuid, p_block_size integer default 1000)
  returns table (blocks integer, events bigint)
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  horizon xid8 := pg_snapshot_xmin(pg_current_snapshot());
  head record;
  blk record;
  seq_next bigint;
  chain bytea;
  after_txid xid8;
  after_id uuid;
  new_digest bytea;
begin
  blocks := 0;
  events := 0;
  if not pg_try_advisory_xact_lock(1096107348, hashtext(p_org::text)) then
    blocks := -1;
    return next;
    return;
  end if;
  select s.seq, s.digest into head from public.audit_seal s
   where s.organization_id = p_org order by s.seq desc limit 1;
  select h.last_txid, h.last_id into after_txid, after_id from app.audit_sealed_through(p_org) h;
  seq_next := coalesce(head.seq, 0) + 1;
  chain := coalesce(head.digest, app.audit_genesis(p_org));
  loop
    select count(*)::integer as n,
           array_agg(x.id order by x.txid, x.id) as ids,
           array_agg(x.h order by x.txid, x.id) as hashes,
           string_agg(x.h, ''::bytea order by x.txid, x.id) as joined,
           min(x.occurred_at) as first_at,
           max(x.occurred_at) as last_at,
           (array_agg(x.txid order by x.txid desc, x.id desc))[1] as end_txid,
           (array_agg(x.id order by x.txid desc, x.id desc))[1] as end_id
      into blk
      from (select e.txid, e.id, e.occurred_at, sha256(convert_to(e.content::text, 'UTF8')) as h
              from public.audit_event e
             where e.organization_id = p_org
               and e.txid < horizon
               and (e.txid, e.id) > (after_txid, after_id)
             order by e.txid, e.id
             limit p_block_size) x;
    exit when blk.n = 0;
    new_digest := sha256(chain || blk.joined);
    insert into public.audit_seal
      (organization_id, seq, kind, last_txid, last_id, event_count, event_ids, event_hashes,
       first_occurred_at, last_occurred_at, previous_digest, digest)
    values (p_org, seq_next, 'block', blk.end_txid, blk.end_id, blk.n, blk.ids, blk.hashes,
            blk.first_at, blk.last_at, chain, new_digest);
    chain := new_digest;
    seq_next := seq_next + 1;
    after_txid := blk.end_txid;
    after_id := blk.end_id;
    blocks := blocks + 1;
    events := events + blk.n;
  end loop;
  return next;
end
$$;

-- The organizations with sealed blocks older than p_before not yet purged.
create or replace function app.audit_purge_candidates(p_before timestamptz) returns setof uuid
  language sql stable
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
    select distinct s.organization_id from public.audit_seal s
     where s.kind = 'block' and s.last_occurred_at < p_before
       and s.seq > coalesce((select max(p.purged_through_seq) from public.audit_seal p
                              where p.organization_id = s.organization_id and p.kind = 'purge'), 0)
  $$;

-- Retention, one organization per call: delete the events of its oldest sealed blocks
-- whose every event is older than p_before, and append a 'purge' record to the chain
-- naming the last emptied block:
--   digest = sha256(previous || 'purge' || int8(purged_through_seq) || that block's digest).
-- Verify then expects those blocks' ranges to be empty and still checks the chain. Only
-- sealed events are ever purged. With p_org null: the unattributed security events
-- older than p_before (they have no chain). The owner (`tenant-api audit purge`) may call
-- it; the API role may not.
create or replace function app.audit_purge(p_before timestamptz, p_org uuid)
  returns table (purged_blocks integer, purged_events bigint)
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  done_through bigint;
  too_new bigint;
  upto record;
  head record;
  from_at timestamptz;
begin
  purged_blocks := 0;
  purged_events := 0;
  if p_org is null then
    delete from public.unattributed_security_event e where e.occurred_at < p_before;
    get diagnostics purged_events = row_count;
    return next;
    return;
  end if;
  perform pg_advisory_xact_lock(1096107348, hashtext(p_org::text));
  select coalesce(max(s.purged_through_seq), 0) into done_through from public.audit_seal s
   where s.organization_id = p_org and s.kind = 'purge';
  -- the oldest unpurged blocks, up to (not including) the first one too new
  select min(s.seq) into too_new from public.audit_seal s
   where s.organization_id = p_org and s.kind = 'block' and s.seq > done_through
     and s.last_occurred_at >= p_before;
  select s.seq, s.last_txid, s.last_id, s.digest into upto from public.audit_seal s
   where s.organization_id = p_org and s.kind = 'block' and s.seq > done_through
     and s.seq < coalesce(too_new, 9223372036854775807)
   order by s.seq desc limit 1;
  if upto.seq is null then
    return next;
    return;
  end if;

  select count(*)::integer, sum(s.event_count), min(s.first_occurred_at)
    into purged_blocks, purged_events, from_at
    from public.audit_seal s
   where s.organization_id = p_org and s.kind = 'block' and s.seq > done_through and s.seq <= upto.seq;
  delete from public.token_audit_log t
   where t.organization_id = p_org and (t.txid, t.id) <= (upto.last_txid, upto.last_id);
  delete from public.token_usage u
   where u.organization_id = p_org and (u.txid, u.id) <= (upto.last_txid, upto.last_id);

  select s.seq, s.digest into head from public.audit_seal s
   where s.organization_id = p_org order by s.seq desc limit 1;
  insert into public.audit_seal
    (organization_id, seq, kind, last_txid, last_id, event_count, first_occurred_at,
     last_occurred_at, purged_through_seq, previous_digest, digest)
  values (p_org, head.seq + 1, 'purge', upto.last_txid, upto.last_id, purged_events, from_at,
          p_before, upto.seq, head.digest,
          sha256(head.digest || convert_to('purge', 'UTF8') || int8send(upto.seq) || upto.digest));
  return next;
end
$$;

grant create on schema app to tenant_audit;
alter function app.audit_seal_candidates() owner to tenant_audit;
alter function app.audit_seal(uuid, integer) owner to tenant_audit;
alter function app.audit_purge_candidates(timestamptz) owner to tenant_audit;
alter function app.audit_purge(timestamptz, uuid) owner to tenant_audit;
revoke create on schema app from tenant_audit;
revoke all on function app.audit_seal_candidates(), app.audit_seal(uuid, integer) from public, tenant_api;
revoke all on function app.audit_purge_candidates(timestamptz), app.audit_purge(timestamptz, uuid)
  from public, tenant_api;
-- Sealing only adds seals over what is already final: the sealer's duty (the scheduler
-- process's login, tenant_worker) and the owner (tenant-api audit seal). Purging
-- deletes: the owner only.
grant execute on function app.audit_seal_candidates(), app.audit_seal(uuid, integer)
  to tenant_duty_sealer, tenant_owner;
grant execute on function app.audit_purge_candidates(timestamptz), app.audit_purge(timestamptz, uuid)
  to tenant_owner;
