"""Rate limits: a quota per credential on every route, per client address without one.

Who is counted:

* a request with ``Authorization: Bearer <x>``: that credential (a key derived from a
  hash of ``x``, valid or not, checked before the database sees it). Its quota is its
  organization's (``organization.rate_limit_requests`` / ``rate_limit_window_seconds``,
  set by operators with ``tenant-api rate-limit``) or the default (RATE_LIMIT_REQUESTS
  per RATE_LIMIT_WINDOW_SECONDS). The organization of a credential is learned from the
  first request it makes, and its quota read in the background (a request never waits
  for it: until then, the default applies);
* a request without one (signup, login, the docs): its client address, with the
  ``auth`` quota on the routes that check passwords or secrets (AUTH_RATE_PER_MINUTE,
  ``SECRET_CHECKING_ROUTE``) and the ``anonymous`` quota elsewhere. The client address
  is the connection's peer, or behind a proxy listed in TRUSTED_PROXIES the address that
  proxy forwarded.

Refused credentials are counted per client address as well (``RefusedCredentials``,
RATE_LIMIT_REFUSED_PER_MINUTE), failed logins per account (``FailedLogins``): floods of
made-up tokens and password guesses are refused before the database or argon2 sees them.

Routes with ``opt={"rate_limit": False}`` (health, ready, metrics) are not counted.

The count is a fixed window per key: in this process's memory, or, with REDIS_URL, in
Redis (INCR + EXPIRE in one transaction) so that every worker and every instance share
it. If Redis does not answer, requests are let through (and counted in the metrics):
a broken limiter must not take the API down.

Every counted response carries ``RateLimit-Policy: "<name>";q=<quota>;w=<window>`` and
``RateLimit: "<name>";r=<remaining>;t=<seconds to reset>`` (the IETF httpapi
ratelimit-headers draft); beyond the quota the answer is a 429 problem with
``Retry-After``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from litestar.exceptions import WebSocketException
from litestar.types import Scope
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tenant_api.errors import ProblemError
from tenant_api.ops.metrics import RATE_LIMIT_STORE_ERRORS, RATE_LIMITED
from tenant_api.settings import RateLimitSettings

log = logging.getLogger("tenant_api.ratelimit")

SECRET_CHECKING_ROUTE: dict[str, Any] = {"public": True, "rate_limit": "auth"}
"""``opt`` of the public routes that check a password or a secret (signup, login, email
verification, invite preview and sign-up): counted per client address with the ``auth``
quota (AUTH_RATE_PER_MINUTE), so guessing and mass signups get 429."""

_LEARNED_MAX = 100_000  # credential -> organization entries kept (least recently used dropped)
_POLICY_TTL = 60.0  # seconds an organization's quota is cached
_QUOTA_OF = text("select requests, window_seconds from auth.rate_limit_of(:org)")


@dataclass(frozen=True, slots=True)
class Quota:
    name: str
    limit: int
    window: int  # seconds

    def refusal(self, hit: Hit) -> str:
        return (f"rate limit exceeded: {self.limit} requests per {self.window}s ({self.name}); "
                f"retry in {max(math.ceil(hit.reset), 1)}s")

    def retry_headers(self, hit: Hit, extra: list[tuple[bytes, bytes]]) -> dict[str, str]:
        """A 429's headers: Retry-After and the rate-limit headers."""
        return {"Retry-After": str(max(math.ceil(hit.reset), 1)), **{k.decode(): v.decode() for k, v in extra}}


@dataclass(frozen=True, slots=True)
class Hit:
    count: int  # requests in the current window, this one included
    reset: float  # seconds until the window ends


class Counter(Protocol):
    async def hit(self, key: str, window: int) -> Hit: ...

    async def peek(self, key: str, window: int) -> int: ...

    async def close(self) -> None: ...


def credential_key(credential: bytes) -> str:
    """A credential's counting key (never the credential itself)."""
    return "c:" + hashlib.sha256(credential.strip()).hexdigest()[:32]


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def _window(now: float, window: int) -> tuple[int, float]:
    index = int(now // window)
    return index, (index + 1) * window - now


class MemoryCounter:
    """Fixed windows in this process's memory (one worker, or tests)."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, int]] = {}  # key -> (window index, count)
        self._next_prune = 0.0

    async def hit(self, key: str, window: int) -> Hit:
        now = time.time()
        index, reset = _window(now, window)
        seen_index, count = self._counts.get(key, (index, 0))
        count = count + 1 if seen_index == index else 1
        self._counts[key] = (index, count)
        if now >= self._next_prune:
            self._prune(now)
        return Hit(count, reset)

    async def peek(self, key: str, window: int) -> int:
        index, _ = _window(time.time(), window)
        seen_index, count = self._counts.get(key, (index, 0))
        return count if seen_index == index else 0

    def _prune(self, now: float) -> None:
        # Entries of ended windows: forget them (a key's window is at most an hour).
        self._next_prune = now + 60
        stale = [k for k, (index, _) in self._counts.items() if (index + 2) * 3600 < now]
        for key in stale:
            del self._counts[key]
        if len(self._counts) > 500_000:  # many keys in long windows: keep the newest half
            for key in list(self._counts)[: len(self._counts) // 2]:
                del self._counts[key]

    async def close(self) -> None:
        self._counts.clear()


class RedisCounter:
    """Fixed windows in Redis, shared by every worker and instance (redis-py asyncio)."""

    def __init__(self, url: str, prefix: str = "tenant-api:rl:") -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._prefix = prefix

    async def hit(self, key: str, window: int) -> Hit:
        index, reset = _window(time.time(), window)
        name = f"{self._prefix}{key}:{window}:{index}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(name)
            pipe.expire(name, window + 1)
            count, _ = await pipe.execute()
        return Hit(int(count), reset)

    async def peek(self, key: str, window: int) -> int:
        index, _ = _window(time.time(), window)
        return int(await self._redis.get(f"{self._prefix}{key}:{window}:{index}") or 0)

    async def close(self) -> None:
        await self._redis.aclose()


class RateLimiter:
    def __init__(self, settings: RateLimitSettings, auth_per_minute: int, engine: AsyncEngine | None,
                 counter: Counter | None = None) -> None:
        self.settings = settings
        self.default = Quota("credential", settings.requests, settings.window_seconds)
        self.auth = Quota("auth", auth_per_minute, 60)
        self.anonymous = Quota("anonymous", settings.anonymous_per_minute, 60)
        self.counter: Counter = counter or (RedisCounter(settings.redis_url) if settings.redis_url else MemoryCounter())
        self._engine = engine
        self._org_of: OrderedDict[str, UUID] = OrderedDict()
        self._quotas: dict[UUID, tuple[float, Quota]] = {}
        self._loading: set[UUID] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._store_failing_since: float | None = None

    # -- who is counted, against which quota ----------------------------------------

    def classify(self, authorization: bytes | None, client: Any,
                 rate_limit: Any) -> tuple[str, Quota | None, UUID | None]:
        """(key, quota or None when the organization's must be looked up, organization),
        from what the edge middleware read: the first Authorization header, the peer, the
        route's opt["rate_limit"]."""
        if authorization is not None:
            scheme, _, credential = authorization.partition(b" ")
            if scheme.lower() == b"bearer" and (credential := credential.strip()):
                key = credential_key(credential)
                org = self._org_of.get(key)
                if org is not None:
                    self._org_of.move_to_end(key)
                return key, None, org
        address = client[0] if client else "unknown"
        quota = self.auth if rate_limit == "auth" else self.anonymous
        return f"a:{quota.name}:{address}", quota, None

    def quota_of(self, org: UUID | None) -> Quota:
        """The organization's quota as last read (the default until it has been): the
        request never waits for the database; a stale entry is re-read in the background."""
        if org is None:
            return self.default
        cached = self._quotas.get(org)
        if cached is None or cached[0] <= time.monotonic():
            self._refresh(org)
        return cached[1] if cached is not None else self.default

    def _refresh(self, org: UUID) -> None:
        if self._engine is None or org in self._loading:
            return
        self._loading.add(org)
        task = asyncio.get_running_loop().create_task(self._load(org))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self, org: UUID) -> None:
        assert self._engine is not None
        try:
            async with self._engine.connect() as conn:
                row = (await conn.execute(_QUOTA_OF, {"org": org})).first()
                await conn.commit()
        except Exception:  # the database is unavailable: keep what we had, retry later
            log.warning("could not read the rate limit of organization %s", org, exc_info=True)
            cached = self._quotas.get(org)
            self._quotas[org] = (time.monotonic() + 5, cached[1] if cached else self.default)
            return
        finally:
            self._loading.discard(org)
        quota = self.default
        if row is not None and row.requests:
            quota = Quota("credential", int(row.requests), int(row.window_seconds))
        if len(self._quotas) > 50_000:
            self._quotas.clear()
        self._quotas[org] = (time.monotonic() + _POLICY_TTL, quota)

    def learn(self, key: str, org: UUID) -> None:
        """Remember a credential's organization (from the request it just made), and
        read that organization's quota if it is not known yet."""
        if self._org_of.get(key) != org:
            self._org_of[key] = org
            if len(self._org_of) > _LEARNED_MAX:
                self._org_of.popitem(last=False)
        if org not in self._quotas:
            self._refresh(org)

    def knows(self, key: str) -> bool:
        """Whether the credential of this counting key (``credential_key``) made a request
        recently that the database accepted."""
        return key in self._org_of

    def forget_quota(self, org: UUID) -> None:
        self._quotas.pop(org, None)

    # -- counting ---------------------------------------------------------------------

    async def hit(self, key: str, quota: Quota) -> Hit | None:
        """Count a request; None when the store failed (the request is let through)."""
        try:
            hit = await self.counter.hit(key, quota.window)
        except Exception:
            RATE_LIMIT_STORE_ERRORS.inc()
            now = time.monotonic()
            if self._store_failing_since is None or now - self._store_failing_since > 30:
                self._store_failing_since = now
                log.warning("rate-limit store unavailable: requests are not limited meanwhile", exc_info=True)
            return None
        self._store_failing_since = None
        return hit

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.counter.close()


_POLICY_HEADERS: dict[Quota, tuple[bytes, bytes]] = {}


def headers_for(quota: Quota, hit: Hit) -> list[tuple[bytes, bytes]]:
    remaining = max(quota.limit - hit.count, 0)
    reset = max(math.ceil(hit.reset), 1)
    policy = _POLICY_HEADERS.get(quota)
    if policy is None:
        if len(_POLICY_HEADERS) > 10_000:  # quotas are few; organizations' own may change
            _POLICY_HEADERS.clear()
        policy = (b"ratelimit-policy", f'"{quota.name}";q={quota.limit};w={quota.window}'.encode())
        _POLICY_HEADERS[quota] = policy
    return [policy, (b"ratelimit", f'"{quota.name}";r={remaining};t={reset}'.encode())]


class RefusedCredentials:
    """Refused credentials per client address (issue 10): a flood of made-up, expired or
    revoked tokens must cost neither a database lookup nor a security-event row each.

    Every refusal (malformed, a bad signature, expired, or unknown/revoked to the
    database) counts against the address: ``per_minute`` of them per fixed minute, in the
    limiter's store (memory, or Redis shared by every worker). A request presenting a
    credential this process has not seen accepted recently (``RateLimiter.knows``) is
    let through to the check only while the address's refusals this minute plus its
    checks still in flight stay under ``per_minute``; otherwise it gets a 429 with
    Retry-After before its credential is parsed or looked up, recorded as a
    ``rate_limited`` security event (aggregated per minute, audit.usage). So an address
    causes at most ``per_minute`` lookups per minute, however it spreads or bursts them
    (each worker learns the shared count from its own next refusal). A known good
    credential from the same address (the office behind the attacker's NAT) goes on.
    The decision needs no I/O.

    One call site: ``await refusals.guard(scope, raw, check)`` around the credential check
    (``check`` parses the credential, stores it or its refusal in ``scope["state"]``, and
    runs the rest of the app)."""

    _MAX_ADDRESSES = 100_000

    def __init__(self, limiter: RateLimiter, per_minute: int) -> None:
        self.limiter = limiter
        self.quota = Quota("refused", per_minute, 60)
        self._refused: dict[str, tuple[int, int]] = {}  # address -> (minute, refusals seen so far)
        self._in_flight: dict[str, int] = {}  # address -> checks of not-yet-known credentials running

    async def guard(self, scope: Scope, raw: bytes | None, check: Callable[[], Awaitable[None]],
                    key: str | None = None) -> None:
        """``raw``: the credential presented (``Bearer ...``), as the caller read it;
        ``key``: its ``credential_key`` when the caller has it already (the rate limit's)."""
        if raw is None or self.limiter.knows(key or credential_key(raw.partition(b" ")[2])):
            try:
                await check()
            finally:
                await self._count_if_refused(scope)
            return
        address = client_address(scope)
        minute, reset = _window(time.time(), 60)
        seen_minute, refused = self._refused.get(address, (minute, 0))
        refused = refused if seen_minute == minute else 0
        in_flight = self._in_flight.get(address, 0)
        if refused + in_flight >= self.quota.limit:
            self._refuse(scope, max(math.ceil(reset), 1) if refused >= self.quota.limit else 1)
        self._in_flight[address] = in_flight + 1
        try:
            await check()
        finally:
            try:
                await self._count_if_refused(scope)
            finally:  # only now: a refusal is counted before its check stops being in flight
                left = self._in_flight.get(address, 1) - 1
                if left > 0:
                    self._in_flight[address] = left
                else:
                    self._in_flight.pop(address, None)

    def _refuse(self, scope: Scope, retry_after: int) -> None:
        RATE_LIMITED.labels(self.quota.name).inc()
        state = scope.setdefault("state", {})
        state["credential_error"] = None  # rate-limited events keep no prefix: one row per minute
        state["refusal_reason"] = "rate_limited"
        detail = (f"too many refused credentials from this address: {self.quota.limit} per minute; "
                  f"retry in {retry_after}s")
        if scope["type"] == "websocket":
            raise WebSocketException(detail=detail, code=4429)
        raise ProblemError(429, detail, headers={"Retry-After": str(retry_after)})

    async def _count_if_refused(self, scope: Scope) -> None:
        state = scope.get("state") or {}
        if "credential_error" not in state and "refused" not in state:
            return
        address = client_address(scope)
        hit = await self.limiter.hit(f"r:{address}", self.quota)
        if hit is None:
            return
        if len(self._refused) >= self._MAX_ADDRESSES:
            minute = _window(time.time(), 60)[0]
            self._refused = {a: v for a, v in self._refused.items() if v[0] == minute}
            if len(self._refused) >= self._MAX_ADDRESSES:  # that many attacking addresses: keep the newest half
                self._refused = dict(list(self._refused.items())[self._MAX_ADDRESSES // 2:])
        minute = _window(time.time(), 60)[0]
        seen_minute, seen = self._refused.get(address, (minute, 0))
        # Counts come back out of order from a shared store (Redis): never lower the one kept,
        # or the next check of this minute would be let through beyond the limit.
        self._refused[address] = (minute, max(hit.count, seen) if seen_minute == minute else hit.count)


class FailedLogins:
    """Failed logins per account (the email as typed, case-folded and hashed), whatever
    the address: ``limit`` per ``window`` seconds, then 429 with Retry-After before any
    password work until the window ends. Unknown emails count the same (an answer must
    not tell which accounts exist). In the limiter's store (memory or Redis)."""

    def __init__(self, limiter: RateLimiter, limit: int, window: int) -> None:
        self.limiter = limiter
        self.quota = Quota("login", limit, window)

    @staticmethod
    def _key(email: str) -> str:
        return "l:" + hashlib.sha256(email.strip().casefold().encode()).hexdigest()[:32]

    async def check(self, email: str) -> None:
        if self.quota.limit <= 0:
            return
        try:
            failures = await self.limiter.counter.peek(self._key(email), self.quota.window)
        except Exception:  # the store is down: let the login through (and its argon2 bound holds)
            RATE_LIMIT_STORE_ERRORS.inc()
            return
        if failures >= self.quota.limit:
            RATE_LIMITED.labels(self.quota.name).inc()
            retry = max(math.ceil(_window(time.time(), self.quota.window)[1]), 1)
            raise ProblemError(429, f"too many failed logins for this account: {self.quota.limit} per "
                               f"{self.quota.window}s; retry in {retry}s", headers={"Retry-After": str(retry)})

    async def failed(self, email: str) -> None:
        if self.quota.limit > 0:
            await self.limiter.hit(self._key(email), self.quota)


async def close_limiter(limiter: RateLimiter) -> None:
    try:
        await asyncio.wait_for(limiter.close(), timeout=2)
    except Exception:  # shutting down: nothing else to do with it
        log.debug("closing the rate-limit store failed", exc_info=True)
