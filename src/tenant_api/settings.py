"""Settings: one frozen dataclass per concern, read from the environment on demand.

Nothing reads the environment at import time; create_app(settings) and the CLI build a
Settings explicitly, and tests build their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any
from collections.abc import Mapping


def asyncpg_url(url: str) -> str:
    """Accept libpq-style URLs (postgresql://, postgres://) and select the asyncpg driver."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    raise ValueError("database URLs must start with postgresql://")


@dataclass(frozen=True)
class DatabaseSettings:
    """Two connections: the API role for requests, the owner for migrations."""

    url: str = ""
    """The API role (tenant_api): owns nothing, cannot bypass RLS. DATABASE_URL."""
    owner_url: str = ""
    """The schema owner (tenant_owner), for migrations only. OWNER_DATABASE_URL."""
    pool_size: int = 20
    max_overflow: int = 0
    """Per worker. No overflow by default: SQLAlchemy closes an overflow connection as soon
    as it is returned, so sustained load above pool_size opened and closed a PostgreSQL
    backend for every extra request; waiting for a pooled connection is far cheaper
    (bench/RESULTS.md)."""
    pool_timeout: float = 10.0
    """Seconds a request waits for a free pooled connection before a 503. DATABASE_POOL_TIMEOUT."""
    connect_timeout: float = 5.0
    """Seconds to open a new connection before giving up (503). DATABASE_CONNECT_TIMEOUT."""
    pgbouncer: bool = False
    """Behind PgBouncer in transaction mode: no server-side prepared statement cache."""
    listen_url: str = ""
    """The API role, connected directly to PostgreSQL (LISTEN does not work through
    PgBouncer in transaction mode), for the live streams. LISTEN_DATABASE_URL; default: url."""
    migration_lock_timeout_seconds: float = 5.0
    """How long a migration waits for any one lock before it gives up (and rolls back, to
    be run again): a migration queued behind a long transaction would otherwise block
    every request queued behind it. MIGRATION_LOCK_TIMEOUT_SECONDS; 0 waits forever."""
    login_url: str = ""
    """The login role (tenant_login): the API process's public auth routes (signup, login,
    email verification, invite preview and sign-up), the only connection that may read a
    password hash or open a session. LOGIN_DATABASE_URL; required by serve."""
    jobs_url: str = ""
    """The API process's background login (tenant_api_jobs): the invite mailer, the desktop
    reaper, the usage writer. JOBS_DATABASE_URL; required by serve."""
    worker_url: str = ""
    """The scheduler process's login (tenant_worker): schedules, audit sealing, retention,
    run leases, webhook deliveries, idempotency keys. WORKER_DATABASE_URL; required by
    the scheduler."""

    def as_login(self, url: str, pool_size: int) -> DatabaseSettings:
        """These settings for another login (its URL, its own small pool)."""
        return replace(self, url=url, pool_size=pool_size, max_overflow=0, listen_url="")

    def login_database(self) -> DatabaseSettings:
        return self.as_login(self.login_url, max(2, self.pool_size // 4))

    def jobs_database(self) -> DatabaseSettings:
        return self.as_login(self.jobs_url, 2)

    def worker_database(self) -> DatabaseSettings:
        """The scheduler process's settings: its own login in place of the API role's."""
        return replace(self, url=self.worker_url, listen_url="")


@dataclass(frozen=True)
class AuthSettings:
    jwt_secret: str = ""
    jwt_issuer: str = "tenant-api"
    session_ttl_seconds: int = 12 * 3600
    token_default_ttl_days: int = 90
    token_max_ttl_days: int = 365
    auth_rate_per_minute: int = 30
    """Signup/login attempts per client address per minute (tenant_api.ops.ratelimit)."""
    email_hold_hours: float = 24.0
    """How long an unverified account holds its email address (EMAIL_HOLD_HOURS): past
    it, a new sign-up with the address claims it (policies/verification.sql)."""
    password_hash_concurrency: int = 1
    """Password hashes and checks (argon2id: ~64 MiB and tens of ms of CPU each) run at
    once per worker, in a pool of their own (tenant_api.auth.passwords): a login flood
    queues there instead of taking every core from other requests.
    PASSWORD_HASH_CONCURRENCY."""
    password_hash_queue: int = 32
    """Password checks waiting per worker beyond which a login or signup is answered 503
    with Retry-After at once. PASSWORD_HASH_QUEUE."""
    password_hash_wait_seconds: float = 5.0
    """The longest a password check waits for its turn, then 503 with Retry-After.
    PASSWORD_HASH_WAIT_SECONDS."""
    login_failures_per_account: int = 10
    """Failed logins per account (email) per LOGIN_FAILURE_WINDOW_SECONDS, from any
    address; then 429 without any password work until the window ends. 0: no limit.
    LOGIN_FAILURES_PER_ACCOUNT."""
    login_failure_window_seconds: int = 900


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    debug: bool = False
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or networks (CIDR) of the proxies whose X-Forwarded-For/-Proto are
    believed (TRUSTED_PROXIES, comma-separated; "*" trusts any peer). Empty: the client
    address is the connection's peer. The same for any number of workers."""
    shutdown_seconds: float = 10.0
    """A graceful shutdown's bound: streams and sockets are ended first (final event,
    close 1001), then in-flight requests get the rest of it. SHUTDOWN_TIMEOUT_SECONDS."""
    public_url: str = ""
    """Where browsers reach this API (PUBLIC_URL, e.g. https://api.example.com): every
    link the API builds (invite and verification mails) starts with it. Empty: follows
    HOST and PORT."""

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104 -- reading, not binding
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"


@dataclass(frozen=True)
class RateLimitSettings:
    """Per-credential quotas on every route (tenant_api.ops.ratelimit)."""

    enabled: bool = True
    """RATE_LIMIT_ENABLED=0 turns limiting off (benchmarks)."""
    requests: int = 600
    window_seconds: int = 60
    """The default quota of a credential: RATE_LIMIT_REQUESTS per RATE_LIMIT_WINDOW_SECONDS.
    An organization may have its own (tenant-api rate-limit set)."""
    anonymous_per_minute: int = 120
    """Requests without a credential, per client address (docs, ...). Signup and login
    have AUTH_RATE_PER_MINUTE. RATE_LIMIT_ANONYMOUS_PER_MINUTE."""
    refused_per_minute: int = 30
    """Refused credentials (malformed, expired, revoked, unknown) per client address per
    minute; past it the address's requests with a credential not recently accepted get
    429 before any lookup (ops.ratelimit.RefusedCredentials). RATE_LIMIT_REFUSED_PER_MINUTE."""
    redis_url: str = ""
    """REDIS_URL: counts shared by every worker and instance. Unset: in this process's
    memory (one worker; with WORKERS>1 each worker counts on its own)."""


@dataclass(frozen=True)
class ObservabilitySettings:
    """Metrics and logs (tenant_api.ops.metrics, tenant_api.ops.logs)."""

    metrics_token: str = ""
    """METRICS_TOKEN: GET /metrics requires `Authorization: Bearer <it>`; unset, /metrics
    answers 404 on the API's port."""
    metrics_port: int = 0
    """METRICS_PORT: also serve the metrics, unauthenticated, on this port (bind it to a
    private interface); the scheduler process serves its own there. 0: no such port."""
    log_format: str = "json"
    """LOG_FORMAT: json (one object per line) or text."""
    log_level: str = "INFO"
    access_log: bool = True
    """ACCESS_LOG=0: no access line per request."""


@dataclass(frozen=True)
class RetentionSettings:
    """How long finished things are kept; the scheduler process purges the rest in
    bounded batches (tenant_api.ops.retention). 0 days keeps them forever."""

    jobs_days: int = 90
    """Finished jobs (succeeded, failed, cancelled) and their logs. RETENTION_JOBS_DAYS."""
    desktop_connections_days: int = 30
    """Closed robot connections. RETENTION_DESKTOP_CONNECTIONS_DAYS."""
    invite_mails_days: int = 30
    """Delivered invite mails (the invite itself stays). RETENTION_INVITE_MAILS_DAYS."""
    security_events_days: int = 90
    """Unattributed security events (unknown or malformed credentials).
    RETENTION_SECURITY_EVENTS_DAYS."""
    webhook_deliveries_days: int = 30
    """Settled webhook deliveries (delivered, failed, skipped), their attempts and the
    events left without a delivery, counted from the delivery's last change.
    RETENTION_WEBHOOK_DELIVERIES_DAYS."""
    batch_size: int = 500
    """Rows per purge transaction. RETENTION_BATCH_SIZE."""
    interval_seconds: float = 600.0
    """How often the scheduler purges. RETENTION_INTERVAL_SECONDS."""


@dataclass(frozen=True)
class DesktopSettings:
    """Robot clients' WebSocket bookkeeping (docs/desktops.md)."""

    ping_interval_seconds: float = 20.0
    """Advertised to clients: send {"type": "ping"} at least this often."""
    idle_timeout_seconds: float = 60.0
    """The server closes a socket it heard nothing from for this long."""
    touch_interval_seconds: float = 15.0
    """last_seen_at is written at most this often per connection."""
    stale_after_seconds: float = 120.0
    """The reaper closes open rows not seen for this long (a live socket's row never is)."""
    reap_interval_seconds: float = 30.0
    instance_id: str = ""
    """A stable id unique to this process (DESKTOP_INSTANCE_ID, e.g. the pod name): at
    start-up the rows of its previous life are closed at once. Empty: random per start,
    and those rows wait for stale_after_seconds."""

    def __post_init__(self) -> None:
        # A live socket's row lags by at most idle_timeout + touch_interval: the reaper
        # must never see it as stale.
        if self.stale_after_seconds <= self.idle_timeout_seconds + self.touch_interval_seconds:
            raise ValueError("desktops: stale_after_seconds must exceed idle_timeout_seconds + touch_interval_seconds")


@dataclass(frozen=True)
class InviteSettings:
    """Project invites and their mail (tenant_api.invites)."""

    ttl_days: int = 7
    smtp_url: str = ""
    """smtp://[user:password@]host[:port] (plain), smtp+starttls://... or smtps://...
    Unset: the mailer does not run and invite mails wait in invite_outbox. SMTP_URL."""
    mail_from: str = "tenant-api <no-reply@localhost>"
    log_links: bool = False
    """Deliver by logging the accept link, secret included, instead of sending mail. Set
    only by `tenant-api dev` (make run) when SMTP_URL is unset: a developer's own
    machine. Never read from the environment, so a deployment cannot turn it on."""
    mail_dir: str = ""
    """With log_links: also write each mail to <mail_dir>/<recipient>.txt (the latest
    one), so the walkthroughs can read a link with a shell command. Set by `make run` only."""
    poll_seconds: float = 5.0
    max_attempts: int = 8
    backoff_seconds: float = 30.0
    """The first retry's delay; doubled for each further attempt, at most an hour."""
    lease_seconds: float = 300.0
    """A claimed mail is due again after this long if its mailer died while sending."""

    @property
    def mailer_enabled(self) -> bool:
        return bool(self.smtp_url) or self.log_links


@dataclass(frozen=True)
class AuditSettings:
    """Usage recording, sealing and retention of the audit trail."""

    record_usage: bool = True
    """Record every authenticated request (token_usage). AUDIT_USAGE_ENABLED=0 turns it
    off (for the benchmark's comparison only)."""
    usage_flush_seconds: float = 1.0
    """The usage recorder writes its batch at least this often. AUDIT_USAGE_FLUSH_SECONDS."""
    usage_batch_size: int = 500
    """...and as soon as this many records wait. AUDIT_USAGE_BATCH_SIZE."""
    usage_max_pending: int = 50_000
    """Records waiting beyond this (database unreachable) are dropped and counted."""
    seal_block_size: int = 1000
    """Events per sealed block."""
    retention_days: int = 365
    """`tenant-api audit purge` default window. AUDIT_RETENTION_DAYS."""


@dataclass(frozen=True)
class ScheduleSettings:
    """Per-organization bounds on job schedules (tenant_api.resources.jobs): one tenant's
    schedules must not crowd out everyone else's (the scheduler also claims due schedules
    round-robin across organizations, policies/scheduler.sql)."""

    max_enabled_per_organization: int = 100
    """Enabled schedules per organization; one more is a 409 naming the limit.
    SCHEDULE_MAX_ENABLED_PER_ORGANIZATION (0: no limit)."""
    min_interval_seconds: int = 10
    """The shortest time between two runs of a schedule (checked over its next runs); a
    cron running more often is a 422 naming the limit. SCHEDULE_MIN_INTERVAL_SECONDS (0:
    no limit)."""


@dataclass(frozen=True)
class RunnerSettings:
    """The runner protocol (tenant_api.runs; docs/runners.md)."""

    default_lease_seconds: int = 60
    """A claim's lease unless the runner asks for another; heartbeats renew it."""
    max_lease_seconds: int = 3600
    max_wait_seconds: float = 30.0
    """The longest a claim waits for work (long poll) before answering 204, whatever its
    wait_seconds (at most 30). RUNNER_MAX_WAIT_SECONDS."""
    reap_interval_seconds: float = 5.0
    """How often the scheduler process returns runs whose lease expired to the queue."""


@dataclass(frozen=True)
class WebhookSettings:
    """Webhook deliveries (tenant_api.webhooks; docs/webhooks.md)."""

    allow_private_targets: bool = False
    """Deliver to loopback, private, link-local and other non-public addresses too.
    Off in production (an endpoint inside your network is not a tenant's to reach);
    tests and `make run` turn it on. WEBHOOK_ALLOW_PRIVATE_TARGETS=1."""
    signing_key: str = ""
    """The server key webhook signing secrets are derived from. WEBHOOK_SIGNING_KEY;
    default: derived from JWT_SECRET (changing it changes every webhook's secret)."""
    timeout_seconds: float = 10.0
    """One attempt, connection to last byte."""
    max_response_bytes: int = 65536
    """Read at most this much of a response (the rest is ignored)."""
    max_attempts: int = 8
    """Attempts per delivery before it is marked failed. WEBHOOK_MAX_ATTEMPTS."""
    backoff_seconds: float = 10.0
    """The first retry's delay; doubled for each further attempt, at most an hour."""
    lease_seconds: float = 60.0
    """A claimed delivery is due again after this long if its worker died mid-send."""
    poll_seconds: float = 1.0
    concurrency: int = 8
    """Deliveries sent at once by one worker."""

    def __post_init__(self) -> None:
        # A live attempt must end before its lease does, or a second worker could send
        # the same delivery while the first is still waiting for the receiver.
        if self.lease_seconds <= self.timeout_seconds + 5:
            raise ValueError("webhooks: lease_seconds must exceed timeout_seconds by more than 5 s")


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    desktops: DesktopSettings = field(default_factory=DesktopSettings)
    invites: InviteSettings = field(default_factory=InviteSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    rate_limit: RateLimitSettings = field(default_factory=RateLimitSettings)
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    runners: RunnerSettings = field(default_factory=RunnerSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    schedules: ScheduleSettings = field(default_factory=ScheduleSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        database = DatabaseSettings(
            url=asyncpg_url(env["DATABASE_URL"]) if env.get("DATABASE_URL") else "",
            owner_url=asyncpg_url(env["OWNER_DATABASE_URL"]) if env.get("OWNER_DATABASE_URL") else "",
            pool_size=int(env.get("DATABASE_POOL_SIZE", "20")),
            max_overflow=int(env.get("DATABASE_MAX_OVERFLOW", "0")),
            pool_timeout=float(env.get("DATABASE_POOL_TIMEOUT", "10")),
            connect_timeout=float(env.get("DATABASE_CONNECT_TIMEOUT", "5")),
            pgbouncer=env.get("DATABASE_PGBOUNCER", "") in {"1", "true", "yes"},
            listen_url=asyncpg_url(env["LISTEN_DATABASE_URL"]) if env.get("LISTEN_DATABASE_URL") else "",
            migration_lock_timeout_seconds=float(env.get("MIGRATION_LOCK_TIMEOUT_SECONDS", "5")),
            login_url=asyncpg_url(env["LOGIN_DATABASE_URL"]) if env.get("LOGIN_DATABASE_URL") else "",
            jobs_url=asyncpg_url(env["JOBS_DATABASE_URL"]) if env.get("JOBS_DATABASE_URL") else "",
            worker_url=asyncpg_url(env["WORKER_DATABASE_URL"]) if env.get("WORKER_DATABASE_URL") else "",
        )
        auth = AuthSettings(
            jwt_secret=env.get("JWT_SECRET", ""),
            session_ttl_seconds=int(env.get("SESSION_TTL_SECONDS", str(12 * 3600))),
            auth_rate_per_minute=int(env.get("AUTH_RATE_PER_MINUTE", "30")),
            email_hold_hours=float(env.get("EMAIL_HOLD_HOURS", "24")),
            password_hash_concurrency=int(env.get("PASSWORD_HASH_CONCURRENCY", "1")),
            password_hash_queue=int(env.get("PASSWORD_HASH_QUEUE", "32")),
            password_hash_wait_seconds=float(env.get("PASSWORD_HASH_WAIT_SECONDS", "5")),
            login_failures_per_account=int(env.get("LOGIN_FAILURES_PER_ACCOUNT", "10")),
            login_failure_window_seconds=int(env.get("LOGIN_FAILURE_WINDOW_SECONDS", "900")),
        )
        server = ServerSettings(
            host=env.get("HOST", "127.0.0.1"),
            port=int(env.get("PORT", "8000")),
            workers=int(env.get("WORKERS", "1")),
            debug=env.get("DEBUG", "") in {"1", "true"},
            trusted_proxies=tuple(p.strip() for p in env.get("TRUSTED_PROXIES", "").split(",") if p.strip()),
            shutdown_seconds=float(env.get("SHUTDOWN_TIMEOUT_SECONDS", "10")),
            public_url=env.get("PUBLIC_URL", ""),
        )
        desktops = DesktopSettings(instance_id=env.get("DESKTOP_INSTANCE_ID", ""))
        invites = InviteSettings(
            ttl_days=int(env.get("INVITE_TTL_DAYS", "7")),
            smtp_url=env.get("SMTP_URL", ""),
            mail_from=env.get("MAIL_FROM", InviteSettings.mail_from),
        )
        audit = AuditSettings(
            record_usage=env.get("AUDIT_USAGE_ENABLED", "1") not in {"0", "false", "no"},
            usage_flush_seconds=float(env.get("AUDIT_USAGE_FLUSH_SECONDS", "1.0")),
            usage_batch_size=int(env.get("AUDIT_USAGE_BATCH_SIZE", "500")),
            retention_days=int(env.get("AUDIT_RETENTION_DAYS", "365")),
        )
        rate_limit = RateLimitSettings(
            enabled=_flag(env, "RATE_LIMIT_ENABLED", True),
            requests=int(env.get("RATE_LIMIT_REQUESTS", "600")),
            window_seconds=int(env.get("RATE_LIMIT_WINDOW_SECONDS", "60")),
            anonymous_per_minute=int(env.get("RATE_LIMIT_ANONYMOUS_PER_MINUTE", "120")),
            refused_per_minute=int(env.get("RATE_LIMIT_REFUSED_PER_MINUTE", "30")),
            redis_url=env.get("REDIS_URL", ""),
        )
        observability = ObservabilitySettings(
            metrics_token=env.get("METRICS_TOKEN", ""),
            metrics_port=int(env.get("METRICS_PORT", "0")),
            log_format=env.get("LOG_FORMAT", "json"),
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
            access_log=_flag(env, "ACCESS_LOG", True),
        )
        retention = RetentionSettings(
            jobs_days=int(env.get("RETENTION_JOBS_DAYS", "90")),
            desktop_connections_days=int(env.get("RETENTION_DESKTOP_CONNECTIONS_DAYS", "30")),
            invite_mails_days=int(env.get("RETENTION_INVITE_MAILS_DAYS", "30")),
            security_events_days=int(env.get("RETENTION_SECURITY_EVENTS_DAYS", "90")),
            webhook_deliveries_days=int(env.get("RETENTION_WEBHOOK_DELIVERIES_DAYS", "30")),
            batch_size=int(env.get("RETENTION_BATCH_SIZE", "500")),
            interval_seconds=float(env.get("RETENTION_INTERVAL_SECONDS", "600")),
        )
        runners = RunnerSettings(
            default_lease_seconds=int(env.get("RUNNER_LEASE_SECONDS", "60")),
            max_wait_seconds=float(env.get("RUNNER_MAX_WAIT_SECONDS", "30")),
        )
        webhooks = WebhookSettings(
            allow_private_targets=_flag(env, "WEBHOOK_ALLOW_PRIVATE_TARGETS", False),
            signing_key=env.get("WEBHOOK_SIGNING_KEY", ""),
            max_attempts=int(env.get("WEBHOOK_MAX_ATTEMPTS", "8")),
        )
        schedules = ScheduleSettings(
            max_enabled_per_organization=int(env.get("SCHEDULE_MAX_ENABLED_PER_ORGANIZATION", "100")),
            min_interval_seconds=int(env.get("SCHEDULE_MIN_INTERVAL_SECONDS", "10")),
        )
        return cls(database=database, auth=auth, server=server, desktops=desktops, invites=invites, audit=audit,
                   rate_limit=rate_limit, observability=observability, retention=retention,
                   runners=runners, webhooks=webhooks, schedules=schedules)

    def with_database(self, **changes: Any) -> Settings:
        return replace(self, database=replace(self.database, **changes))

    def with_auth(self, **changes: Any) -> Settings:
        return replace(self, auth=replace(self.auth, **changes))

    def with_server(self, **changes: Any) -> Settings:
        return replace(self, server=replace(self.server, **changes))

    def with_desktops(self, **changes: Any) -> Settings:
        return replace(self, desktops=replace(self.desktops, **changes))

    def with_invites(self, **changes: Any) -> Settings:
        return replace(self, invites=replace(self.invites, **changes))

    def with_audit(self, **changes: Any) -> Settings:
        return replace(self, audit=replace(self.audit, **changes))

    def with_rate_limit(self, **changes: Any) -> Settings:
        return replace(self, rate_limit=replace(self.rate_limit, **changes))

    def with_observability(self, **changes: Any) -> Settings:
        return replace(self, observability=replace(self.observability, **changes))

    def with_retention(self, **changes: Any) -> Settings:
        return replace(self, retention=replace(self.retention, **changes))


    def with_runners(self, **changes: Any) -> Settings:
        return replace(self, runners=replace(self.runners, **changes))

    def with_webhooks(self, **changes: Any) -> Settings:
        return replace(self, webhooks=replace(self.webhooks, **changes))

    def with_schedules(self, **changes: Any) -> Settings:
        return replace(self, schedules=replace(self.schedules, **changes))


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() not in {"0", "false", "no", "off"}
