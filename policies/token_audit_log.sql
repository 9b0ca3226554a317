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

-- The sealer reads every organization's events; the purge command (app.audit_purge)
-- deletes sealed ones older than the retention window. Nothing else ever deletes.
create policy audit_sealer on public.token_audit_log for select to tenant_audit using (true);
create policy audit_purger on public.token_audit_log for delete to tenant_audit using (true);
grant select, delete on public.token_audit_log to tenant_audit;
