-- audit_seal: each organization's audit trail, sealed in blocks (like CloudTrail's
-- digest files). Block n holds the ids and SHA-256 hashes of the next events in
-- (txid, id) order, and digest_n = sha256(digest_{n-1} || hash_1 || ... || hash_k); the
-- first block chains to app.audit_genesis(org). A purge leaves a 'purge' record in the
-- same chain naming the last block it emptied. Readable with audit:read; written only
-- by app.audit_seal and app.audit_purge (tenant_audit); never changed by anyone.
call app.tenant_table('public.audit_seal', area => 'audit', api_grants => 'select');
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

-- Seal every final, not yet sealed event of one organization (or all). "Final": written
-- by a transaction older than every transaction still running, so no event can later
-- appear inside a sealed range except out of band. Runs in the background (the
-- `tenant-api audit seal` command, the scheduler), never on a request's write path; the
-- per-organization advisory lock only serializes sealers (a busy organization is
-- skipped, the next run gets it).
create or replace function app.audit_seal(p_org uuid default null, p_block_size integer default 1000)
  returns table (org_id uuid, blocks integer, events bigint)
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  horizon xid8 := pg_snapshot_xmin(pg_current_snapshot());
  org uuid;
  head record;
  blk record;
  seq_next bigint;
  chain bytea;
  after_txid xid8;
  after_id uuid;
  new_digest bytea;
begin
  for org in select o.id from public.organization o where p_org is null or o.id = p_org order by o.id loop
    continue when not pg_try_advisory_xact_lock(1096107348, hashtext(org::text));
    select s.seq, s.digest into head from public.audit_seal s
     where s.organization_id = org order by s.seq desc limit 1;
    select s.last_txid, s.last_id into after_txid, after_id from public.audit_seal s
     where s.organization_id = org order by s.seq desc limit 1;
    seq_next := coalesce(head.seq, 0) + 1;
    chain := coalesce(head.digest, app.audit_genesis(org));
    after_txid := coalesce(after_txid, '0'::xid8);
    after_id := coalesce(after_id, '00000000-0000-0000-0000-000000000000'::uuid);
    org_id := org;
    blocks := 0;
    events := 0;
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
               where e.organization_id = org
                 and e.txid < horizon
                 and (e.txid, e.id) > (after_txid, after_id)
               order by e.txid, e.id
               limit p_block_size) x;
      exit when blk.n = 0;
      new_digest := sha256(chain || blk.joined);
      insert into public.audit_seal
        (organization_id, seq, kind, last_txid, last_id, event_count, event_ids, event_hashes,
         first_occurred_at, last_occurred_at, previous_digest, digest)
      values (org, seq_next, 'block', blk.end_txid, blk.end_id, blk.n, blk.ids, blk.hashes,
              blk.first_at, blk.last_at, chain, new_digest);
      chain := new_digest;
      seq_next := seq_next + 1;
      after_txid := blk.end_txid;
      after_id := blk.end_id;
      blocks := blocks + 1;
      events := events + blk.n;
    end loop;
    if blocks > 0 then
      return next;
    end if;
  end loop;
end
$$;

-- Retention: delete the events of the oldest sealed blocks whose every event is older
-- than p_before, and append a 'purge' record to the chain naming the last emptied block:
-- digest = sha256(previous || 'purge' || int8(purged_through_seq) || that block's digest).
-- Verify then expects those blocks' ranges to be empty and still checks the chain. Only
-- sealed events are ever purged; unattributed security events simply age out.
-- The owner (the `tenant-api audit purge` command) may call it; the API role may not.
create or replace function app.audit_purge(p_before timestamptz, p_org uuid default null)
  returns table (org_id uuid, purged_blocks integer, purged_events bigint)
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  org uuid;
  done_through bigint;
  too_new bigint;
  upto record;
  head record;
  from_at timestamptz;
begin
  for org in select o.id from public.organization o where p_org is null or o.id = p_org order by o.id loop
    perform pg_advisory_xact_lock(1096107348, hashtext(org::text));
    select coalesce(max(s.purged_through_seq), 0) into done_through from public.audit_seal s
     where s.organization_id = org and s.kind = 'purge';
    select min(s.seq) into too_new from public.audit_seal s
     where s.organization_id = org and s.kind = 'block' and s.seq > done_through
       and s.last_occurred_at >= p_before;
    select s.seq, s.last_txid, s.last_id, s.digest into upto from public.audit_seal s
     where s.organization_id = org and s.kind = 'block' and s.seq > done_through
       and s.seq < coalesce(too_new, 9223372036854775807)
     order by s.seq desc limit 1;
    continue when upto.seq is null;

    select count(*)::integer, sum(s.event_count), min(s.first_occurred_at)
      into purged_blocks, purged_events, from_at
      from public.audit_seal s
     where s.organization_id = org and s.kind = 'block' and s.seq > done_through and s.seq <= upto.seq;
    delete from public.token_audit_log t
     where t.organization_id = org and (t.txid, t.id) <= (upto.last_txid, upto.last_id);
    delete from public.token_usage u
     where u.organization_id = org and (u.txid, u.id) <= (upto.last_txid, upto.last_id);

    select s.seq, s.digest into head from public.audit_seal s
     where s.organization_id = org order by s.seq desc limit 1;
    insert into public.audit_seal
      (organization_id, seq, kind, last_txid, last_id, event_count, first_occurred_at,
       last_occurred_at, purged_through_seq, previous_digest, digest)
    values (org, head.seq + 1, 'purge', upto.last_txid, upto.last_id, purged_events, from_at,
            p_before, upto.seq, head.digest,
            sha256(head.digest || convert_to('purge', 'UTF8') || int8send(upto.seq) || upto.digest));
    org_id := org;
    return next;
  end loop;
  if p_org is null then
    delete from public.unattributed_security_event e where e.occurred_at < p_before;
  end if;
end
$$;

grant create on schema app to tenant_audit;
alter function app.audit_seal(uuid, integer) owner to tenant_audit;
alter function app.audit_purge(timestamptz, uuid) owner to tenant_audit;
revoke create on schema app from tenant_audit;
revoke all on function app.audit_seal(uuid, integer) from public;
revoke all on function app.audit_purge(timestamptz, uuid) from public, tenant_api;
-- Sealing only adds seals over what is already final: harmless, so the scheduler (as the
-- API role) may run it. Purging deletes: the owner only.
grant execute on function app.audit_seal(uuid, integer) to tenant_api, tenant_owner;
grant execute on function app.audit_purge(timestamptz, uuid) to tenant_owner;
