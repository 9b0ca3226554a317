"""Tasks and jobs (scope area ``tasks``): task, job_schedule, job, job_log, computer_use_task.

Statuses follow state machines that the API checks (409 naming both states) and the
database enforces too: app.guard_status(), attached by each table's policies file with
that table's moves, refuses any other move from any path (a raw UPDATE, a future
endpoint) and stamps started_at / finished_at where the table has them.

job(organization_id, schedule_id, scheduled_for) is UNIQUE: the scheduler can never
create two jobs for the same due time of a schedule, whatever goes wrong above it.

computer_use_task.desktop_vm_id gets its composite foreign key to desktop_virtual_machine
in 0009, once that table exists (the index it needs is already here).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from alembic import op

from tenant_api.db.policies import exec_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    exec_script(op.get_bind(),
        """
        -- One trigger function for every status lifecycle. Arguments (set per table in
        -- policies/<table>.sql):
        --   TG_ARGV[0]  the entity's name, for messages ("task")
        --   TG_ARGV[1]  the status every new row starts in
        --   TG_ARGV[2]  the allowed moves, a text[] literal of 'from>to'
        --   TG_ARGV[3]  the status that means "work started" ('' = the table has no
        --               started_at/finished_at): entering it sets started_at; entering a
        --               terminal status (one with no move out) sets finished_at.
        -- Runs as the invoker (no privileges of its own needed: it only reads NEW/OLD).
        create or replace function app.guard_status() returns trigger
          language plpgsql
          set search_path = pg_catalog, pg_temp
          as $$
        declare
          entity  text   := TG_ARGV[0];
          initial text   := TG_ARGV[1];
          moves   text[] := TG_ARGV[2]::text[];
          started text   := TG_ARGV[3];
          stamps  jsonb  := '{}';
        begin
          if TG_OP = 'INSERT' then
            if new.status is distinct from initial then
              raise exception 'a new % starts as %, not %', entity, initial, new.status
                using errcode = 'check_violation', constraint = TG_TABLE_NAME || '_status_transition';
            end if;
            return new;
          end if;
          if new.status is not distinct from old.status then
            return new;
          end if;
          if not (old.status || '>' || new.status) = any (moves) then
            raise exception 'cannot move % from % to %', entity, old.status, new.status
              using errcode = 'check_violation', constraint = TG_TABLE_NAME || '_status_transition';
          end if;
          if started <> '' then
            if new.status = started then
              stamps := stamps || jsonb_build_object('started_at', now());
            end if;
            if not exists (select from unnest(moves) m where split_part(m, '>', 1) = new.status) then
              stamps := stamps || jsonb_build_object('finished_at', now());
            end if;
            if stamps <> '{}' then
              new := jsonb_populate_record(new, stamps);
            end if;
          end if;
          return new;
        end
        $$;

        create table task (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            project_id      uuid not null,
            agent_id        uuid,
            summary         text not null check (length(summary) between 1 and 500),
            details         text not null default '' check (length(details) <= 20000),
            -- ordered [{title, done}]: always read and written with the task, never
            -- queried across tasks, so a jsonb array rather than a child table
            steps           jsonb not null default '[]'
                            check (jsonb_typeof(steps) = 'array' and jsonb_array_length(steps) <= 200),
            status          text not null default 'todo'
                            check (status in ('todo', 'in_progress', 'done', 'failed', 'cancelled')),
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, project_id, id),
            foreign key (organization_id, project_id) references project (organization_id, id)
                on delete cascade,
            -- the assignee is an agent of the same project; deleting it unassigns
            foreign key (organization_id, project_id, agent_id)
                references agent (organization_id, project_id, id) on delete set null (agent_id)
        );
        create index task_agent_idx on task (organization_id, project_id, agent_id);
        create index task_status_idx on task (organization_id, status, id);

        create table job_schedule (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            project_id      uuid not null,
            name            text not null check (length(name) between 1 and 200),
            cron            text not null check (length(cron) between 1 and 200),
            timezone        text not null default 'UTC' check (length(timezone) between 1 and 64),
            enabled         boolean not null default true,
            target          jsonb not null
                            check (jsonb_typeof(target) = 'object'
                                   and target ->> 'kind' in ('command', 'workflow')
                                   and length(target ->> 'ref') between 1 and 500),
            -- UTC; null when disabled or when the expression fires no more
            next_run_at     timestamptz,
            last_run_at     timestamptz,
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, project_id, id),
            unique (organization_id, project_id, name),
            check (enabled or next_run_at is null),
            foreign key (organization_id, project_id) references project (organization_id, id)
                on delete cascade
        );
        -- The scheduler looks for due schedules of every organization before it knows
        -- any (auth.claim_due_schedules): the one index here that cannot lead with
        -- organization_id. Partial, so it holds only what can ever be due.
        create index job_schedule_due_idx on job_schedule (next_run_at)
            where enabled and next_run_at is not null;

        create table job (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            project_id      uuid not null,
            schedule_id     uuid,
            target          jsonb not null
                            check (jsonb_typeof(target) = 'object'
                                   and target ->> 'kind' in ('command', 'workflow')
                                   and length(target ->> 'ref') between 1 and 500),
            status          text not null default 'queued'
                            check (status in ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
            exit_code       integer,
            -- the schedule's due time this run was created for; null for manual runs
            scheduled_for   timestamptz,
            started_at      timestamptz,
            finished_at     timestamptz,
            -- the last log chunk's seq (UPDATE ... SET log_seq = log_seq + 1 RETURNING)
            log_seq         bigint not null default 0,
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, project_id, id),
            -- exactly once: one job per due time of a schedule
            unique (organization_id, schedule_id, scheduled_for),
            check (exit_code is null or status in ('succeeded', 'failed', 'cancelled')),
            foreign key (organization_id, project_id) references project (organization_id, id)
                on delete cascade,
            -- a schedule's history outlives it
            foreign key (organization_id, project_id, schedule_id)
                references job_schedule (organization_id, project_id, id) on delete set null (schedule_id)
        );
        create index job_status_idx on job (organization_id, status, id);

        create table job_log (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            project_id      uuid not null,
            job_id          uuid not null,
            seq             bigint not null check (seq > 0),
            data            text not null check (octet_length(data) between 1 and 65536),
            created_at      timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, job_id, seq),
            foreign key (organization_id, project_id, job_id) references job (organization_id, project_id, id)
                on delete cascade
        );

        create table computer_use_task (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            project_id      uuid not null,
            instruction     text not null check (length(instruction) between 1 and 20000),
            -- no FK yet: desktop_virtual_machine arrives in a parallel revision
            desktop_vm_id   uuid,
            status          text not null default 'queued'
                            check (status in ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
            result          jsonb,
            started_at      timestamptz,
            finished_at     timestamptz,
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            unique (organization_id, project_id, id),
            foreign key (organization_id, project_id) references project (organization_id, id)
                on delete cascade
        );
        create index computer_use_task_desktop_idx on computer_use_task (organization_id, project_id, desktop_vm_id);
        create index computer_use_task_status_idx on computer_use_task (organization_id, status, id);
        """
    )


def downgrade() -> None:
    exec_script(op.get_bind(),
        """
        drop function if exists auth.fire_schedule(uuid, uuid, timestamptz, timestamptz);
        drop function if exists auth.claim_due_schedules(integer);
        drop table computer_use_task, job_log, job, job_schedule, task cascade;
        drop function app.guard_status();
        """
    )
