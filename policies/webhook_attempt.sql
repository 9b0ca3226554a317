-- webhook_attempt: the delivery log, one row per attempt to send a delivery (status code,
-- duration, error, the first bytes of the response), written by the delivery worker
-- (auth.finish_webhook_delivery) only; the API reads it with org:write, like webhooks.
-- Not audited (tests/security/test_catalog.py, NOT_AUDITED): a log written by the machinery.
call app.tenant_table('public.webhook_attempt', area => 'org',
  read_extra => '(select app.has_scope(''org:write'')) and (select app.unrestricted())',
  api_grants => 'select');
drop trigger if exists audit on public.webhook_attempt;

create policy worker_insert on public.webhook_attempt for insert to tenant_auth with check (true);
grant insert on public.webhook_attempt to tenant_auth;
