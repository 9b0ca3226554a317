"""Webhook signing secrets and signatures (Standard Webhooks: https://www.standardwebhooks.com).

Each delivery carries three headers:

    webhook-id:         the event id (the same for every attempt: receivers de-duplicate on it)
    webhook-timestamp:  the attempt's time, Unix seconds
    webhook-signature:  "v1," + base64(HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")),
                        space-separated when two secrets are valid (after a rotation)

where ``secret`` is the bytes behind ``whsec_<base64>``. A receiver recomputes the HMAC,
compares in constant time, and refuses a timestamp more than a few minutes old (a replay).

The secret is never stored: it is HMAC-SHA256(server key, organization, webhook, nonce),
the nonce being a random column of the webhook (not readable by the API role); the server
key comes from WEBHOOK_SIGNING_KEY, or JWT_SECRET. The API shows it at creation and
rotation only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from uuid import UUID

SECRET_PREFIX = "whsec_"  # noqa: S105 - the public prefix, not a secret
TOLERANCE_SECONDS = 300


def server_key(signing_key: str, jwt_secret: str) -> bytes:
    """The key all signing secrets derive from, under a label of its own."""
    base = signing_key or jwt_secret
    return hmac.new(base.encode(), b"tenant-api webhook signing secrets v1", hashlib.sha256).digest()


def new_nonce() -> bytes:
    return secrets.token_bytes(32)


def secret_bytes(key: bytes, organization_id: UUID, webhook_id: UUID, nonce: bytes) -> bytes:
    return hmac.new(key, b"whsec\0" + organization_id.bytes + webhook_id.bytes + nonce, hashlib.sha256).digest()


def secret_text(raw: bytes) -> str:
    return SECRET_PREFIX + base64.b64encode(raw).decode()


def decode_secret(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(raw_secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(raw_secret, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes, tolerance: int = TOLERANCE_SECONDS,
           now: float | None = None) -> bool:
    """What a receiver does (docs/webhooks.md has the same in a few lines)."""
    try:
        msg_id = headers["webhook-id"]
        timestamp = int(headers["webhook-timestamp"])
        signatures = headers["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = signature(decode_secret(secret), msg_id, timestamp, body)
    return any(hmac.compare_digest(expected, s) for s in signatures)
