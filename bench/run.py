"""The benchmark: the API's hot paths against baselines measured in the same run.

    python -m bench.run            quick (`make bench`): small data set, short runs, < 5 min
    python -m bench.run --full     (`make bench-full`): small and large data sets, longer runs

What runs, all on this machine (the load generator in a process of its own):
  * PostgreSQL: the embedded server on bench/out/pg with pg_stat_statements; one fresh
    database per data set, bootstrapped and migrated like production, loaded with COPY.
  * Servers: the API (`tenant_api.asgi:create`, configured like `tenant-api serve`: JSON
    access log on stderr, metrics, usage recording, rate limiting) and bench/bare.py, on
    the same ASGI server with the same worker count; a second API whose database role
    has BYPASSRLS; with the usage switch present, a third with usage recording off. The
    one setting changed: RATE_LIMIT_REQUESTS is raised so the limiter counts every
    request (its cost is measured) without refusing the load.
  * Load: wrk + bench/scenario.lua (or bench/loadgen.py), fixed concurrency, warm-up,
    fixed duration; requests spread over many organizations' tokens.
  * Baselines: pgbench running the API's SQL transaction; the same as BYPASSRLS; the
    minimal-context transaction (one set_config, a plain policy: bench/pg.py) in pgbench
    and behind the bare endpoint; usage recording off; the bare asyncpg endpoint running
    the API's transaction; the database-free endpoint; with --full, audit trigger off.

Per run: requests/s, p50/p99, errors, resident memory per worker (max while loaded), SQL
statements per request (pg_stat_statements, the API's roles only), and CPU milliseconds
per request of the API, PostgreSQL and the load generator, plus the share of the machine
used by anything else (other engineers' tests show up there). The table and every ratio
against its target are printed and appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench import data, loadgen, pg

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
RESULTS = ROOT / "bench" / "RESULTS.md"
USAGE_ENV = "AUDIT_USAGE_ENABLED"  # the usage-recording switch this harness passes (0 = off)
JWT_SECRET = "bench-" + "s" * 40
API_ROLES = ["tenant_api", pg.BYPASS_ROLE, pg.MINIMAL_ROLE]
RATE_LIMIT_REQUESTS = str(10**9)  # the limiter runs and counts, and never refuses the bench's load
PGBENCH_SCRIPTS = 16  # one (token, agent) pair per script; each connection prepares every script once
LARGE_SAMPLE_ORGS = 1000  # organizations whose tokens the large runs use (the 10 biggest included)
REQUEST_LINES = 20_000

TARGETS = {  # issue 9
    "pgbench_vs_minimal": 0.50,  # the API's transaction / the minimal-context one, both in pgbench
    "rls_cost": 0.05,  # pgbench: the API role vs BYPASSRLS
    "api_vs_bare": 0.85,  # GET /v1/agents/{id} / the bare endpoint running the same transaction
    "usage_cost": 0.05,  # GET and POST, usage recording on vs off
    "post_vs_get": 0.50,
    "task_vs_get": 0.40,
    "statements_per_read": 4,
    "p50_large_vs_small": 1.10,
    "audit_cost": 0.25,  # --full only
    "rss_mb": 200,
}


# --- machine and code --------------------------------------------------------------------

def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return ""


def commit() -> str:
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "src", "bench", "policies", "migrations", "pyproject.toml")
    dirty = "\n".join(line for line in dirty.splitlines() if "RESULTS.md" not in line)
    return head + ("+uncommitted" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usage_switch_present() -> bool:
    """Usage recording exists once Settings reads USAGE_ENV (issue 5, not merged yet)."""
    from tenant_api.settings import Settings

    return Settings.from_env({USAGE_ENV: "0"}) != Settings.from_env({USAGE_ENV: "1"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- servers -----------------------------------------------------------------------------

@dataclass
class Server:
    name: str
    app: str  # "module:factory"
    workers: int
    env: dict[str, str]
    kind: str = "uvicorn"
    port: int = 0
    proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        if self.kind == "granian":
            return [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--host", "127.0.0.1",
                    "--port", str(self.port), "--workers", str(self.workers), "--loop", "uvloop",
                    "--no-access-log", "--log-level", "warning", self.app]
        return [sys.executable, "-m", "uvicorn", self.app, "--factory", "--host", "127.0.0.1", "--port",
                str(self.port), "--workers", str(self.workers), "--loop", "uvloop", "--http", "httptools",
                "--no-access-log", "--no-proxy-headers", "--log-level", "warning"]

    def start(self) -> None:
        self.port = free_port()
        log = open(OUT / "logs" / f"{self.name}.log", "w")
        env = {**os.environ, **self.env, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.name} exited; see bench/out/logs/{self.name}.log")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200 and len(self.workers_procs()) >= self.workers:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server {self.name} not ready after {timeout}s")

    def processes(self) -> list[psutil.Process]:
        assert self.proc is not None
        main = psutil.Process(self.proc.pid)
        return [main, *main.children(recursive=True)]

    def workers_procs(self) -> list[psutil.Process]:
        """The processes that serve requests (a supervisor and helpers are not counted)."""
        procs = self.processes()
        if self.workers == 1 and self.kind == "uvicorn":
            return procs[:1]
        return [p for p in procs[1:] if "resource_tracker" not in " ".join(_cmdline(p))]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def tree_cpu(root_pid: int | None) -> float:
    """CPU seconds of a process tree, including children that exited meanwhile: a root's
    reaped children are in its children_user/children_system (PostgreSQL's postmaster
    reaps every backend, so short-lived connections are counted too)."""
    if root_pid is None:
        return 0.0
    try:
        root = psutil.Process(root_pid)
        t = root.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for p in root.children(recursive=True):
            try:
                c = p.cpu_times()
                total += c.user + c.system
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0.0


# --- request files -----------------------------------------------------------------------

def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Workload:
    """Request files for one data set. Each scenario has a warm-up file and a measured one
    (different rows where a request consumes its row, like a task status change)."""

    size: str
    files: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    pgbench_pairs: list[tuple[str, str, str]] = field(default_factory=list)  # (token hash hex, org, agent)
    sample_orgs: int = 0

    def __getitem__(self, scenario: str) -> tuple[Path, Path]:
        return self.files[scenario]


def build_workload(loaded: data.Loaded, seed: int = 11) -> Workload:
    import hashlib
    import random

    rng = random.Random(seed)
    orgs = loaded.orgs
    if len(orgs) > LARGE_SAMPLE_ORGS:
        orgs = orgs[:10] + rng.sample(orgs[10:], LARGE_SAMPLE_ORGS - 10)
    w = Workload(size=loaded.spec.name, sample_orgs=len(orgs))
    base = OUT / "requests" / loaded.spec.name

    def pick() -> tuple[data.Org, str]:
        org = rng.choice(orgs)
        return org, str(rng.choice(org.agents))

    gets = []
    for _ in range(REQUEST_LINES):
        org, agent = pick()
        gets.append((org, agent))
    get_lines = [f"GET\t/v1/agents/{a}\t{o.token}" for o, a in gets]
    list_lines = [f"GET\t/v1/agents?limit=50\t{rng.choice(orgs).token}" for _ in range(REQUEST_LINES)]

    def post_line() -> str:
        org = rng.choice(orgs)
        body = json.dumps({"project_id": str(rng.choice(org.projects)), "name": "bench-%N%"})
        return f"POST\t/v1/agents\t{org.token}\t{body}"

    post_lines = [post_line() for _ in range(REQUEST_LINES)]
    mixed = []
    for i in range(REQUEST_LINES):
        r = rng.random()
        mixed.append(get_lines[i] if r < 0.7 else list_lines[i] if r < 0.9 else post_lines[i])

    def both(name: str, lines: list[str]) -> None:
        path = write_lines(base / f"{name}.tsv", lines)
        w.files[name] = (path, path)

    both("get", get_lines)
    both("bare", [line.replace("/v1/agents/", "/bare/agents/") for line in get_lines])
    both("bare-minimal", [f"GET\t/bare/minimal/{o.id}/agents/{a}\t{o.token}" for o, a in gets])
    both("nodb", [line.replace("/v1/agents/", "/nodb/agents/") for line in get_lines])
    both("list", list_lines)
    both("post", post_lines)
    both("mixed", mixed)

    if loaded.has_tasks:
        # Each request moves a distinct task todo -> in_progress; warm-up uses other tasks.
        tasks = [(o, t) for o in orgs for t in o.tasks]
        rng.shuffle(tasks)
        tasks = tasks[:200_000]
        lines = [f"PATCH\t/v1/tasks/{t}\t{o.token}\t" + json.dumps({"status": "in_progress"}) for o, t in tasks]
        cut = len(lines) // 4
        w.files["task"] = (write_lines(base / "task.warm.tsv", lines[:cut]), write_lines(base / "task.tsv", lines[cut:]))

    seen: set[tuple[str, str]] = set()
    for org, agent in gets:
        if (org.token, agent) not in seen and len(w.pgbench_pairs) < PGBENCH_SCRIPTS:
            seen.add((org.token, agent))
            w.pgbench_pairs.append((hashlib.sha256(org.token.encode()).hexdigest(), str(org.id), agent))
    return w


# --- measurement -------------------------------------------------------------------------

@dataclass
class Result:
    scenario: str  # get, list, post, task, mixed, bare, nodb, pgbench
    target: str  # api, api-bypassrls, api-usage-off, bare, bare-minimal, nodb, pgbench, pgbench-*
    size: str
    workers: int | None
    variant: str = ""  # e.g. "audit trigger off"
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    sample: str = ""
    rss_mb: float | None = None
    statements: float | None = None
    cpu_api_ms: float | None = None
    cpu_pg_ms: float | None = None
    cpu_load_ms: float | None = None
    other_cpu_pct: float = 0.0
    top_statements: list[tuple[int, str]] = field(default_factory=list)

    @property
    def label(self) -> str:
        target = {"api": "API", "api-bypassrls": "API, BYPASSRLS role", "api-usage-off": "API, usage off",
                  "bare": "bare asyncpg", "bare-minimal": "bare asyncpg, minimal context",
                  "nodb": "Litestar, no DB", "pgbench": "pgbench",
                  "pgbench-bypassrls": "pgbench, BYPASSRLS role",
                  "pgbench-minimal": "pgbench, minimal context"}.get(self.target, self.target)
        return target + (f", {self.variant}" if self.variant else "")


SCENARIO_TITLES = {
    "get": "GET /v1/agents/{id}",
    "list": "GET /v1/agents?limit=50",
    "post": "POST /v1/agents",
    "task": "PATCH /v1/tasks/{id} (status)",
    "mixed": "mixed (70% get, 20% list, 10% post)",
    "bare": "GET /bare/agents/{id}",
    "bare-minimal": "GET /bare/minimal/{org}/agents/{id}",
    "nodb": "GET /nodb/agents/{id}",
    "pgbench": "GET /v1/agents/{id} transaction",
}


class Bench:
    def __init__(self, args: argparse.Namespace, cluster: pg.Cluster) -> None:
        self.args = args
        self.cluster = cluster
        self.results: list[Result] = []
        self.nonce = uuid.uuid4().hex[:8]
        self.count = 0
        self.load_at_start = " / ".join(f"{x:.2f}" for x in os.getloadavg())

    # statements -------------------------------------------------------------------------
    async def _reset_statements(self, admin_url: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute("select pg_stat_statements_reset()")
        finally:
            await conn.close()

    # Statements a client runs once per new connection (asyncpg's type introspection,
    # SQLAlchemy's dialect set-up): not part of any request.
    CONNECTION_SETUP = ("WITH RECURSIVE typeinfo_tree", "SELECT current_setting($1) AS cur, set_config(",
                        "SELECT set_config($2, $1, $3)", "select pg_catalog.version()", "select current_schema()",
                        "show transaction isolation level", "show standard_conforming_strings")

    # Statements of the API process that belong to no request: the usage recorder's
    # batches (its own connection, a statement per batch) and the rate limiter's reading
    # of an organization's quota (once a minute per organization, in the background).
    BACKGROUND = ("select app.record_usage(", "select requests, window_seconds from auth.rate_limit_of(")

    async def _read_statements(self, admin_url: str) -> tuple[float | None, list[tuple[int, str]]]:
        """Statements per request: the API roles' statements (connection set-up and
        background work excepted) per committed or rolled-back transaction, i.e. per
        request, whatever was in flight at the edges of the window."""
        conn = await asyncpg.connect(admin_url)
        try:
            rows = await conn.fetch(
                """
                select s.calls, s.query from pg_stat_statements s join pg_roles r on r.oid = s.userid
                 where s.dbid = (select oid from pg_database where datname = current_database())
                   and r.rolname = any($1::text[])
                 order by s.calls desc
                """,
                API_ROLES,
            )
        finally:
            await conn.close()
        per_request = [r for r in rows if not r["query"].startswith(self.CONNECTION_SETUP + self.BACKGROUND)]
        ends = sum(r["calls"] for r in per_request if r["query"].strip().upper() in ("COMMIT", "ROLLBACK"))
        total = sum(r["calls"] for r in per_request)
        return (total / ends if ends else None), [(r["calls"], " ".join(r["query"].split())[:160]) for r in rows[:10]]

    def postmaster(self) -> int | None:
        try:
            return self.cluster.postmaster_pid()
        except (OSError, ValueError):
            return None

    # one measured run -------------------------------------------------------------------
    async def _settle(self, admin_url: str, patience: float = 20.0) -> None:
        """Before a run: the WAL of the runs before written out (CHECKPOINT) and no
        autovacuum worker busy, so a run is not charged for its predecessor's cleanup
        (PostgreSQL's CPU is measured for the whole server)."""
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute("checkpoint")
            deadline = time.monotonic() + patience
            while time.monotonic() < deadline and await conn.fetchval(
                    "select count(*) from pg_stat_activity where backend_type = 'autovacuum worker'"):
                await asyncio.sleep(0.25)
        finally:
            await conn.close()

    def measure(self, result: Result, admin_url: str, run_load: Any, server: Server | None,
                statements: float | None = None) -> Result:
        """Warm up, then measure while sampling memory; run_load(seconds, warm) -> (proc, finish).
        ``statements`` replaces the pg_stat_statements count where that count is known wrong."""
        args = self.args
        asyncio.run(self._settle(admin_url))
        proc, finish = run_load(args.warmup, True)
        finish(proc)
        asyncio.run(self._reset_statements(admin_url))
        try:  # a load generator that runs on from its warm-up (pgbench): its CPU so far
            t = psutil.Process(proc.pid).cpu_times() if proc.poll() is None else None
            warm_load = t.user + t.system if t else 0.0
        except psutil.Error:
            warm_load = 0.0
        api_root = server.proc.pid if server and server.proc else None
        cpu0_api, cpu0_pg = tree_cpu(api_root), tree_cpu(self.postmaster())
        sys0 = psutil.cpu_times()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        rss: list[float] = []
        proc, finish = run_load(args.seconds, False)
        stop = threading.Event()

        def sample_memory() -> None:
            while not stop.wait(0.5):
                if server:
                    for p in server.workers_procs():
                        try:
                            rss.append(p.memory_info().rss / 2**20)
                        except psutil.Error:
                            pass

        sampler = threading.Thread(target=sample_memory, daemon=True)
        sampler.start()
        out = finish(proc)
        stop.set()
        sampler.join()
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        sys1 = psutil.cpu_times()
        cpu_api = tree_cpu(api_root) - cpu0_api
        cpu_pg = tree_cpu(self.postmaster()) - cpu0_pg
        cpu_load = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime) - warm_load
        busy = lambda t: sum(t) - t.idle - getattr(t, "iowait", 0)  # noqa: E731
        other = max(0.0, busy(sys1) - busy(sys0) - cpu_api - cpu_pg - cpu_load)
        per_request, top = asyncio.run(self._read_statements(admin_url))

        result.rps, result.p50_ms, result.p99_ms = out["rps"], out["p50_ms"], out["p99_ms"]
        result.requests, result.errors = out["requests"], out["errors"]
        result.statuses, result.sample = out.get("statuses", {}), out.get("sample", "")
        n = max(1, out["requests"])
        result.statements = statements if statements is not None else per_request
        result.top_statements = top
        result.rss_mb = max(rss) if rss else None
        result.cpu_api_ms = cpu_api * 1000 / n if server else None
        result.cpu_pg_ms = cpu_pg * 1000 / n
        result.cpu_load_ms = cpu_load * 1000 / n
        result.other_cpu_pct = 100 * other / (wall * (os.cpu_count() or 1))
        self.results.append(result)
        self.count += 1
        err = f", {result.errors} errors {result.statuses} {result.sample[:120]!r}" if result.errors else ""
        print(f"  [{self.count:2d}] {result.size:5s} {SCENARIO_TITLES[result.scenario]:38s} {result.label:32s}"
              f" w={result.workers or '-'} {result.rps:8.0f} req/s  p50 {result.p50_ms:6.2f} ms"
              f"  p99 {result.p99_ms:6.2f} ms  SQL/req {fmt(result.statements, '.2f')}{err}", flush=True)
        return result

    def http(self, server: Server, workload: Workload, scenario: str, target: str, admin_url: str,
             variant: str = "") -> Result:
        warm_file, file = workload[scenario]

        def run_load(seconds: float, warm: bool) -> tuple[subprocess.Popen, Any]:
            nonce = f"{self.nonce}{self.count}{'w' if warm else 'm'}"
            return (loadgen.start(server.url, warm_file if warm else file, self.args.concurrency, seconds, nonce),
                    loadgen.finish)

        result = Result(scenario=scenario, target=target, size=workload.size, workers=server.workers, variant=variant)
        return self.measure(result, admin_url, run_load, server)

    def pgbench(self, workload: Workload, db: pg.BenchDatabase, role: str = "tenant_api") -> Result:
        """Baseline 1: the API's SQL transaction for GET /v1/agents/{id}, prepared, at the
        same concurrency. One pgbench process runs warm-up and measurement back to back, so
        its connections are as warm as the API's pool (new connections would spend the
        window preparing statements and filling caches); only transactions that started in
        the measured window count. As bench_bypassrls it shows what RLS costs the database;
        as bench_minimal it runs the minimal-context transaction instead (BEGIN, one
        set_config, the same agent query under a plain policy, COMMIT)."""
        script_dir = OUT / "pgbench" / workload.size
        shutil.rmtree(script_dir, ignore_errors=True)
        script_dir.mkdir(parents=True)
        cmd_vars: list[str] = ["-D", f"rid={uuid.uuid4().hex}"]
        scripts: list[str] = []
        for k, (token_hash, org, agent) in enumerate(workload.pgbench_pairs):
            path = script_dir / f"get_{k}.sql"
            context = (f"select set_config('{pg.MINIMAL_SETTING}', :o{k}, true);\n" if role == pg.MINIMAL_ROLE else
                       "select status, token_id, organization_id, user_id, kind, role, scope_mask, project_ids, prefix,"
                       f" expires_at from auth.begin_request(:h{k}, NULL, NULL, :rid);\n")
            path.write_text(
                "BEGIN;\n" + context +
                "select agent.id, agent.project_id, agent.name, agent.type, agent.status, agent.template_id,"
                " agent.created_at, agent.updated_at"
                f" from agent where agent.organization_id = :o{k} and agent.id = :a{k};\n"
                "COMMIT;\n"
            )
            cmd_vars += ["-D", f"h{k}=\\x{token_hash}", "-D", f"o{k}={org}", "-D", f"a{k}={agent}"]
            scripts += ["-f", f"{path}@1"]
        log_dir = script_dir / "log"
        log_dir.mkdir()
        args = self.args
        cmd = [pg._pg_bin("pgbench"), "-h", self.cluster.socket_dir, "-U", role, "-n", "-M", "prepared",
               "-c", str(args.concurrency), "-j", "1", "-T", str(round(args.warmup + args.seconds) + 1),
               "-l", f"--log-prefix={log_dir}/tx", *cmd_vars, *scripts, db.name]
        window: dict[str, float] = {}

        def run_load(seconds: float, warm: bool) -> tuple[subprocess.Popen | None, Any]:
            if warm:
                window["started"] = time.time()
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                window["proc"] = proc  # type: ignore[assignment]
                return proc, lambda p: time.sleep(max(0.0, window["started"] + seconds - time.time()))
            window["start"], window["end"] = time.time(), time.time() + seconds
            return window["proc"], finish  # type: ignore[return-value]

        def finish(p: subprocess.Popen) -> dict:
            out, err = p.communicate(timeout=600)
            if p.returncode != 0:
                raise RuntimeError(f"pgbench failed: {err.strip()[-500:]}")
            lat = []
            lo, hi = window["start"], window["end"]
            for f in log_dir.iterdir():  # client tx_no latency_us script epoch_s epoch_us (at the end)
                for line in f.read_text().splitlines():
                    parts = line.split()
                    if len(parts) >= 6:
                        latency = int(parts[2])
                        begun = int(parts[4]) + int(parts[5]) / 1e6 - latency / 1e6
                        if lo <= begun < hi:
                            lat.append(latency)
            lat.sort()
            failed = next((int(line.split(":")[1].split()[0]) for line in out.splitlines()
                           if line.startswith("number of failed transactions")), 0)
            q = lambda x: lat[min(len(lat) - 1, int(x * len(lat)))] / 1000 if lat else 0.0  # noqa: E731
            return {"rps": len(lat) / (hi - lo), "p50_ms": q(0.5), "p99_ms": q(0.99), "requests": len(lat),
                    "errors": failed}

        target = {"tenant_api": "pgbench", pg.BYPASS_ROLE: "pgbench-bypassrls", pg.MINIMAL_ROLE: "pgbench-minimal"}[role]
        result = Result(scenario="pgbench", target=target, size=workload.size, workers=None)
        # pg_stat_statements counts a prepared BEGIN/COMMIT once, at PREPARE: the script's
        # own count (BEGIN, begin_request, the agent query, COMMIT) is the truth here.
        return self.measure(result, db.admin_url, run_load, None, statements=4.0)

    async def _sql(self, admin_url: str, sql: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def audit_trigger(self, db: pg.BenchDatabase, table: str, enabled: bool) -> None:
        asyncio.run(self._sql(db.admin_url, f"alter table {table} {'enable' if enabled else 'disable'} trigger audit"))


# --- the plan ------------------------------------------------------------------------------

def api_env(db: pg.BenchDatabase, url: str, args: argparse.Namespace, **extra: str) -> dict[str, str]:
    """The API's settings as an operator runs it (every default, its three logins), but the quota."""
    return {"DATABASE_URL": url, "LOGIN_DATABASE_URL": db.login_url, "JOBS_DATABASE_URL": db.jobs_url,
            "JWT_SECRET": JWT_SECRET, "DATABASE_POOL_SIZE": str(args.pool_size),
            "DATABASE_MAX_OVERFLOW": str(args.max_overflow), "RATE_LIMIT_REQUESTS": RATE_LIMIT_REQUESTS, **extra}


@dataclass
class DataSet:
    db: pg.BenchDatabase
    loaded: data.Loaded
    workload: Workload
    servers: dict[tuple[str, int], Server] = field(default_factory=dict)


def run_plan(bench: Bench, sets: dict[str, DataSet], usage: bool) -> None:
    """Every data set's servers run at once (idle ones cost nothing) so that the runs whose
    ratios carry targets (API vs bare, vs BYPASSRLS, vs usage off, large vs small) are
    measured in alternation, `rounds` times each: a burst of load from elsewhere on the
    machine then hits both sides of a ratio alike."""
    args = bench.args
    primary = args.workers[0]
    for size, ds in sets.items():
        env, add = api_env(ds.db, ds.db.api_url, args), ds.servers.__setitem__
        bare_env = {**env, "MINIMAL_DATABASE_URL": ds.db.minimal_url}
        for w in args.workers:
            add(("api", w), Server(f"{size}-api-w{w}", "tenant_api.asgi:create", w, env, kind=args.server))
            add(("bare", w), Server(f"{size}-bare-w{w}", "bench.bare:create", w, bare_env, kind=args.server))
        add(("api-bypassrls", primary), Server(f"{size}-api-bypassrls-w{primary}", "tenant_api.asgi:create", primary,
                                               api_env(ds.db, ds.db.bypass_url, args), kind=args.server))
        if usage:
            add(("api-usage-off", primary), Server(f"{size}-api-usage-off-w{primary}", "tenant_api.asgi:create",
                                                   primary, api_env(ds.db, ds.db.api_url, args, **{USAGE_ENV: "0"}),
                                                   kind=args.server))
    servers = [s for ds in sets.values() for s in ds.servers.values()]
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready()
        print(f"  servers ready ({args.server}): {', '.join(f'{s.name}' for s in servers)}", flush=True)

        def http(ds: DataSet, target: str, scenario: str, workers: int = primary, variant: str = "") -> None:
            kind = "bare" if target in ("bare", "bare-minimal", "nodb") else target
            bench.http(ds.servers[(kind, workers)], ds.workload, scenario, target, ds.db.admin_url, variant)

        for round_ in range(args.rounds):
            for ds in sets.values():
                runs: list[Any] = [
                    lambda ds=ds: bench.pgbench(ds.workload, ds.db),
                    lambda ds=ds: bench.pgbench(ds.workload, ds.db, role=pg.BYPASS_ROLE),
                    lambda ds=ds: bench.pgbench(ds.workload, ds.db, role=pg.MINIMAL_ROLE),
                    lambda ds=ds: http(ds, "bare", "bare"),
                    lambda ds=ds: http(ds, "bare-minimal", "bare-minimal"),
                    lambda ds=ds: http(ds, "api", "get"),
                    lambda ds=ds: http(ds, "api-bypassrls", "get"),
                ]
                if usage:
                    runs.append(lambda ds=ds: http(ds, "api-usage-off", "get"))
                # Every other round in reverse: whatever the runs before leave the database
                # doing (autovacuum, the usage recorder's last batch) falls on each side of
                # a ratio alike, not always on the side that comes first.
                for run in (runs if round_ % 2 == 0 else reversed(runs)):
                    run()
        for ds in sets.values():
            http(ds, "nodb", "nodb")
            http(ds, "api", "list")
            for _ in range(args.rounds):
                http(ds, "api", "post")
                if usage:
                    http(ds, "api-usage-off", "post")
                if args.full:
                    bench.audit_trigger(ds.db, "agent", False)
                    try:
                        http(ds, "api", "post", variant="audit trigger off")
                    finally:
                        bench.audit_trigger(ds.db, "agent", True)
            if ds.loaded.has_tasks:
                for _ in range(args.rounds):
                    asyncio.run(data.reset_tasks(ds.db.admin_url))
                    http(ds, "api", "task")
                if args.full:
                    asyncio.run(data.reset_tasks(ds.db.admin_url))
                    bench.audit_trigger(ds.db, "task", False)
                    try:
                        http(ds, "api", "task", variant="audit trigger off")
                    finally:
                        bench.audit_trigger(ds.db, "task", True)
            http(ds, "api", "mixed")
            for w in args.workers[1:]:
                http(ds, "bare", "bare", workers=w)
                http(ds, "api", "get", workers=w)
    finally:
        for s in servers:
            s.stop()


# --- the report ----------------------------------------------------------------------------

def _mean(results: list[Result], attr: str) -> float | None:
    values = [getattr(r, attr) for r in results if getattr(r, attr) is not None]
    return statistics.fmean(values) if values else None


def pick(results: list[Result], **match: Any) -> list[Result]:
    return [r for r in results if all(getattr(r, k) == v for k, v in match.items())]


def fmt(value: float | None, spec: str = ".0f", none: str = "–") -> str:
    return none if value is None else format(value, spec)


def table(results: list[Result]) -> list[str]:
    """One row per (size, scenario, target, variant, workers); repeated runs averaged."""
    lines = [
        "| data | scenario | against | workers | runs | req/s | p50 ms | p99 ms | errors | RSS MB/worker"
        " | SQL/req | API CPU ms/req | PostgreSQL CPU ms/req | load gen. CPU ms/req | other CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys: list[tuple] = []
    for r in results:
        key = (r.size, r.scenario, r.target, r.variant, r.workers)
        if key not in keys:
            keys.append(key)
    for size, scenario, target, variant, workers in keys:
        group = pick(results, size=size, scenario=scenario, target=target, variant=variant, workers=workers)
        r0 = group[0]
        cpu = f"{fmt(_mean(group, 'cpu_api_ms'), '.3f')} | {fmt(_mean(group, 'cpu_pg_ms'), '.3f')} | " \
              f"{fmt(_mean(group, 'cpu_load_ms'), '.3f')}"
        rss = max((r.rss_mb for r in group if r.rss_mb is not None), default=None)
        lines.append(
            f"| {size} | {SCENARIO_TITLES[scenario]} | {r0.label} | {workers or '–'} | {len(group)} "
            f"| {fmt(_mean(group, 'rps'))} | {fmt(_mean(group, 'p50_ms'), '.2f')} | {fmt(_mean(group, 'p99_ms'), '.2f')} "
            f"| {sum(r.errors for r in group)} | {fmt(rss)} | {fmt(_mean(group, 'statements'), '.2f')} | {cpu} "
            f"| {fmt(_mean(group, 'other_cpu_pct'), '.0f')}% |"
        )
    return lines


def ratios(results: list[Result], args: argparse.Namespace, usage: bool, task_notes: dict[str, str]) -> list[str]:
    """Every ratio the issue sets a target for, from runs of this same bench. The verdict
    reads the measured rates; "from CPU cost" recomputes the ratio from CPU time per
    request (all parties), which another process's load on the machine disturbs less."""
    primary = args.workers[0]
    rows = ["| measure | value | target | verdict |", "|---|---|---|---|"]

    def rps(**m: Any) -> float | None:
        """The mean rate, or None when the runs failed: a rate of errors proves nothing."""
        group = pick(results, **m)
        if sum(r.errors for r in group) > 0.01 * sum(r.requests for r in group):
            return None
        return _mean(group, "rps")

    def cpu(**m: Any) -> float | None:
        """CPU milliseconds per request, all parties (API, PostgreSQL, load generator)."""
        group = pick(results, **m)
        parts = [_mean(group, a) for a in ("cpu_api_ms", "cpu_pg_ms", "cpu_load_ms")]
        return sum(p for p in parts if p is not None) if group else None

    def est(a: dict[str, Any], b: dict[str, Any], cost: bool = False) -> str:
        """rate(a) / rate(b) again, from CPU cost per request: what it would be on a machine
        whose cores were all ours (robust to other load; shown beside the measured value)."""
        ca, cb = cpu(**a), cpu(**b)
        if not ca or not cb:
            return ""
        other = _mean(pick(results, **a) + pick(results, **b), "other_cpu_pct") or 0
        note = f", other load {other:.0f}%" if other >= 10 else ""
        value = f"{1 - cb / ca:+.1%}" if cost else f"{cb / ca:.2f}"
        return f" (from CPU cost: {value}{note})"

    def verdict(ok: bool | None) -> str:
        return "–" if ok is None else ("met" if ok else "**not met**")

    def row(name: str, value: str, target: str, ok: bool | None) -> None:
        rows.append(f"| {name} | {value} | {target} | {verdict(ok)} |")

    def ratio(name: str, a: dict[str, Any], b: dict[str, Any], target: str | None = None) -> None:
        """rate(a) / rate(b) against TARGETS[target] (>=), or reported."""
        ra, rb = rps(**a), rps(**b)
        if not ra or not rb:
            return
        value = ra / rb
        if target is None:
            row(name, f"{value:.2f}{est(a, b)}", "reported", None)
        else:
            row(name, f"{value:.2f}{est(a, b)}", f">= {TARGETS[target]:.2f}", value >= TARGETS[target])

    def cost(name: str, on: dict[str, Any], off: dict[str, Any], target: str | None) -> None:
        """1 - rate(on) / rate(off): what a feature costs in throughput."""
        r_on, r_off = rps(**on), rps(**off)
        if not r_on or not r_off:
            return
        value = 1 - r_on / r_off
        if target is None:
            row(name, f"{value:+.1%}{est(on, off, cost=True)}", "reported", None)
        else:
            row(name, f"{value:+.1%}{est(on, off, cost=True)}", f"<= {TARGETS[target]:.0%}", value <= TARGETS[target])

    for size in dict.fromkeys(r.size for r in results):
        sz = dict(size=size)
        get_ = dict(scenario="get", target="api", workers=primary, variant="", **sz)
        pgb = dict(scenario="pgbench", target="pgbench", **sz)
        pgb_min = dict(scenario="pgbench", target="pgbench-minimal", **sz)
        pgb_bypass = dict(scenario="pgbench", target="pgbench-bypassrls", **sz)
        bare = dict(scenario="bare", target="bare", workers=primary, **sz)
        bare_min = dict(scenario="bare-minimal", target="bare-minimal", workers=primary, **sz)
        ratio(f"{size}: pgbench, API transaction / minimal-context transaction", pgb, pgb_min, "pgbench_vs_minimal")
        cost(f"{size}: RLS cost in the database (pgbench vs BYPASSRLS)", pgb, pgb_bypass, "rls_cost")
        ratio(f"{size}: GET /v1/agents/{{id}} / bare endpoint, API transaction (w={primary})", get_, bare,
              "api_vs_bare")
        for w in args.workers[1:]:
            ratio(f"{size}: GET /v1/agents/{{id}} / bare endpoint, API transaction (w={w})",
                  {**get_, "workers": w}, {**bare, "workers": w})
        ratio(f"{size}: bare endpoint, API transaction / minimal context", bare, bare_min)
        ratio(f"{size}: GET /v1/agents/{{id}} / bare endpoint, minimal context", get_, bare_min)
        ratio(f"{size}: GET /v1/agents/{{id}} / pgbench (w={primary})", get_, pgb)
        ratio(f"{size}: GET /v1/agents/{{id}} / Litestar without DB", get_, dict(scenario="nodb", target="nodb", **sz))
        cost(f"{size}: RLS cost (GET, API vs API as BYPASSRLS)", get_,
             dict(scenario="get", target="api-bypassrls", **sz), None)
        if usage:
            for scenario in ("get", "post"):
                cost(f"{size}: usage recording cost ({scenario.upper()})",
                     dict(scenario=scenario, target="api", variant="", **sz),
                     dict(scenario=scenario, target="api-usage-off", **sz), "usage_cost")
        else:
            row(f"{size}: usage recording", "not present", f"<= {TARGETS['usage_cost']:.0%}", None)
        post = dict(scenario="post", target="api", variant="", **sz)
        ratio(f"{size}: POST /v1/agents / GET /v1/agents/{{id}}", post, get_, "post_vs_get")
        task = dict(scenario="task", target="api", variant="", **sz)
        if pick(results, **task):
            ratio(f"{size}: PATCH /v1/tasks/{{id}} (status) / GET /v1/agents/{{id}}", task, get_, "task_vs_get")
        elif task_notes.get(size):
            row(f"{size}: task status change", task_notes[size], "–", None)
        cost(f"{size}: audit trigger cost (POST)", post, dict(scenario="post", target="api",
             variant="audit trigger off", **sz), "audit_cost")
        cost(f"{size}: audit trigger cost (task status)", task, dict(scenario="task", target="api",
             variant="audit trigger off", **sz), "audit_cost")
        for scenario in ("get", "list"):
            st = _mean(pick(results, scenario=scenario, target="api", **sz), "statements")
            if st is not None:
                row(f"{size}: SQL statements per {SCENARIO_TITLES[scenario]}", f"{st:.2f}",
                    f"<= {TARGETS['statements_per_read']}", st <= TARGETS["statements_per_read"] + 0.005)
        for scenario in ("get", "post", "task"):
            group = pick(results, scenario=scenario, target="api", variant="", workers=primary, **sz)
            api_ms, pg_ms = _mean(group, "cpu_api_ms"), _mean(group, "cpu_pg_ms")
            if api_ms is not None and pg_ms is not None:
                row(f"{size}: CPU per {SCENARIO_TITLES[scenario]}", f"API {api_ms:.3f} ms, PostgreSQL {pg_ms:.3f} ms",
                    "reported", None)
    failed: dict[tuple, list[Result]] = {}
    for r in results:
        failed.setdefault((r.size, r.scenario, r.label, r.workers), []).append(r)
    for (size, scenario, label, workers), group in failed.items():
        errors, requests = sum(r.errors for r in group), sum(r.requests for r in group)
        if errors > 0.01 * requests:
            sample = next((r.sample for r in group if r.sample), "")[:120].replace("|", "/").replace("\n", " ")
            row(f"{size}: {SCENARIO_TITLES[scenario]}, {label}", f"{errors} of {requests} requests failed: {sample}",
                "no errors", False)
    p50 = {s: _mean(pick(results, size=s, scenario="get", target="api", workers=primary), "p50_ms") for s in ("small", "large")}
    if p50["small"] and p50["large"]:
        value = p50["large"] / p50["small"]
        row("p50 GET large / small (10,000 vs 10 organizations)", f"{value:.2f} ({p50['large']:.2f} / {p50['small']:.2f} ms)",
            f"<= {TARGETS['p50_large_vs_small']:.2f}", value <= TARGETS["p50_large_vs_small"])
    else:
        row("p50 GET large / small", "not measured (make bench-full)", f"<= {TARGETS['p50_large_vs_small']:.2f}", None)
    rss = max((r.rss_mb for r in results if r.target.startswith("api") and r.rss_mb), default=None)
    if rss:
        row("API resident memory per worker (max under load)", f"{rss:.0f} MB", f"<= {TARGETS['rss_mb']} MB",
            rss <= TARGETS["rss_mb"])
    return rows


def server_version(kind: str) -> str:
    try:
        from importlib.metadata import version

        return f"{kind} {version(kind)}"
    except Exception:
        return kind


def report(bench: Bench, args: argparse.Namespace, usage: bool, loads: dict[str, data.Loaded],
           workloads: dict[str, Workload], started: float) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = "full" if args.full else "quick"
    load_desc = loadgen.describe()
    pg_version = bench.cluster.version()
    lines = [
        f"## {now} · commit {commit()} · {mode}" + (f" · {args.label}" if args.label else ""),
        "",
        f"Machine: {os.cpu_count()} cores ({cpu_model()}), {psutil.virtual_memory().total / 2**30:.0f} GiB;"
        f" PostgreSQL {pg_version} (embedded, Unix socket, pg_stat_statements, synchronous_commit on);"
        f" {server_version(args.server)}" + (" (httptools, uvloop)" if args.server == "uvicorn" else " (uvloop)") +
        f", workers {'/'.join(map(str, args.workers))} (first = main runs), pool {args.pool_size}+{args.max_overflow}"
        f" per worker; load: {load_desc}, {args.concurrency} connections, {args.warmup:g} s warm-up,"
        f" {args.seconds:g} s measured, {args.rounds} round(s) of the paired runs; load average at start"
        f" {bench.load_at_start}.",
        "",
        "API settings: every default of `tenant-api serve` (JSON access log on stderr, to a file here; metrics;"
        " usage recording; rate limiting in memory) but RATE_LIMIT_REQUESTS=" + RATE_LIMIT_REQUESTS +
        " (the default quota, 600 a minute per credential, would refuse this load: the limiter still counts"
        " every request and sends its headers).",
        "",
    ]
    for size, loaded in loads.items():
        rows = ", ".join(f"{v:,} {k}" for k, v in loaded.rows.items() if v)
        lines.append(f"Data {size}: {rows}; loaded in {loaded.seconds:.1f} s; requests spread over"
                     f" {workloads[size].sample_orgs} organizations' tokens; tasks: {loaded.task_status}.")
    lines += ["", *table(bench.results), "", *ratios(bench.results, args, usage, {s: l.task_status for s, l in loads.items() if not l.has_tasks}), ""]
    if args.note:
        lines += [args.note, ""]
    lines.append(f"Total bench time {time.perf_counter() - started:.0f} s.")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="small and large data sets, longer runs")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=float)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--workers", default=str(os.cpu_count() or 1),
                        help="worker counts, e.g. 2,1; the first (default: one per core) is used for every scenario")
    parser.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn")
    parser.add_argument("--pool-size", type=int, help="per worker; default: the API's (DATABASE_POOL_SIZE)")
    parser.add_argument("--max-overflow", type=int, help="default: the API's (DATABASE_MAX_OVERFLOW)")
    parser.add_argument("--sizes", help="small,large (default: small; --full: both)")
    parser.add_argument("--label", default="", help="a few words for the RESULTS.md heading")
    parser.add_argument("--note", default="", help="a paragraph appended under the tables")
    parser.add_argument("--no-append", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]
    from tenant_api.settings import Settings

    defaults = Settings.from_env().database  # the bare endpoint gets the API's pool size too
    args.pool_size = args.pool_size if args.pool_size is not None else defaults.pool_size
    args.max_overflow = args.max_overflow if args.max_overflow is not None else defaults.max_overflow
    args.warmup = args.warmup if args.warmup is not None else (3 if args.full else 2)
    args.seconds = args.seconds if args.seconds is not None else (12 if args.full else 6)
    args.rounds = args.rounds if args.rounds is not None else (3 if args.full else 2)
    sizes = (args.sizes or ("small,large" if args.full else "small")).split(",")

    started = time.perf_counter()
    for d in ("logs", "requests", "pgbench"):
        (OUT / d).mkdir(parents=True, exist_ok=True)
    print(f"bench: {'full' if args.full else 'quick'}; load generator: {loadgen.describe()}", flush=True)
    if loadgen.available() != "wrk":
        print("  wrk not found (apt-get install wrk): using bench/loadgen.py", flush=True)
    usage = usage_switch_present()
    print(f"  usage recording: {'switch ' + USAGE_ENV + ' present' if usage else 'not present'}", flush=True)

    cluster = pg.start(OUT / "pg")
    bench = Bench(args, cluster)
    loads: dict[str, data.Loaded] = {}
    workloads: dict[str, Workload] = {}
    try:
        sets: dict[str, DataSet] = {}
        for size in sizes:
            spec = {"small": data.SMALL, "large": data.LARGE}[size]
            db = pg.create_database(cluster, f"bench_{size}")
            loaded = asyncio.run(data.load(db.admin_url, spec))
            loads[size], workloads[size] = loaded, build_workload(loaded)
            sets[size] = DataSet(db, loaded, workloads[size])
            rows = ", ".join(f"{v:,} {k}" for k, v in loaded.rows.items() if v)
            print(f"  data {size}: {rows} in {loaded.seconds:.1f} s; tasks: {loaded.task_status}", flush=True)
            if not loaded.has_tasks:
                print(f"  task scenario skipped: {loaded.task_status}", flush=True)
        run_plan(bench, sets, usage)
        text = report(bench, args, usage, loads, workloads, started)
    finally:
        cluster.stop()
    print()
    print(text)
    (OUT / "last-run.json").write_text(json.dumps([r.__dict__ for r in bench.results], indent=1, default=str))
    if not args.no_append:
        if not RESULTS.exists():
            RESULTS.write_text("# Benchmark results\n\nAppended by `make bench` / `make bench-full` (bench/run.py).\n\n")
        with RESULTS.open("a") as f:
            f.write("\n" + text)
        print(f"appended to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
