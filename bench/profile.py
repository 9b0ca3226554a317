"""Where the API's CPU goes on one scenario, under the bench's load.

    python -m bench.profile get [--seconds 10] [--workers 1] [--env KEY=VALUE ...]

Starts the bench's PostgreSQL with the small data set (bench/out/pg, as bench.run does),
one API server (`tenant_api.asgi:create`, the bench's settings), wrk at the bench's
concurrency, and py-spy (`pip install py-spy`: a tool, not a dependency) on the
serving worker(s). Writes bench/out/profile-<scenario>.txt (collapsed stacks) and prints
the functions with the largest inclusive and own share of the samples. Take the CPU lock
(/work/tools/cpulock exclusive ...): it is a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import asyncpg

from bench import data, loadgen, pg
from bench.run import OUT, Server, api_env, build_workload, tree_cpu


def _sql(url: str, query: str) -> list:
    async def go() -> list:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetch(query)
        finally:
            await conn.close()

    return asyncio.run(go())


def statements(url: str, requests: int, top: int = 25) -> str:
    """pg_stat_statements since the reset, per request: nested statements (functions,
    triggers) are counted inside their callers' time as well as on their own line."""
    rows = _sql(url, "select calls, total_exec_time, rows, query from pg_stat_statements"
                     " where dbid = (select oid from pg_database where datname = current_database())"
                     f" order by total_exec_time desc limit {top}")
    lines = [f"{'ms/request':>10} {'calls/req':>9} {'us/call':>8}  statement"]
    for r in rows:
        query = " ".join(r["query"].split())[:150]
        lines.append(f"{r['total_exec_time'] / max(1, requests):10.4f} {r['calls'] / max(1, requests):9.2f}"
                     f" {1000 * r['total_exec_time'] / max(1, r['calls']):8.1f}  {query}")
    return "\n".join(lines)


def summarize(path: str, top: int = 45) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            frames = [fr.split(" (")[0] + " " + fr.rsplit("/", 1)[-1].split(":")[0].rstrip(")")
                      for fr in stack.split(";")]
            for fr in set(frames):
                inclusive[fr] += n
            own[frames[-1]] += n
    out = [f"{total} samples", "", "inclusive:"]
    out += [f"  {100 * n / total:5.1f}%  {fr}" for fr, n in inclusive.most_common(top)]
    out += ["", "own:"]
    out += [f"  {100 * n / total:5.1f}%  {fr}" for fr, n in own.most_common(top)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=["get", "list", "post", "task", "bare", "bare-minimal"])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--server", default="uvicorn")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the API server")
    parser.add_argument("--no-spy", action="store_true", help="load only (CPU per request printed)")
    parser.add_argument("--sql", action="append", default=[],
                        help="run this as the superuser once the data is loaded (an experiment: an index, a setting)")
    parser.add_argument("--statements", action="store_true",
                        help="also where PostgreSQL's time goes: pg_stat_statements with track=all"
                             " (statements inside functions and triggers too), per request")
    args = parser.parse_args()
    if not args.no_spy and not shutil.which("py-spy", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])):
        sys.exit("py-spy is not installed (pip install py-spy)")
    from tenant_api.settings import Settings

    defaults = Settings.from_env().database
    ns = argparse.Namespace(pool_size=defaults.pool_size, max_overflow=defaults.max_overflow)
    (OUT / "logs").mkdir(parents=True, exist_ok=True)
    cluster = pg.start(OUT / "pg")
    server = None
    try:
        db = pg.create_database(cluster, "bench_profile")
        if args.statements:
            _sql(db.admin_url, "alter database bench_profile set pg_stat_statements.track = 'all'")
        loaded = asyncio.run(data.load(db.admin_url, data.SMALL))
        workload = build_workload(loaded)
        for query in args.sql:
            _sql(db.admin_url, query)
        env = {**api_env(db, db.api_url, ns), "MINIMAL_DATABASE_URL": db.minimal_url, **dict(e.split("=", 1) for e in args.env)}
        app = "bench.bare:create" if args.scenario.startswith("bare") else "tenant_api.asgi:create"
        server = Server(f"profile-{args.scenario}", app, args.workers, env, kind=args.server)
        server.start()
        server.wait_ready()
        warm, measured = workload[args.scenario]
        loadgen.finish(loadgen.start(server.url, warm, args.concurrency, 3, "warm"))
        if args.scenario == "task":
            asyncio.run(data.reset_tasks(db.admin_url))
        workers = server.workers_procs()
        out = OUT / f"profile-{args.scenario}.txt"
        spies = []
        if not args.no_spy:
            for k, w in enumerate(workers):
                spies.append(subprocess.Popen(
                    [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(w.pid), "--duration", str(round(args.seconds)), "--rate", "200",
                     "--format", "raw", "--nonblocking", "--output", f"{out}.{k}"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if args.statements:
            _sql(db.admin_url, "select pg_stat_statements_reset()")
        cpu0 = sum(sum(w.cpu_times()[:2]) for w in workers)
        pg0 = tree_cpu(cluster.postmaster_pid())
        t0 = time.perf_counter()
        result = loadgen.finish(loadgen.start(server.url, measured, args.concurrency, args.seconds, "m"))
        if server.env.get("AUDIT_USAGE_ENABLED", "1") != "0":
            time.sleep(1.5)  # the usage recorder's last batch of the window
        cpu = sum(sum(w.cpu_times()[:2]) for w in workers) - cpu0
        pg_cpu = tree_cpu(cluster.postmaster_pid()) - pg0
        for s in spies:
            s.wait()
        print(f"{args.scenario}: {result['rps']:.0f} req/s, {result['errors']} errors, "
              f"API CPU {1000 * cpu / max(1, result['requests']):.3f} ms/request, PostgreSQL CPU"
              f" {1000 * pg_cpu / max(1, result['requests']):.3f} ms/request"
              f" ({time.perf_counter() - t0:.1f} s)")
        if args.statements:
            print(statements(db.admin_url, result["requests"]))
        if spies:
            with open(out, "w") as f:
                for k in range(len(spies)):
                    f.write(open(f"{out}.{k}").read())
            print(summarize(str(out)))
    finally:
        if server:
            server.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
