"""tenant-api: the operators' command line.

  tenant-api dev               what `make run` does: embedded PostgreSQL (unless
                               DATABASE_URL is set), migrations, demo organization,
                               a fresh demo token, then serve on 127.0.0.1:8000
  tenant-api bootstrap         create roles and database (as a superuser: ADMIN_DATABASE_URL;
                               OWNER_PASSWORD, API_PASSWORD, and WORKER_/JOBS_/LOGIN_PASSWORD
                               or new random ones, whose URLs it prints once)
  tenant-api migrate           apply migrations and policies as the owner (OWNER_DATABASE_URL);
                               --down-to REV undoes the revisions after REV (rolling back)
  tenant-api serve             serve the API (DATABASE_URL, LOGIN_DATABASE_URL,
                               JOBS_DATABASE_URL, JWT_SECRET)
  tenant-api scheduler         turn due job schedules into jobs, seal the audit trail, purge
                               what retention allows, return lost runner leases to the queue,
                               deliver webhooks (WORKER_DATABASE_URL, JWT_SECRET; run one or more)
  tenant-api runner --url URL  the reference runner: claims command jobs and runs them
                               (RUNNER_TOKEN: an API token with tasks:write; --help)
  tenant-api create-user       sign up a user with their own organization
  tenant-api openapi           print the OpenAPI document
  tenant-api rate-limit ORG --requests N --window S | --clear
                               an organization's quota per credential (OWNER_DATABASE_URL)
  tenant-api audit seal        seal every final, unsealed audit event (WORKER_DATABASE_URL or
                               OWNER_DATABASE_URL); the scheduler runs the same
  tenant-api audit purge --older-than 365d
                               delete sealed audit events older than the window, leaving
                               a purge record in each chain (OWNER_DATABASE_URL)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import uuid

from tenant_api.server import metrics_port, serve, uvicorn_options
from tenant_api.settings import Settings


def cmd_serve(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    if settings.server.workers > 1:
        import tempfile

        import uvicorn

        # Workers count into one directory so any of them answers /metrics for all
        # (prometheus-client's multiprocess mode; set before any worker imports it).
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="tenant-api-metrics-"))
        if not settings.rate_limit.redis_url:
            print("tenant-api: WORKERS>1 without REDIS_URL: each worker counts rate limits on its own",
                  file=sys.stderr)
        metrics_port(settings)
        # Each worker builds its own app (and pool) from the environment.
        uvicorn.run("tenant_api.asgi:create", workers=settings.server.workers, factory=True,
                    **uvicorn_options(settings))  # type: ignore[arg-type]
    else:
        serve(settings)


def cmd_scheduler(args: argparse.Namespace) -> None:
    from tenant_api import scheduler
    from tenant_api.ops.logs import configure

    settings = Settings.from_env()
    configure(settings.observability)
    if not settings.database.worker_url:
        sys.exit("WORKER_DATABASE_URL (tenant_worker, the scheduler process's login) is required")
    metrics_port(settings)
    worker = settings.database.worker_database()
    scheduler.main(worker, interval=args.interval, batch=args.batch, settings=settings.with_database(**vars(worker)))


def cmd_migrate(args: argparse.Namespace) -> None:
    from tenant_api.db import migrate

    settings = Settings.from_env()
    if not settings.database.owner_url:
        sys.exit("OWNER_DATABASE_URL is required: migrations run as the schema owner, never as the API role")
    if args.down_to:
        # Rolling back a release (docs/operating.md): this release's revisions undo
        # themselves; the previous release's `tenant-api migrate` then applies its policies.
        migrate.downgrade(settings.database.owner_url, args.down_to,
                          lock_timeout_seconds=settings.database.migration_lock_timeout_seconds)
        return
    migrate.upgrade(settings.database.owner_url, args.revision,
                    lock_timeout_seconds=settings.database.migration_lock_timeout_seconds)


def cmd_bootstrap(args: argparse.Namespace) -> None:
    from tenant_api.db.bootstrap import bootstrap

    admin = os.environ.get("ADMIN_DATABASE_URL")
    if not admin:
        sys.exit("ADMIN_DATABASE_URL (a superuser) is required")
    import secrets

    # The logins added since the first bootstrap get a password of their own: given, or
    # made here and shown once (their URLs), like an API token.
    made = {name: secrets.token_urlsafe(24) for name in ("WORKER_PASSWORD", "JOBS_PASSWORD", "LOGIN_PASSWORD")
            if not os.environ.get(name)}
    passwords = {name: os.environ.get(name) or made[name] for name in ("WORKER_PASSWORD", "JOBS_PASSWORD",
                                                                       "LOGIN_PASSWORD")}
    result = asyncio.run(bootstrap(admin, database=args.database,
                                   owner_password=os.environ["OWNER_PASSWORD"],
                                   api_password=os.environ["API_PASSWORD"],
                                   worker_password=passwords["WORKER_PASSWORD"],
                                   jobs_password=passwords["JOBS_PASSWORD"],
                                   login_password=passwords["LOGIN_PASSWORD"]))
    out: dict[str, str] = {"owner_url": "set OWNER_DATABASE_URL accordingly", "database": args.database}
    urls = {"WORKER_PASSWORD": ("WORKER_DATABASE_URL", result.worker_url),
            "JOBS_PASSWORD": ("JOBS_DATABASE_URL", result.jobs_url),
            "LOGIN_PASSWORD": ("LOGIN_DATABASE_URL", result.login_url)}
    for name, (setting, url) in urls.items():
        # a made password is shown once, in its URL; a given one is the operator's already
        out[setting] = url if name in made else f"set {setting} accordingly"
    print(json.dumps(out, indent=2))


def cmd_create_user(args: argparse.Namespace) -> None:
    from tenant_api.devserver import signup_via_api

    settings = Settings.from_env()
    out = asyncio.run(signup_via_api(settings, args.email, args.password, args.display_name))
    print(json.dumps(out, indent=2))


def cmd_dev(args: argparse.Namespace) -> None:
    from tenant_api.devserver import run_dev

    run_dev()


def cmd_openapi(args: argparse.Namespace) -> None:
    from tenant_api.app import create_app

    settings = Settings.from_env()
    if not settings.database.url:
        unused = "postgresql+asyncpg://unused@localhost/unused"
        settings = settings.with_database(url=unused, login_url=unused, jobs_url=unused)
    if not settings.auth.jwt_secret:
        settings = settings.with_auth(jwt_secret="x" * 32)
    print(json.dumps(create_app(settings).openapi_schema.to_schema(), indent=2, default=str))


def _duration(value: str) -> dt.timedelta:
    """'365d', '12h', '30m' -> timedelta."""
    units = {"d": "days", "h": "hours", "m": "minutes"}
    try:
        return dt.timedelta(**{units[value[-1]]: int(value[:-1])})
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"{value!r}: use a number and d, h or m, e.g. 365d") from None


def cmd_audit_seal(args: argparse.Namespace) -> None:
    from tenant_api.audit import sealing

    settings = Settings.from_env()
    url = settings.database.worker_url or settings.database.owner_url
    if not url:
        sys.exit("WORKER_DATABASE_URL or OWNER_DATABASE_URL is required")
    out = asyncio.run(sealing.seal(url, organization_id=args.org, block_size=settings.audit.seal_block_size))
    print(json.dumps(out, indent=2))


def cmd_audit_purge(args: argparse.Namespace) -> None:
    from tenant_api.audit import sealing

    settings = Settings.from_env()
    if not settings.database.owner_url:
        sys.exit("OWNER_DATABASE_URL is required: only the owner may purge the audit trail")
    window = args.older_than or dt.timedelta(days=settings.audit.retention_days)
    before = dt.datetime.now(dt.UTC) - window
    out = asyncio.run(sealing.purge(settings.database.owner_url, before=before, organization_id=args.org))
    print(json.dumps({"before": before.isoformat(), "purged": out}, indent=2))


def cmd_rate_limit(args: argparse.Namespace) -> None:
    """Set or clear an organization's quota per credential (as the owner)."""
    import asyncpg

    settings = Settings.from_env()
    if not settings.database.owner_url:
        sys.exit("OWNER_DATABASE_URL is required: only operators set rate limits")
    requests, window = (None, None) if args.clear else (args.requests, args.window)
    if not args.clear and (requests is None or window is None):
        sys.exit("give --requests and --window, or --clear")

    async def run() -> bool:
        conn = await asyncpg.connect(settings.database.owner_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return bool(await conn.fetchval("select auth.set_rate_limit($1, $2, $3)", args.org, requests, window))
        finally:
            await conn.close()

    if not asyncio.run(run()):
        sys.exit(f"no organization {args.org}")
    print(json.dumps({"organization_id": str(args.org), "requests": requests, "window_seconds": window}))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["runner"]:  # its own options (tenant_api.runs.runner)
        from tenant_api.runs import runner

        runner.main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="tenant-api", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dev").set_defaults(fn=cmd_dev)
    sub.add_parser("serve").set_defaults(fn=cmd_serve)
    p = sub.add_parser("scheduler")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls (default 1)")
    p.add_argument("--batch", type=int, default=100, help="schedules claimed per transaction (default 100)")
    p.set_defaults(fn=cmd_scheduler)
    p = sub.add_parser("migrate")
    p.add_argument("revision", nargs="?", default="head")
    p.add_argument("--down-to", metavar="REVISION",
                   help="undo the revisions after REVISION (rolling back a release; see docs/operating.md)")
    p.set_defaults(fn=cmd_migrate)
    p = sub.add_parser("bootstrap")
    p.add_argument("--database", default="tenant")
    p.set_defaults(fn=cmd_bootstrap)
    p = sub.add_parser("create-user")
    p.add_argument("email")
    p.add_argument("display_name")
    p.add_argument("--password", required=True)
    p.set_defaults(fn=cmd_create_user)
    sub.add_parser("openapi").set_defaults(fn=cmd_openapi)
    p = sub.add_parser("rate-limit", help="an organization's quota per credential (OWNER_DATABASE_URL)")
    p.add_argument("org", type=uuid.UUID)
    p.add_argument("--requests", type=int, help="requests per window (1..1000000)")
    p.add_argument("--window", type=int, help="window in seconds (1..86400)")
    p.add_argument("--clear", action="store_true", help="back to the default (RATE_LIMIT_REQUESTS)")
    p.set_defaults(fn=cmd_rate_limit)
    sub.add_parser("runner", help="the reference runner (tenant-api runner --help)")
    audit = sub.add_parser("audit").add_subparsers(dest="audit_command", required=True)
    p = audit.add_parser("seal")
    p.add_argument("--org", type=uuid.UUID, default=None, help="one organization (default: all)")
    p.set_defaults(fn=cmd_audit_seal)
    p = audit.add_parser("purge")
    p.add_argument("--older-than", type=_duration, default=None,
                   help="e.g. 365d (default: AUDIT_RETENTION_DAYS, 365)")
    p.add_argument("--org", type=uuid.UUID, default=None, help="one organization (default: all)")
    p.set_defaults(fn=cmd_audit_purge)
    args = parser.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
