"""What recording usage costs (issue: auditors' token usage).

    python bench/usage_recording.py [--requests 2000] [--rounds 4]

Runs in-process against a fresh database (TEST_DATABASE_URL, a superuser URL, or the
embedded PostgreSQL), with usage recording off and on, alternating rounds so that the
load of the shared machine falls on both alike. Measures:

* request latency (GET /v1/agents, sequential, in-process ASGI) and the API process's
  CPU time per request (less sensitive to the rest of the machine), off vs on;
* statements on the request's own connection (must be equal: no round trip added);
* the request-side cost of building and queueing one record (no I/O);
* the writer's database cost per record and per batch (app.record_usage).

The full harness (`make bench`, bench/run.py) also runs a server with
AUDIT_USAGE_ENABLED=0 beside the normal one and reports both under load.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from litestar.testing import AsyncTestClient  # noqa: E402
from sqlalchemy import event  # noqa: E402

from tenant_api.app import create_app  # noqa: E402
from tenant_api.audit.usage import UsageRecorder, usage_row  # noqa: E402
from tenant_api.db import migrate  # noqa: E402
from tenant_api.db.bootstrap import bootstrap  # noqa: E402
from tenant_api.db.context import Principal  # noqa: E402
from tenant_api.settings import Settings, asyncpg_url  # noqa: E402


async def run(admin_url: str, requests: int, rounds: int) -> None:
    name = f"usage_bench_{uuid.uuid4().hex[:6]}"
    result = await bootstrap(admin_url, database=name, owner_password="owner-pw", api_password="api-pw")
    await asyncio.to_thread(migrate.upgrade, asyncpg_url(result.owner_url))
    settings = (Settings().with_database(url=asyncpg_url(result.api_url), pool_size=5)
                .with_auth(jwt_secret="bench-" + "k" * 40))

    from tests.support.tenants import signup  # the same signup the tests use

    async with AsyncTestClient(create_app(settings)) as c:
        tenant = await signup(c)
    latencies: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, float] = {False: 0.0, True: 0.0}  # this process (API + writer thread), not PostgreSQL
    statements: dict[bool, int] = {}
    written = flushes = 0
    db_seconds = 0.0
    for _ in range(rounds):
        for record in (False, True):
            app = create_app(settings.with_audit(record_usage=record))
            count = [0]
            event.listen(app.state.engine.sync_engine, "before_cursor_execute", lambda *a: count.__setitem__(0, count[0] + 1))
            async with AsyncTestClient(app) as c:
                for _ in range(50):  # warm the pool and the statement caches
                    await c.get("/v1/agents", headers=tenant.token_auth)
                count[0] = 0
                cpu0 = time.process_time()
                for _ in range(requests):
                    t0 = time.perf_counter()
                    r = await c.get("/v1/agents", headers=tenant.token_auth)
                    latencies[record].append(time.perf_counter() - t0)
                    assert r.status_code == 200
                statements[record] = count[0] / requests
                await asyncio.to_thread(app.state.usage.flush)  # the writer's CPU counts too
                cpu[record] += time.process_time() - cpu0
            recorder: UsageRecorder = app.state.usage
            written, flushes = written + recorder.written, flushes + recorder.flushes
            db_seconds += recorder.flush_seconds_total

    # The request side alone: build the record and queue it.
    principal = Principal("ok", uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "api", "owner", frozenset(), None,
                          "tapi_abcdef", None)
    scope = {"method": "GET", "path_template": "/v1/agents/{item_id}", "client": ("127.0.0.1", 5000),
             "headers": [(b"user-agent", b"bench/1.0")], "state": {"request_id": uuid.uuid4().hex,
                                                                   "principal": principal}}
    sink = UsageRecorder(settings.database, max_pending=10**9)
    sink.start = lambda: None  # type: ignore[method-assign]  # measure the queueing only
    n = 200_000
    t0 = time.perf_counter()
    for _ in range(n):
        sink.record(usage_row(scope, 200, time.time(), 0.001))  # type: ignore[arg-type]
    per_record_us = (time.perf_counter() - t0) / n * 1e6

    # The writer alone: 20,000 records in batches of 500.
    bulk = UsageRecorder(settings.database, flush_seconds=3600, batch_size=500)
    bulk.start()
    row = usage_row(scope, 200, time.time(), 0.001)
    row["organization_id"] = tenant.organization_id
    for _ in range(20_000):
        bulk.record(dict(row))
    t0 = time.perf_counter()
    bulk.flush(120)
    bulk_seconds = time.perf_counter() - t0
    bulk.close()

    def ms(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100)[int(q) - 1] * 1000

    off, on = latencies[False], latencies[True]
    print(f"| measure (GET /v1/agents, {rounds}x{requests} sequential requests each) | usage off | usage on | delta |")
    print("|---|---|---|---|")
    print(f"| mean latency ms | {statistics.mean(off) * 1000:.3f} | {statistics.mean(on) * 1000:.3f} |"
          f" {(statistics.mean(on) - statistics.mean(off)) * 1000:+.3f} |")
    print(f"| p50 latency ms | {ms(off, 50):.3f} | {ms(on, 50):.3f} | {ms(on, 50) - ms(off, 50):+.3f} |")
    print(f"| p99 latency ms | {ms(off, 99):.3f} | {ms(on, 99):.3f} | {ms(on, 99) - ms(off, 99):+.3f} |")
    total = rounds * requests
    print(f"| API process CPU ms per request (incl. the writer thread) | {cpu[False] / total * 1000:.3f} |"
          f" {cpu[True] / total * 1000:.3f} | {(cpu[True] - cpu[False]) / total * 1000:+.3f} |")
    print(f"| statements per request on the request's connection | {statements[False]:.2f} |"
          f" {statements[True]:.2f} | {statements[True] - statements[False]:+.2f} |")
    print()
    print(f"- request side (build + queue one record, no I/O): {per_record_us:.2f} µs per request")
    if written:
        print(f"- writer during the runs: {written} records in {flushes} batches,"
              f" {db_seconds / written * 1e6:.1f} µs of writer wall time per record")
    print(f"- writer in bulk: 20,000 records in batches of 500: {bulk_seconds:.2f} s,"
          f" {bulk_seconds / 20_000 * 1e6:.1f} µs per record, {bulk_seconds / 40 * 1000:.1f} ms per batch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    import os

    if url := os.environ.get("TEST_DATABASE_URL"):
        asyncio.run(run(url, args.requests, args.rounds))
        return
    from tenant_api.db import embedded

    with tempfile.TemporaryDirectory(prefix="usage-bench-") as tmp:
        asyncio.run(run(embedded.start(Path(tmp) / "pg", delete_on_exit=True), args.requests, args.rounds))


if __name__ == "__main__":
    main()
