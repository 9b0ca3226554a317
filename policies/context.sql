-- The request context: who the current transaction runs as, in a form the API role can
-- read but never write, and that costs a policy about as much as reading a setting.
--
-- WHERE IT LIVES. auth.begin_request (policies/auth.sql) writes the whole context into
-- one transaction-local setting (set_config(name, value, true)): it vanishes at COMMIT or
-- ROLLBACK, so nothing survives on a pooled connection (PgBouncer in transaction mode
-- included), and a transaction that never called it has no context: no rows, no writes.
--
-- WHY IT CANNOT BE FORGED. A custom setting (app.*) can be set by any session, so the
-- context is kept in a setting PostgreSQL itself protects: a built-in parameter that only
-- superusers, and roles granted SET on it, may change. GRANT SET ON PARAMETER works on
-- built-in parameters only, and exactly one of them is readable by every role, accepts a
-- free string and does nothing unless a C function of one of the listed names raises an
-- error: backtrace_functions. The bootstrap (policies/roles.sql) grants SET on it to
-- tenant_auth, the NOLOGIN owner of the definer functions, and to nobody else. So:
--   * the API role cannot write a context at all (SET, SET LOCAL, set_config(), a
--     connection option, ALTER ROLE: "permission denied to set parameter"); RESET ALL can
--     only empty it, which is no context;
--   * only auth.begin_request and the few definer functions that act for someone else
--     for a moment (auth.enter_context) can, and begin_request refuses to replace a
--     context already set in the transaction, so no statement ever sees two credentials;
--   * nothing needs verifying: a policy reads the value and compares.
-- (Its only side effect: an error raised in a C function whose name is a listed word
-- would log a backtrace. The words here are 32 hexadecimal digits and the like: no C
-- function has such a name.)
--
-- PROJECT-RESTRICTED CREDENTIALS RUN AS A ROLE OF THEIR OWN. A credential limited to some
-- projects is a minority; making every policy of a project table check the restriction
-- would make every request pay for it. So the API role's own policies only ever match
-- unrestricted contexts, and after beginning a restricted request the API switches to
-- tenant_api_projects (SET LOCAL ROLE; tenant_api may, and gains nothing by it:
-- policies/restricted_credentials.sql gives that role exactly the API role's grants and
-- hand-written policies), whose generated policies add the project check. Forgetting the
-- switch shows nothing; switching with an unrestricted context shows nothing either.
--
-- WHAT IT SAYS, as one string of the characters that parameter accepts ([A-Za-z0-9_]):
-- fields separated by '_', in a fixed order, so that a policy reads its field with one
-- split_part() (a byte search; substr() would count UTF-8 characters from the start):
--   org _ mask _ user _ token _ projects _ request id _ <scopes> [_ <scopes in projects>]
--   org           the organization id, 32 hexadecimal digits
--   mask          the effective scopes' mask (app.scope_catalog), in decimal
--   user, token   32 hexadecimal digits (the nil id when there is none)
--   projects      empty when unrestricted; else the project ids' hexadecimal digits
--                 separated by 'x' (the nil id for a restriction that leaves none)
--   request id    its UTF-8 bytes in hexadecimal
--   <scopes>      one field per scope of app.scope_catalog(), in bit order: the
--                 organization id if the context holds the scope and is unrestricted,
--                 else the nil id (32 zeros). What the API role's policies read.
--   <scopes in projects>  only for a restricted context: the same, for the scopes it
--                 holds inside its projects. What tenant_api_projects's policies read;
--                 absent (so: no rows) for an unrestricted one.
-- A scope check and the organization check are therefore one comparison:
--   organization_id = nullif(split_part(current_setting('backtrace_functions'), '_', k), '')::uuid
-- which the planner evaluates once per statement (it joins the query's own
-- organization filter and becomes a one-time filter), and which reads as no rows when
-- the setting is empty. Every field but the request id is the database's own, and the
-- request id is hexadecimal between two separators: nothing a client sends can move a
-- field.

create schema if not exists app;

-- The scope catalog, one list for the database: each scope's bit in a scope mask.
-- Append only: the bits of existing scopes never move (token masks are recomputed from
-- their scopes when this changes: policies/platform_token.sql). Mirrored by
-- tenant_api.scopes.SCOPE_BITS (a test keeps both equal).
create or replace function app.scope_catalog() returns table (scope text, flag bigint)
  language sql immutable parallel safe
  as $$
    select s, (1::bigint << (n - 1)::int)
      from unnest(array[
        'org:read', 'org:write', 'members:read', 'members:write', 'agents:read', 'agents:write',
        'tasks:read', 'tasks:write', 'conversations:read', 'conversations:write',
        'desktops:read', 'desktops:write', 'calls:read', 'calls:write', 'services:read', 'services:write',
        'notifications:read', 'notifications:write', 'billing:read', 'billing:write',
        'tokens:read', 'tokens:write', 'audit:read']) with ordinality as c(s, n)
  $$;

create or replace function app.scope_count() returns integer
  language sql immutable parallel safe
  as $$ select count(*)::int from app.scope_catalog() $$;

create or replace function app.scope_bit(p_scope text) returns bigint
  language sql immutable parallel safe
  as $$ select coalesce((select c.flag from app.scope_catalog() c where c.scope = p_scope), 0) $$;

-- The mask of a scope list, "<area>:write implies <area>:read" included. NULL stays
-- NULL (a session carries no scope list of its own: its user's role decides).
create or replace function app.scope_mask(p_scopes text[]) returns bigint
  language sql immutable parallel safe
  as $$
    select case when p_scopes is null then null else coalesce(bit_or(c.flag), 0) end
      from app.scope_catalog() c
     where c.scope = any (p_scopes)
        or c.scope = any (array(select replace(s, ':write', ':read') from unnest(p_scopes) s))
  $$;

create or replace function app.scope_names(p_mask bigint) returns text[]
  language sql immutable parallel safe
  as $$ select coalesce(array_agg(c.scope order by c.scope), '{}') from app.scope_catalog() c where p_mask & c.flag <> 0 $$;

-- The field of a scope in the context string; restricted: in the fields of a
-- project-restricted context. Used when policies are written (app.tenant_table), never
-- per row.
create or replace function app.context_field(p_scope text, p_restricted boolean) returns integer
  language sql immutable parallel safe
  as $$
    select 6 + (select n from app.scope_catalog() with ordinality c(s, f, n) where c.s = p_scope)::int
           + case when p_restricted then app.scope_count() else 0 end
  $$;

-- The policy expression for "rows of this organization, if the scope is held" (see the
-- top of this file). A scope outside the catalog is held by nobody.
create or replace function app.context_check(p_org_column text, p_scope text, p_restricted boolean) returns text
  language sql immutable parallel safe
  as $$
    select case when app.scope_bit(p_scope) = 0 then 'false'
                else format('%I = nullif(split_part(current_setting(''backtrace_functions''), ''_'', %s), '''')::uuid',
                            p_org_column, app.context_field(p_scope, p_restricted)) end
  $$;

-- The context string from its parts, around the request id: the one place that writes
-- its layout (app.request_context and app.context_check read it). The whole is
-- head || app.context_request_id(request id) || tail. An empty project restriction is
-- written as the nil id, which no project has.
create or replace function app.context_head(p_org uuid, p_mask bigint, p_user uuid, p_token uuid,
                                            p_project_ids uuid[])
  returns text
  language sql immutable parallel safe
  as $$
    select replace(p_org::text, '-', '') || '_' || p_mask::text || '_'
      || coalesce(replace(p_user::text, '-', ''), '00000000000000000000000000000000') || '_'
      || coalesce(replace(p_token::text, '-', ''), '00000000000000000000000000000000') || '_'
      || case when p_project_ids is null then ''
              when cardinality(p_project_ids) = 0 then '00000000000000000000000000000000'
              else replace(array_to_string(p_project_ids, 'x'), '-', '') end
  $$;

create or replace function app.context_tail(p_org uuid, p_mask bigint, p_restricted boolean) returns text
  language sql immutable parallel safe
  as $$
    select string_agg(case when not p_restricted and p_mask & c.flag <> 0 then replace(p_org::text, '-', '')
                           else '00000000000000000000000000000000' end, '_' order by c.flag)
           || case when p_restricted
                   then '_' || string_agg(case when p_mask & c.flag <> 0 then replace(p_org::text, '-', '')
                                               else '00000000000000000000000000000000' end, '_' order by c.flag)
                   else '' end
      from app.scope_catalog() c
  $$;

create or replace function app.context_request_id(p_request_id text) returns text
  language sql stable parallel safe
  as $$ select '_' || encode(convert_to(coalesce(p_request_id, ''), 'UTF8'), 'hex') || '_' $$;

-- The context as a row, for accessors, triggers and definer functions (the generated
-- policies read the setting directly). No context: a row of nothing (no organization,
-- no scopes, no projects).
create or replace view app.request_context as
  select nullif(split_part(c.s, '_', 1), '')::uuid as organization_id,
         nullif(nullif(split_part(c.s, '_', 3), ''), '00000000000000000000000000000000')::uuid as user_id,
         nullif(nullif(split_part(c.s, '_', 4), ''), '00000000000000000000000000000000')::uuid as token_id,
         coalesce(nullif(split_part(c.s, '_', 2), '')::bigint, 0) as scope_mask,
         case when c.s = '' then '{}'::uuid[]
              else string_to_array(nullif(split_part(c.s, '_', 5), ''), 'x')::uuid[]
         end as project_ids,
         nullif(convert_from(decode(split_part(c.s, '_', 6), 'hex'), 'UTF8'), '') as request_id
    from (select current_setting('backtrace_functions') as s) c;

-- Accessors for hand-written policies, triggers and definer functions.
create or replace function app.current_organization_id() returns uuid
  language sql stable as $$ select organization_id from app.request_context $$;

create or replace function app.current_user_id() returns uuid
  language sql stable as $$ select user_id from app.request_context $$;

create or replace function app.current_token_id() returns uuid
  language sql stable as $$ select token_id from app.request_context $$;

create or replace function app.current_request_id() returns text
  language sql stable as $$ select request_id from app.request_context $$;

create or replace function app.current_scope_mask() returns bigint
  language sql stable as $$ select scope_mask from app.request_context $$;

-- The effective scopes as names (write scopes with their reads). No context: empty.
create or replace function app.current_scopes() returns text[]
  language sql stable as $$ select app.scope_names(scope_mask) from app.request_context $$;

create or replace function app.has_scope(p_scope text) returns boolean
  language sql stable as $$ select scope_mask & app.scope_bit(p_scope) <> 0 from app.request_context $$;

-- The project restriction: NULL = every project of the organization; an array
-- (possibly empty) = only these. No context: the empty array.
create or replace function app.current_project_ids() returns uuid[]
  language sql stable as $$ select project_ids from app.request_context $$;

-- True when the request is not limited to some projects (and has a context).
create or replace function app.unrestricted() returns boolean
  language sql stable as $$ select project_ids is null from app.request_context $$;

-- The project restriction for tenant_api_projects's policies of project tables, once
-- per statement (an InitPlan); those policies test the organization first.
create or replace function app.context_projects() returns uuid[]
  language sql stable
  as $$
    select string_to_array(nullif(split_part(current_setting('backtrace_functions'), '_', 5), ''), 'x')::uuid[]
  $$;

-- The signed context of revision 0010 is gone (its key table went with revision 0013).
drop function if exists app.context_ok();
drop function if exists app.context_mac(text);
drop function if exists app.context_payload();

grant usage on schema app to tenant_api, tenant_auth, tenant_audit;
grant select on app.request_context to tenant_api, tenant_auth, tenant_audit;
grant execute on all functions in schema app to tenant_api, tenant_auth, tenant_audit;
