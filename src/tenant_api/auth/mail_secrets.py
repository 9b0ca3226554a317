"""Mailed secrets, invites' and email verifications': ``tinv_`` (``tver_``) + 32 base62
characters + a 6-character CRC32 checksum, the API token format with its own prefix
(recognizable by secret scanners; typos refused before any database work). Stored only as SHA-256, like API tokens.

The secret is not random bytes kept somewhere until the mail goes out: it is
HMAC-SHA256(key, nonce), where the nonce (32 random bytes) sits in the invite's outbox
row and the key is derived from the server's JWT_SECRET. The API returns the secret once,
when the invite is created or resent; the mailer re-derives it from the outbox row when
it sends the mail. So the database holds no secret (the outbox row alone, without the
key, gives nothing; the key alone, without the row, neither), and the mail can still be
sent -- or retried -- later. Rotating JWT_SECRET makes the mails not yet sent
undeliverable (the mailer notices and marks them failed; resend the invite).

Each invite has two secrets from the same nonce under two keys: the one the API shows
the inviter (``link_key``) and the one only the mail carries (``mail_key``). Both accept
the invite; only the mail's proves that the invitee reads the mailbox (the inviter knows
the other one), so only it lets an unverified account answer, and verifies it.
Verification mails carry a ``tver_`` secret made the same way (``verify_key``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from tenant_api.auth.credentials import _ALPHABET, _base62, _checksum, token_hash

INVITE_PREFIX = "tinv_"
VERIFY_PREFIX = "tver_"
_BODY_LEN = 32
_CHECK_LEN = 6
INVITE_TOKEN_LENGTH = len(INVITE_PREFIX) + _BODY_LEN + _CHECK_LEN


class MalformedInvite(ValueError):
    pass


def link_key(jwt_secret: str) -> bytes:
    """A key of its own for invite secrets, so they are never JWT signatures of anything."""
    return hmac.new(jwt_secret.encode(), b"tenant-api invite secrets v1", hashlib.sha256).digest()


def mail_key(jwt_secret: str) -> bytes:
    """The key of the invite secret only the mail carries."""
    return hmac.new(jwt_secret.encode(), b"tenant-api invite mail secrets v1", hashlib.sha256).digest()


def verify_key(jwt_secret: str) -> bytes:
    """The key of email verification secrets."""
    return hmac.new(jwt_secret.encode(), b"tenant-api email verification secrets v1", hashlib.sha256).digest()


def new_nonce() -> bytes:
    return secrets.token_bytes(32)


def derive(key: bytes, nonce: bytes, prefix: str = INVITE_PREFIX) -> str:
    digest = hmac.new(key, nonce, hashlib.sha256).digest()
    body = _base62(int.from_bytes(digest, "big"), _BODY_LEN)  # ~190 of the 256 bits
    return f"{prefix}{body}{_checksum(body)}"


def invite_hash(token: str, prefix: str = INVITE_PREFIX) -> bytes:
    """SHA-256 of a well-formed secret (an invite's, or with VERIFY_PREFIX a
    verification's); MalformedInvite for anything else."""
    body = token[len(prefix) : len(prefix) + _BODY_LEN]
    if (
        len(token) != INVITE_TOKEN_LENGTH
        or not token.startswith(prefix)
        or any(c not in _ALPHABET for c in body)
        or not secrets.compare_digest(_checksum(body), token[len(prefix) + _BODY_LEN :])
    ):
        raise MalformedInvite("not an invite token" if prefix == INVITE_PREFIX else "not a verification token")
    return token_hash(token)
