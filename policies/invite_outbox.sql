-- invite_outbox: invite mails waiting to be sent, written in the same transaction as
-- the invite (so an invite never exists without its mail, nor a mail without its
-- invite) and delivered by the mailer (tenant_api.invites.mailer).
--
-- The API role inserts rows and cancels them (status) on resend and revoke, with
-- members:write inside the project restriction; it never reads the nonce, which is also
-- kept out of the audit log. The mailer's bookkeeping (attempts, next attempt, last
-- error, and the updated_at they bump) is noise: a retry leaves no audit row, the
-- outcome (sent/failed/cancelled) does.
call app.tenant_table('public.invite_outbox', area => 'members', project_column => 'project_id',
  secret_columns => '{nonce}',
  noise_columns => '{attempts,next_attempt_at,last_error,updated_at}',
  api_grants => 'select (organization_id, id, kind, project_id, invite_id, user_id, recipient, subject, body, status,'
                ' attempts, next_attempt_at, last_error, sent_at, created_at, updated_at),'
                ' insert, update (status)');

-- The mailer works for every organization, with no request context: it claims and
-- settles rows only through the two functions below.
create policy auth_mailer_read on public.invite_outbox for select to tenant_auth using (true);
create policy auth_mailer_write on public.invite_outbox for update to tenant_auth using (true) with check (true);
grant select, update (status, attempts, next_attempt_at, last_error, sent_at) on public.invite_outbox to tenant_auth;
-- Verification mails are written by auth.signup and auth.issue_verification
-- (policies/verification.sql), in the organization the context names.
create policy auth_verify_mail on public.invite_outbox for insert to tenant_auth
  with check (kind = 'verify' and organization_id = (select app.current_organization_id()));
grant insert on public.invite_outbox to tenant_auth;

-- Claim up to p_limit due mails. Each claimed row gets attempts + 1 and a lease
-- (next_attempt_at = now() + p_lease): if the mailer dies while sending, the row is
-- due again when the lease ends, so a mail is sent at least once and never lost.
-- SKIP LOCKED lets several mailers (one per API worker) claim side by side. Mail for
-- an invite that can no longer be accepted is cancelled, not sent.
drop function if exists auth.claim_invite_mail(integer, interval);
create or replace function auth.claim_invite_mail(p_limit integer, p_lease interval)
  returns table (organization_id uuid, id uuid, invite_id uuid, recipient text, subject text, body text,
                 nonce bytea, token_hash bytea, attempts integer, kind text)
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
#variable_conflict use_column
declare
  saved text[];
begin
  saved := auth.enter_context(null, null, null, 'mailer');
  -- token_hash: the hash of the secret the mail must carry (an invite's mail secret, or
  -- the account's pending verification secret), so the mailer can check it re-derived
  -- the right one. A verification mail for an account verified (or released) meanwhile
  -- is cancelled like the mail of a closed invite.
  return query
    with due as (
      select o.organization_id as org, o.id as oid
        from public.invite_outbox o
       where o.status = 'pending' and o.next_attempt_at <= now()
       order by o.next_attempt_at
       limit p_limit
         for update skip locked
    ), state as (
      select d.org, d.oid,
             coalesce(case when o.kind = 'invite'
                           then i.accepted_at is null and i.declined_at is null and i.revoked_at is null
                                and i.expires_at > now()
                           else u.email_verified_at is null and u.verify_token_hash is not null end, false) as live,
             case when o.kind = 'invite' then i.mail_token_hash else u.verify_token_hash end as secret_hash
        from due d
        join public.invite_outbox o on o.organization_id = d.org and o.id = d.oid
        left join public.project_invite i on i.organization_id = o.organization_id and i.id = o.invite_id
        left join public.user_account u on u.id = o.user_id
    ), claimed as (
      update public.invite_outbox o
         set attempts = o.attempts + 1,
             next_attempt_at = now() + p_lease,
             status = case when s.live then 'pending' else 'cancelled' end
        from state s
       where o.organization_id = s.org and o.id = s.oid
      returning o.organization_id, o.id, o.invite_id, o.recipient, o.subject, o.body, o.nonce, s.secret_hash,
                o.attempts, o.status, o.kind
    )
    select c.organization_id, c.id, c.invite_id, c.recipient, c.subject, c.body, c.nonce, c.secret_hash,
           c.attempts, c.kind
      from claimed c
     where c.status = 'pending';
  perform auth.leave_context(saved);
end
$$;

-- Settle a claimed mail: p_error null = sent; else retry after p_retry_in, or (null)
-- give up ('failed': the invite itself stays, and can be resent). A row cancelled
-- meanwhile (resend, revoke) stays cancelled.
create or replace function auth.finish_invite_mail(p_org uuid, p_id uuid, p_error text, p_retry_in interval)
  returns void
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  saved text[];
begin
  saved := auth.enter_context(null, null, null, 'mailer');
  update public.invite_outbox o
     set status = case when p_error is null then 'sent' when p_retry_in is null then 'failed' else 'pending' end,
         sent_at = case when p_error is null then now() end,
         last_error = left(p_error, 1000),
         next_attempt_at = case when p_retry_in is null then o.next_attempt_at else now() + p_retry_in end
   where o.organization_id = p_org and o.id = p_id and o.status = 'pending';
  perform auth.leave_context(saved);
end
$$;

grant create on schema auth to tenant_auth;
alter function auth.claim_invite_mail(integer, interval) owner to tenant_auth;
alter function auth.finish_invite_mail(uuid, uuid, text, interval) owner to tenant_auth;
revoke create on schema auth from tenant_auth;
revoke all on function auth.claim_invite_mail(integer, interval), auth.finish_invite_mail(uuid, uuid, text, interval)
  from public, tenant_api;
-- The mailer's alone (the API process's background login, tenant_api_jobs): the queue
-- spans organizations, so the API role's login must not reach it.
grant execute on function auth.claim_invite_mail(integer, interval), auth.finish_invite_mail(uuid, uuid, text, interval)
  to tenant_duty_mailer;
