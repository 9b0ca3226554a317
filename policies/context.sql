-- The request context: small, stable SQL functions over transaction-local settings.
--
-- auth.begin_request() sets these with set_config(name, value, true) at the start of
-- each request's transaction. "true" makes them transaction-local: they vanish at
-- COMMIT/ROLLBACK, so nothing survives on a pooled connection (PgBouncer in
-- transaction mode included).
--
-- After a transaction that set them ends, current_setting(name, true) returns '' (not
-- NULL) for the rest of the session: nullif(..., '') turns that back into "no context",
-- and every policy compares against these values, so no context means no rows.
--
-- Policies call them as (select app.fn()) so the planner runs each once per statement
-- (an InitPlan) instead of once per row.

create schema if not exists app;

-- The context is signed. Settings can be set by any session with set_config(), so the
-- definer functions that establish a context (auth.begin_request, auth.create_session,
-- auth.signup, and those acting for the scheduler, the mailer, the reaper, invites) end
-- with auth.sign_context(), which stores a MAC of every context setting keyed by
-- auth.context_key (readable by tenant_auth alone). Each accessor below checks it:
-- a context written by hand, by the API role or anyone else, is no context at all.
-- The payload joins the settings with a separator no setting can contain (a text
-- setting cannot hold a NUL byte, and none of these holds '|' besides request ids,
-- which come last).
create or replace function app.context_payload() returns text
  language sql stable parallel safe
  as $$
    select concat_ws('|',
      coalesce(current_setting('app.organization_id', true), ''),
      coalesce(current_setting('app.user_id', true), ''),
      coalesce(current_setting('app.token_id', true), ''),
      coalesce(current_setting('app.scopes', true), ''),
      coalesce(current_setting('app.project_ids', true), ''),
      coalesce(current_setting('app.request_id', true), ''))
  $$;

-- HMAC-style: sha256(key || sha256(key || payload)). Runs as tenant_auth (the key's
-- only reader) and is executable by tenant_auth alone: whoever could call it could sign
-- any context they like.
create or replace function app.context_mac(payload text) returns text
  language sql stable parallel safe
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
    select encode(sha256(k.key || sha256(k.key || convert_to(payload, 'UTF8'))), 'hex')
      from auth.context_key k
  $$;

-- Whether the current context was signed; a boolean is all it tells its caller.
create or replace function app.context_ok() returns boolean
  language sql stable parallel safe
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
    select coalesce(current_setting('app.context_mac', true), '') <> ''
       and current_setting('app.context_mac', true) = app.context_mac(app.context_payload())
  $$;

create or replace function app.current_organization_id() returns uuid
  language sql stable parallel safe
  as $$ select case when app.context_ok() then nullif(current_setting('app.organization_id', true), '')::uuid end $$;

create or replace function app.current_user_id() returns uuid
  language sql stable parallel safe
  as $$ select case when app.context_ok() then nullif(current_setting('app.user_id', true), '')::uuid end $$;

create or replace function app.current_token_id() returns uuid
  language sql stable parallel safe
  as $$ select case when app.context_ok() then nullif(current_setting('app.token_id', true), '')::uuid end $$;

create or replace function app.current_request_id() returns text
  language sql stable parallel safe
  as $$ select case when app.context_ok() then nullif(current_setting('app.request_id', true), '') end $$;

-- The scopes of the request's token, write scopes already expanded to their reads.
-- No (valid) context: the empty array, so has_scope() is false.
create or replace function app.current_scopes() returns text[]
  language sql stable parallel safe
  as $$
    select case when app.context_ok()
                then coalesce(nullif(current_setting('app.scopes', true), '')::text[], '{}')
                else '{}'::text[] end
  $$;

create or replace function app.has_scope(scope text) returns boolean
  language sql stable parallel safe
  as $$ select scope = any(app.current_scopes()) $$;

-- The project restriction. NULL means "every project of the organization"; an array
-- (possibly empty) means "only these". The setting holds the literal 'all' for the
-- unrestricted case so that the empty string left behind after a commit can never be
-- mistaken for "unrestricted": with no (valid) context it reads as the empty array.
create or replace function app.current_project_ids() returns uuid[]
  language sql stable parallel safe
  as $$
    select case when not app.context_ok() then '{}'::uuid[]
                else case coalesce(current_setting('app.project_ids', true), '')
                       when 'all' then null
                       when '' then '{}'::uuid[]
                       else current_setting('app.project_ids', true)::uuid[]
                     end
           end
  $$;

-- True when the request is not limited to some projects.
create or replace function app.unrestricted() returns boolean
  language sql stable parallel safe
  as $$ select app.current_project_ids() is null $$;

-- The MAC function reads the key: it runs as tenant_auth, the key's only reader
-- (CREATE on the schema is needed by the new owner for the moment of the ALTER only).
grant select on auth.context_key to tenant_auth;
grant usage on schema auth to tenant_auth;
grant usage on schema app to tenant_auth;
grant create on schema app to tenant_auth;
alter function app.context_mac(text) owner to tenant_auth;
alter function app.context_ok() owner to tenant_auth;
revoke create on schema app from tenant_auth;

grant usage on schema app to tenant_api;
grant execute on all functions in schema app to tenant_api;
revoke execute on function app.context_mac(text) from public, tenant_api;
