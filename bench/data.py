"""The bench data sets, loaded with COPY (binary, asyncpg) as the superuser.

small: 10 organizations of equal size. large: 10,000 organizations whose sizes follow a
power law (the biggest holds ~13% of the rows, the median a few dozen): at least
1,000,000 rows across agents and tasks. Every organization gets a user (owner), a
workspace, projects, and one API token with all owner scopes, whose secret the bench
keeps to send requests as that organization.

The load runs with session_replication_role = replica: no audit rows, no updated_at
trigger, no foreign-key checks for the bulk load (the generator builds consistent rows).
The task table is loaded only when it exists (migration 0003, another branch); if its
columns do not take the rows, the reason is reported and task scenarios are skipped.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg

from tenant_api.auth.credentials import display_prefix, new_api_token
from tenant_api.scopes import ROLE_SCOPES
from tenant_api.db.models.base import uuid7


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    orgs: int
    agents: int  # total rows; with no task table the agents carry the row count alone
    tasks: int
    skew: float  # 0: equal sizes; s > 0: organization i gets a share ~ 1/(i+1)^s
    agents_without_tasks: int = 0

    def agent_total(self, has_tasks: bool) -> int:
        return self.agents if has_tasks or not self.agents_without_tasks else self.agents_without_tasks


SMALL = DatasetSpec("small", orgs=10, agents=20_000, tasks=30_000, skew=0.0)
LARGE = DatasetSpec("large", orgs=10_000, agents=600_000, tasks=600_000, skew=1.07, agents_without_tasks=1_000_000)


@dataclass
class Org:
    id: UUID
    token: str
    projects: list[UUID]
    agents: list[UUID] = field(default_factory=list)
    tasks: list[UUID] = field(default_factory=list)


@dataclass
class Loaded:
    spec: DatasetSpec
    orgs: list[Org]
    rows: dict[str, int]
    seconds: float
    task_status: str  # "loaded" or why not ("task table absent", "task load failed: ...")

    @property
    def has_tasks(self) -> bool:
        return self.task_status == "loaded"


def sizes(total: int, orgs: int, skew: float) -> list[int]:
    weights = [1.0 / (i + 1) ** skew for i in range(orgs)]
    scale = total / sum(weights)
    return [max(1, round(w * scale)) for w in weights]


TASK_COLUMNS = ["organization_id", "id", "project_id", "summary", "details", "status", "agent_id"]


async def task_table_present(conn: asyncpg.Connection) -> bool:
    return await conn.fetchval("select to_regclass('public.task') is not null")


async def load(admin_url: str, spec: DatasetSpec) -> Loaded:
    started = time.perf_counter()
    conn = await asyncpg.connect(admin_url)
    try:
        has_task_table = await task_table_present(conn)
        agent_sizes = sizes(spec.agent_total(has_task_table), spec.orgs, spec.skew)
        task_sizes = sizes(spec.tasks, spec.orgs, spec.skew) if has_task_table else [0] * spec.orgs
        now = dt.datetime.now(dt.UTC)
        expires = now + dt.timedelta(days=300)
        scopes = sorted(ROLE_SCOPES["owner"])

        users, organizations, memberships, workspaces, projects, tokens = [], [], [], [], [], []
        agents: list[tuple] = []
        tasks: list[tuple] = []
        orgs: list[Org] = []
        for i in range(spec.orgs):
            org_id, user_id, ws_id = uuid7(), uuid7(), uuid7()
            n_projects = min(50, 1 + agent_sizes[i] // 2000)
            project_ids = [uuid7() for _ in range(n_projects)]
            token = new_api_token()
            users.append((user_id, f"bench-{spec.name}-{i}@bench.example", "not-a-password-hash", f"Bench {i}"))
            organizations.append((org_id, f"Bench organization {i}"))
            memberships.append((org_id, uuid7(), user_id, "owner"))
            workspaces.append((org_id, ws_id, "Default"))
            projects.extend((org_id, p, ws_id, f"project-{k}") for k, p in enumerate(project_ids))
            tokens.append((org_id, uuid7(), user_id, "api", "bench", display_prefix(token),
                           hashlib.sha256(token.encode()).digest(), scopes, expires))
            org = Org(id=org_id, token=token, projects=project_ids)
            for j in range(agent_sizes[i]):
                agent_id = uuid7()
                org.agents.append(agent_id)
                agents.append((org_id, agent_id, project_ids[j % n_projects], f"agent-{j}"))
            for j in range(task_sizes[i]):
                task_id = uuid7()
                org.tasks.append(task_id)
                # Every other task is assigned to an agent of its own project.
                agent = org.agents[j % len(org.agents)] if j % 2 == 0 else None
                project = project_ids[(j % len(org.agents)) % n_projects] if agent else project_ids[j % n_projects]
                tasks.append((org_id, task_id, project, f"bench task {j}", "", "todo", agent))
            orgs.append(org)

        async with conn.transaction():
            await conn.execute("set local session_replication_role = replica")
            await conn.copy_records_to_table("user_account", records=users,
                                             columns=["id", "email", "password_hash", "display_name"])
            await conn.copy_records_to_table("organization", records=organizations, columns=["id", "name"])
            await conn.copy_records_to_table("organization_membership", records=memberships,
                                             columns=["organization_id", "id", "user_id", "role"])
            await conn.copy_records_to_table("workspace", records=workspaces, columns=["organization_id", "id", "name"])
            await conn.copy_records_to_table("project", records=projects,
                                             columns=["organization_id", "id", "workspace_id", "name"])
            await conn.copy_records_to_table(
                "platform_token", records=tokens,
                columns=["organization_id", "id", "user_id", "kind", "name", "prefix", "token_hash", "scopes",
                         "expires_at"])
            await conn.copy_records_to_table("agent", records=agents,
                                             columns=["organization_id", "id", "project_id", "name"])
        # The triggers the replica mode skipped that auth.begin_request depends on: each
        # credential's effective context (policies/platform_token.sql).
        await conn.execute("update platform_token set context_head = null")

        task_status = "task table absent"
        if has_task_table:
            try:
                async with conn.transaction():
                    await conn.execute("set local session_replication_role = replica")
                    await conn.copy_records_to_table("task", records=tasks, columns=TASK_COLUMNS)
                task_status = "loaded"
            except asyncpg.PostgresError as exc:
                task_status = f"task load failed: {exc.__class__.__name__}: {exc}"
                for org in orgs:
                    org.tasks.clear()

        await conn.execute("vacuum analyze")
        rows = {"agent": len(agents), "task": len(tasks) if task_status == "loaded" else 0,
                "organization": len(organizations), "project": len(projects), "platform_token": len(tokens)}
    finally:
        await conn.close()
    return Loaded(spec=spec, orgs=orgs, rows=rows, seconds=time.perf_counter() - started, task_status=task_status)


async def reset_tasks(admin_url: str) -> None:
    """Back to 'todo' between task runs (each request moves one task todo -> in_progress)."""
    conn = await asyncpg.connect(admin_url)
    try:
        async with conn.transaction():
            await conn.execute("set local session_replication_role = replica")
            await conn.execute("update task set status = 'todo' where status <> 'todo'")
    finally:
        await conn.close()
