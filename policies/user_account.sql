-- user_account: the global identity, not a tenant table (no organization_id), but not
-- open either: the API role sees the current user and the members of the current
-- organization and of its projects (as far as it may read those membership lists:
-- the subqueries are filtered by their own tables' policies, so a project member sees
-- the members of their projects only), nobody else, so users of other organizations
-- cannot be enumerated. password_hash is not even granted: only
-- auth.login_lookup reads it.
alter table public.user_account enable row level security;
alter table public.user_account force row level security;

drop policy if exists visible_members on public.user_account;
drop policy if exists update_self on public.user_account;
drop policy if exists auth_lookup on public.user_account;
drop policy if exists auth_signup on public.user_account;

create policy visible_members on public.user_account for select to tenant_api
  using (
    id = (select app.current_user_id())
    or id in (select m.user_id from public.organization_membership m
               where m.organization_id = (select app.current_organization_id()))
    or id in (select pm.user_id from public.project_membership pm
               where pm.organization_id = (select app.current_organization_id()))
  );
create policy update_self on public.user_account for update to tenant_api
  using (id = (select app.current_user_id()))
  with check (id = (select app.current_user_id()));

revoke all on public.user_account from tenant_api;
grant select (id, email, display_name, kind, email_verified_at, email_hold_until, created_at, updated_at),
  update (display_name)
  on public.user_account to tenant_api;

create policy auth_lookup on public.user_account for select to tenant_auth using (true);
create policy auth_signup on public.user_account for insert to tenant_auth
  with check (id = (select app.current_user_id()));
grant select, insert on public.user_account to tenant_auth;

drop trigger if exists touch_updated_at on public.user_account;
create trigger touch_updated_at before update on public.user_account
  for each row execute function app.touch_updated_at();
