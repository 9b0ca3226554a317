"""The webhook delivery worker: sends what the outbox holds, signed, in order per object.

Runs in the scheduler process (``tenant-api scheduler``; ``make run`` starts one), as the
API role with no context of its own, through three SECURITY DEFINER functions
(policies/webhook_delivery.sql). Each round:

1. ``auth.claim_webhook_deliveries``: due deliveries, locked with SKIP LOCKED and leased
   (never sent twice at once, by any number of workers; never lost by a worker that dies);
   one whose object has an earlier delivery still pending for the same webhook waits.
2. Per delivery, in a short transaction: ``auth.webhook_delivery_context`` becomes the
   webhook's owning credential, read-only (or pauses the webhook if that credential was
   revoked, expired, left or lost org:write), and the event is read under RLS as that
   credential: what it may not read is skipped, never sent.
3. The POST: to the address that was resolved and checked (tenant_api.webhooks.targets),
   no redirects followed, a bounded time and a bounded read of the response.
4. ``auth.finish_webhook_delivery``: the attempt is logged (status code, duration, error)
   and the delivery settled: delivered, retried later (exponential backoff), or failed
   after the last attempt.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tenant_api.ops.metrics import WEBHOOK_DELIVERIES, WEBHOOK_DELIVERY_DURATION
from tenant_api.settings import WebhookSettings
from tenant_api.webhooks import signing, targets

log = logging.getLogger("tenant_api.webhooks")

MAX_BACKOFF_SECONDS = 3600.0
USER_AGENT = "tenant-api-webhooks/1"
CLAIM = text("select organization_id, id, webhook_id, event_id, attempts, url, secret_nonce, previous_secret_nonce"
             " from auth.claim_webhook_deliveries(:limit, :lease, :org)")
CONTEXT = text("select auth.webhook_delivery_context(:org, :delivery)")
# Read as the webhook's owning credential: RLS decides whether the event is visible.
EVENT = text("select id, type, occurred_at, organization_id, project_id, object_id, actor_token_id, data, previous"
             " from webhook_event where organization_id = :org and id = :event")
FINISH = text("select auth.finish_webhook_delivery(:org, :delivery, :outcome, :status_code, :error, :duration_ms,"
              " :retry_in, :excerpt)")


@dataclass(frozen=True)
class Outcome:
    outcome: str  # delivered | retry | failed | skipped | paused
    status_code: int | None = None
    error: str | None = None
    duration_ms: int | None = None
    excerpt: str | None = None
    retry_in: float | None = None


def backoff(attempts: int, base: float) -> float:
    """Delay before the next try after ``attempts`` failed ones: base, 2*base, 4*base, ..."""
    return min(base * 2 ** (attempts - 1), MAX_BACKOFF_SECONDS)


def event_body(event: Any) -> bytes:
    return msgspec.json.encode({
        "id": str(event.id), "type": event.type, "occurred_at": event.occurred_at,
        "organization_id": str(event.organization_id),
        "project_id": str(event.project_id) if event.project_id else None,
        "object_id": str(event.object_id),
        "actor_token_id": str(event.actor_token_id) if event.actor_token_id else None,
        "data": event.data, "previous": event.previous,
    })


class Deliverer:
    def __init__(self, engine: AsyncEngine, settings: WebhookSettings, key: bytes) -> None:
        self.engine = engine
        self.settings = settings
        self.key = key
        self.slots = asyncio.Semaphore(max(1, settings.concurrency))
        self.client = httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                        timeout=httpx.Timeout(settings.timeout_seconds),
                                        headers={"user-agent": USER_AGENT})
        self.delivered = 0  # for logs and tests

    async def aclose(self) -> None:
        await self.client.aclose()

    async def run_once(self, limit: int = 20, organization_id: Any = None) -> int:
        """Claim up to ``limit`` due deliveries and send them. Returns how many were claimed."""
        async with self.engine.begin() as conn:
            rows = (await conn.execute(CLAIM, {"limit": limit, "org": organization_id,
                                               "lease": dt.timedelta(seconds=self.settings.lease_seconds)})).all()
        await asyncio.gather(*(self._deliver(row) for row in rows))
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                claimed = await self.run_once(limit=self.settings.concurrency * 2)
            except Exception:  # the database restarting: try again
                log.exception("webhook delivery round failed")
                claimed = 0
            if claimed == 0:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.settings.poll_seconds)
                except TimeoutError:
                    pass

    async def _deliver(self, row: Any) -> None:
        async with self.slots:
            try:
                result = await self._attempt(row)
            except Exception as exc:  # noqa: BLE001 -- recorded on the delivery, retried
                log.exception("webhook delivery %s failed unexpectedly", row.id)
                result = self._failure(row, f"{type(exc).__name__}: {exc}", None, None)
            async with self.engine.begin() as conn:
                await conn.execute(FINISH, {
                    "org": row.organization_id, "delivery": row.id, "outcome": result.outcome,
                    "status_code": result.status_code, "error": result.error, "duration_ms": result.duration_ms,
                    "retry_in": dt.timedelta(seconds=result.retry_in) if result.retry_in is not None else None,
                    "excerpt": result.excerpt})
            WEBHOOK_DELIVERIES.labels(result.outcome).inc()
            if result.duration_ms is not None:
                WEBHOOK_DELIVERY_DURATION.observe(result.duration_ms / 1000)
            if result.outcome == "delivered":
                self.delivered += 1
            log.info("webhook %s delivery %s (attempt %d): %s%s", row.webhook_id, row.id, row.attempts,
                     result.outcome, f" ({result.error})" if result.error else "")

    def _failure(self, row: Any, error: str, status_code: int | None, duration_ms: int | None,
                 excerpt: str | None = None) -> Outcome:
        if row.attempts < self.settings.max_attempts:
            return Outcome("retry", status_code, error, duration_ms, excerpt,
                           retry_in=backoff(row.attempts, self.settings.backoff_seconds))
        return Outcome("failed", status_code, error, duration_ms, excerpt)

    async def _attempt(self, row: Any) -> Outcome:
        async with self.engine.begin() as conn:
            access = (await conn.execute(CONTEXT, {"org": row.organization_id, "delivery": row.id})).scalar()
            event = (await conn.execute(EVENT, {"org": row.organization_id, "event": row.event_id})).first() \
                if access == "ok" else None
        if access != "ok":
            return Outcome("paused")  # left pending: sent once the webhook is resumed
        if event is None:
            return Outcome("skipped", error="not visible to the webhook's owning credential (scope or projects)")
        body = event_body(event)
        secrets = [row.secret_nonce, *([row.previous_secret_nonce] if row.previous_secret_nonce else [])]
        timestamp = int(time.time())
        signatures = " ".join(signing.signature(signing.secret_bytes(self.key, row.organization_id, row.webhook_id, n),
                                                str(event.id), timestamp, body) for n in secrets)
        headers = {"content-type": "application/json", "webhook-id": str(event.id),
                   "webhook-timestamp": str(timestamp), "webhook-signature": signatures}
        started = time.monotonic()

        def elapsed() -> int:
            return int((time.monotonic() - started) * 1000)

        try:
            async with asyncio.timeout(self.settings.timeout_seconds):
                status, excerpt = await self._post(row.url, headers, body)
        except targets.TargetRefused as exc:
            return self._failure(row, str(exc), None, elapsed())
        except (TimeoutError, httpx.TimeoutException):
            return self._failure(row, f"timed out after {self.settings.timeout_seconds:g} s", None, elapsed())
        except httpx.HTTPError as exc:
            return self._failure(row, f"{type(exc).__name__}: {exc}"[:1000], None, elapsed())
        if 200 <= status < 300:
            return Outcome("delivered", status, None, elapsed(), excerpt)
        why = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
        return self._failure(row, why, status, elapsed(), excerpt)

    async def _post(self, url: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        """POST to the checked address of ``url``'s host; the status and the response's
        first bytes (reading stops at max_response_bytes)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = await targets.resolve(host, port, self.settings.allow_private_targets)
        pinned = f"[{address}]" if address.version == 6 else str(address)
        target = urlunsplit((parts.scheme, pinned + (f":{parts.port}" if parts.port else ""),
                             parts.path or "/", parts.query, ""))
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        request_headers = {**headers, "host": parts.netloc}
        async with self.client.stream("POST", target, content=body, headers=request_headers,
                                      extensions=extensions) as response:
            received = bytearray()
            async for chunk in response.aiter_raw():
                received += chunk
                if len(received) >= self.settings.max_response_bytes:
                    break
            return response.status_code, bytes(received[:1024]).decode("utf-8", "replace")
