"""Desktops: VM configurations, virtual machines, robot connections, macros and their executions.

All project-level. Children reference their parent through (organization_id, project_id,
parent_id), so a VM can only use a config of its own project, a macro can only be bound
to a VM of its project, and so on. RLS, grants, triggers and the connection reaper live
in policies/<table>.sql.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from alembic import op

from tenant_api.db.policies import exec_script

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    exec_script(op.get_bind(),
        """
        -- Formerly WorkspaceConfig: the machine shape a VM is provisioned from.
        create table desktop_configs (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            project_id      uuid not null,
            name            text not null check (length(name) between 1 and 200),
            image           text not null check (length(image) between 1 and 500),
            cpu             integer not null default 2 check (cpu between 1 and 64),
            memory_mb       integer not null default 4096 check (memory_mb between 512 and 262144),
            disk_gb         integer not null default 40 check (disk_gb between 10 and 4096),
            settings        jsonb not null default '{}'
                            check (jsonb_typeof(settings) = 'object' and octet_length(settings::text) <= 65536),
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            constraint desktop_configs_project_id_key unique (organization_id, project_id, id),
            constraint desktop_configs_name_key unique (organization_id, project_id, name),
            foreign key (organization_id, project_id) references project (organization_id, id)
                on delete cascade
        );

        create table desktop_virtual_machine (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            project_id      uuid not null,
            config_id       uuid not null,
            name            text not null check (length(name) between 1 and 200),
            status          text not null default 'provisioning'
                            check (status in ('provisioning', 'running', 'stopped', 'terminated', 'failed')),
            host            text check (length(host) between 1 and 255),
            ip_address      inet,
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            constraint desktop_virtual_machine_project_id_key unique (organization_id, project_id, id),
            -- a config in use cannot be deleted (409); a VM never uses another project's config
            foreign key (organization_id, project_id, config_id)
                references desktop_configs (organization_id, project_id, id)
        );
        create index desktop_virtual_machine_config_idx
            on desktop_virtual_machine (organization_id, project_id, config_id);

        -- One row per WebSocket a robot client opened; closed rows are the history.
        create table desktop_connection (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            project_id      uuid not null,
            vm_id           uuid not null,
            token_id        uuid not null,
            api_instance_id text not null check (length(api_instance_id) between 1 and 200),
            status          text not null default 'connected' check (status in ('connected', 'disconnected')),
            connected_at    timestamptz not null default now(),
            last_seen_at    timestamptz not null default now(),
            disconnected_at timestamptz,
            close_reason    text check (length(close_reason) <= 100),
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            check ((status = 'connected') = (disconnected_at is null)),
            foreign key (organization_id, project_id, vm_id)
                references desktop_virtual_machine (organization_id, project_id, id) on delete cascade,
            foreign key (organization_id, token_id) references platform_token (organization_id, id)
                on delete cascade
        );
        create index desktop_connection_vm_idx on desktop_connection (organization_id, vm_id, id);
        create index desktop_connection_token_idx on desktop_connection (organization_id, token_id);
        -- The reaper's scan: open connections only (few rows, whatever the history).
        create index desktop_connection_open_idx on desktop_connection (organization_id, last_seen_at)
            where status = 'connected';

        create table robot_macro (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            project_id      uuid not null,
            name            text not null check (length(name) between 1 and 200),
            description     text not null default '' check (length(description) <= 2000),
            steps           jsonb not null default '[]'
                            check (jsonb_typeof(steps) = 'array' and octet_length(steps::text) <= 262144),
            vm_id           uuid,
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            constraint robot_macro_project_id_key unique (organization_id, project_id, id),
            constraint robot_macro_name_key unique (organization_id, project_id, name),
            foreign key (organization_id, project_id) references project (organization_id, id)
                on delete cascade,
            -- deleting the VM unbinds the macro (only vm_id is cleared, project_id stays)
            foreign key (organization_id, project_id, vm_id)
                references desktop_virtual_machine (organization_id, project_id, id) on delete set null (vm_id)
        );
        create index robot_macro_vm_idx on robot_macro (organization_id, project_id, vm_id);

        create table robot_macro_execution (
            organization_id uuid not null,
            id              uuid not null default uuidv7(),
            project_id      uuid not null,
            macro_id        uuid not null,
            vm_id           uuid,
            status          text not null default 'running'
                            check (status in ('running', 'succeeded', 'failed', 'cancelled')),
            started_at      timestamptz not null default now(),
            finished_at     timestamptz,
            duration_ms     bigint generated always as
                            ((extract(epoch from (finished_at - started_at)) * 1000)::bigint) stored,
            output          jsonb check (octet_length(output::text) <= 262144),
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now(),
            primary key (organization_id, id),
            check ((status = 'running') = (finished_at is null)),
            check (finished_at >= started_at),
            foreign key (organization_id, project_id, macro_id)
                references robot_macro (organization_id, project_id, id) on delete cascade,
            -- the history outlives the VM
            foreign key (organization_id, project_id, vm_id)
                references desktop_virtual_machine (organization_id, project_id, id) on delete set null (vm_id)
        );
        create index robot_macro_execution_macro_idx on robot_macro_execution (organization_id, macro_id, id);
        create index robot_macro_execution_vm_idx on robot_macro_execution (organization_id, project_id, vm_id);
        """
    )


def downgrade() -> None:
    exec_script(op.get_bind(),
        """
        drop function if exists auth.reap_desktop_connections(interval, text);
        drop table robot_macro_execution, robot_macro, desktop_connection, desktop_virtual_machine,
                   desktop_configs cascade;
        """
    )
