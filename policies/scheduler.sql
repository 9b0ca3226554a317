-- The scheduler's two doors (tenant-api scheduler; src/tenant_api/scheduler.py).
--
-- The scheduler connects as tenant_api like the API, and like the API it has no
-- context of its own: RLS shows it nothing. Finding due schedules means looking across
-- organizations, so it goes through two narrow SECURITY DEFINER functions owned by
-- tenant_auth (fixed search_path, qualified names), called in ONE transaction:
--
--   1. auth.claim_due_schedules(limit): locks up to `limit` due schedules with
--      FOR UPDATE SKIP LOCKED (a second scheduler skips them rather than waiting or
--      repeating them) and returns what the caller needs to compute the next run
--      (cron, time zone, the due time, the transaction's now()). No targets, no names.
--   2. auth.fire_schedule(org, schedule, due_at, next_run_at), per claimed row (the
--      cron arithmetic, croniter, lives in Python): sets that organization's context
--      (no user, no token, request_id 'scheduler:<schedule id>', so the tenant_auth
--      policies and the audit trigger see the right organization), advances the
--      schedule ONLY IF its next_run_at still equals due_at and is due (compare-and-set),
--      and only then inserts the queued job, in the same transaction. Returns the job
--      id, or null when the schedule was not due at due_at any more (someone else ran
--      or changed it, or a job for that due time exists already). The caller's own
--      context is restored before returning.
--
-- Exactly once: the row lock (claim) keeps two schedulers off the same row, the
-- compare-and-set makes a second fire of the same due time a no-op even without it,
-- and UNIQUE (organization_id, schedule_id, scheduled_for) on job makes a duplicate
-- impossible even with a bug above. A crash before COMMIT loses both the job and the
-- advance, so the run happens after restart; after COMMIT both exist.
--
-- Downtime: next_run_at is always computed after now(), so a schedule that missed
-- several runs while no scheduler ran produces one job (for its first missed time)
-- and then continues from the present.
--
-- What the API role could do by calling these directly: run a due schedule (what the
-- scheduler would do anyway) and choose its next time, and read due schedules' cron
-- and time zone. It cannot read or write anything else of any organization.

create or replace function auth.claim_due_schedules(p_limit integer)
  returns table (organization_id uuid, schedule_id uuid, cron text, timezone text,
                 due_at timestamptz, db_now timestamptz)
  language sql
  volatile
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
    -- Fair across organizations (issue 10): each organization's due schedules are
    -- numbered in due order, and a batch takes every organization's first before anyone's
    -- second (round-robin), so one organization's hundreds of due schedules cannot push
    -- another's behind them. (FOR UPDATE cannot sit beside a window function: the
    -- numbering is a subquery, the locking its join.)
    select s.organization_id, s.id, s.cron, s.timezone, s.next_run_at, now()
      from (select d.organization_id, d.id,
                   row_number() over (partition by d.organization_id order by d.next_run_at, d.id) as turn
              from public.job_schedule d
             where d.enabled and d.next_run_at is not null and d.next_run_at <= now()) as r
      join public.job_schedule s on s.organization_id = r.organization_id and s.id = r.id
     where r.turn <= least(greatest(p_limit, 1), 1000)
       and s.enabled and s.next_run_at is not null and s.next_run_at <= now()
     order by r.turn, s.next_run_at
     limit least(greatest(p_limit, 1), 1000)
       for update of s skip locked
  $$;

-- The request's organization's enabled schedules, every one of them: the quota
-- (SCHEDULE_MAX_ENABLED_PER_ORGANIZATION) is the organization's, and a project-restricted
-- credential sees only its projects' rows. A number of the caller's own organization only.
create or replace function auth.enabled_schedule_count()
  returns integer
  language sql
  stable
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
    select count(*)::integer from public.job_schedule s
     where s.organization_id = app.current_organization_id() and s.enabled
  $$;

create or replace function auth.fire_schedule(p_org uuid, p_schedule uuid, p_due_at timestamptz,
                                              p_next_run_at timestamptz)
  returns uuid
  language plpgsql
  volatile
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
declare
  saved text[];
  v_project uuid;
  v_target jsonb;
  v_labels text[];
  v_max_attempts integer;
  v_job uuid;
begin
  -- A next run at or before now would make the schedule due again at once.
  if p_next_run_at is not null and p_next_run_at <= now() then
    raise exception 'next_run_at % is not after now()', p_next_run_at using errcode = 'invalid_parameter_value';
  end if;

  saved := auth.enter_context(p_org, null, null, 'scheduler:' || p_schedule::text);

  update public.job_schedule s
     set next_run_at = p_next_run_at, last_run_at = now()
   where s.organization_id = p_org and s.id = p_schedule
     and s.enabled and s.next_run_at = p_due_at and s.next_run_at <= now()
  returning s.project_id, s.target, s.labels, s.max_attempts into v_project, v_target, v_labels, v_max_attempts;

  if found then
    v_job := uuidv7();
    -- A job for this due time already exists only if someone set next_run_at back by
    -- hand: the run happened, so advance without a second one.
    -- (Not ON CONFLICT: that would need SELECT on job, which tenant_auth does not have.)
    begin
      insert into public.job (organization_id, id, project_id, schedule_id, target, status, scheduled_for,
                              labels, max_attempts)
      values (p_org, v_job, v_project, p_schedule, v_target, 'queued', p_due_at, v_labels, v_max_attempts);
    exception when unique_violation then
      v_job := null;
    end;
  end if;

  perform auth.leave_context(saved);
  return v_job;
end
$$;

grant create on schema auth to tenant_auth;
alter function auth.claim_due_schedules(integer) owner to tenant_auth;
alter function auth.fire_schedule(uuid, uuid, timestamptz, timestamptz) owner to tenant_auth;
alter function auth.enabled_schedule_count() owner to tenant_auth;
revoke create on schema auth from tenant_auth;
revoke all on function auth.enabled_schedule_count() from public;
grant execute on function auth.enabled_schedule_count() to tenant_api;
revoke all on function auth.claim_due_schedules(integer),
                       auth.fire_schedule(uuid, uuid, timestamptz, timestamptz) from public, tenant_api;
grant execute on function auth.claim_due_schedules(integer),
                          auth.fire_schedule(uuid, uuid, timestamptz, timestamptz) to tenant_duty_scheduler;
