-- token_audit_log: written only by app.audit_row() (as tenant_audit), read with
-- audit:read. tenant_api gets SELECT alone: the trail is append-only for the API.
-- The log holds every project's rows (names, changes): like the member list it is
-- organization-wide data, so a project-restricted credential reads none of it.
call app.tenant_table('public.token_audit_log', area => 'audit', api_grants => 'select',
                      read_extra => '(select app.unrestricted())');

-- The log does not audit itself.
drop trigger if exists audit on public.token_audit_log;

create policy audit_writer on public.token_audit_log for insert to tenant_audit with check (true);
grant insert on public.token_audit_log to tenant_audit;
