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

create or replace function app.current_organization_id() returns uuid
  language sql stable parallel safe
  as $$ select nullif(current_setting('app.organization_id', true), '')::uuid $$;

create or replace function app.current_user_id() returns uuid
  language sql stable parallel safe
  as $$ select nullif(current_setting('app.user_id', true), '')::uuid $$;

create or replace function app.current_token_id() returns uuid
  language sql stable parallel safe
  as $$ select nullif(current_setting('app.token_id', true), '')::uuid $$;

create or replace function app.current_request_id() returns text
  language sql stable parallel safe
  as $$ select nullif(current_setting('app.request_id', true), '') $$;

-- The scopes of the request's token, write scopes already expanded to their reads.
-- No context: the empty array, so has_scope() is false.
create or replace function app.current_scopes() returns text[]
  language sql stable parallel safe
  as $$ select coalesce(nullif(current_setting('app.scopes', true), '')::text[], '{}') $$;

create or replace function app.has_scope(scope text) returns boolean
  language sql stable parallel safe
  as $$ select scope = any(app.current_scopes()) $$;

-- The project restriction. NULL means "every project of the organization"; an array
-- (possibly empty) means "only these". The setting holds the literal 'all' for the
-- unrestricted case so that the empty string left behind after a commit can never be
-- mistaken for "unrestricted": with no context it reads as the empty array.
create or replace function app.current_project_ids() returns uuid[]
  language sql stable parallel safe
  as $$
    select case coalesce(current_setting('app.project_ids', true), '')
             when 'all' then null
             when '' then '{}'::uuid[]
             else current_setting('app.project_ids', true)::uuid[]
           end
  $$;

-- True when the request is not limited to some projects.
create or replace function app.unrestricted() returns boolean
  language sql stable parallel safe
  as $$ select app.current_project_ids() is null $$;

grant usage on schema app to tenant_api;
grant execute on all functions in schema app to tenant_api;
