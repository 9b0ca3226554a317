"""Bearer credentials, checked without the database.

API tokens: ``tapi_`` + 32 base62 characters of randomness (~190 bits) + 6 base62
characters of CRC32 checksum, like GitHub's token format: a typo or a truncated token is
refused before any database work, and secret scanners can recognize the prefix. Stored
only as SHA-256: for a 190-bit random secret a slow password hash adds nothing but
latency on every request.

Sessions: a JWT (HS256) whose ``sid`` is the session's platform_token id and ``org`` its
organization; the signature and expiry are checked here, revocation by the database.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import string
import zlib
from uuid import UUID

import jwt

from tenant_api.db.context import Credential

TOKEN_PREFIX = "tapi_"  # noqa: S105 - the public prefix, not a secret
_ALPHABET = string.digits + string.ascii_letters
_BODY_LEN = 32
_CHECK_LEN = 6
TOKEN_LENGTH = len(TOKEN_PREFIX) + _BODY_LEN + _CHECK_LEN
DISPLAY_PREFIX_LEN = len(TOKEN_PREFIX) + 6


class InvalidCredential(Exception):
    """The credential is malformed, forged or expired (401)."""


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECK_LEN)


def new_api_token() -> str:
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LEN))
    return f"{TOKEN_PREFIX}{body}{_checksum(body)}"


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def display_prefix(token: str) -> str:
    return token[:DISPLAY_PREFIX_LEN]


# Well-formed tokens seen lately, by their hash (never the secret): a client sends the
# same token with every request, and its format and checksum cannot change.
_WELL_FORMED: dict[bytes, Credential] = {}
_WELL_FORMED_MAX = 10_000


def parse_api_token(token: str) -> Credential:
    if len(token) != TOKEN_LENGTH or not token.startswith(TOKEN_PREFIX):
        raise InvalidCredential("malformed API token")
    digest = token_hash(token)
    known = _WELL_FORMED.get(digest)
    if known is not None:
        return known
    body = token[len(TOKEN_PREFIX) : len(TOKEN_PREFIX) + _BODY_LEN]
    check = token[len(TOKEN_PREFIX) + _BODY_LEN :]
    if any(c not in _ALPHABET for c in body) or not secrets.compare_digest(_checksum(body), check):
        raise InvalidCredential("malformed API token")
    credential = Credential(kind="api", token_hash=digest, prefix=display_prefix(token))
    if len(_WELL_FORMED) >= _WELL_FORMED_MAX:
        _WELL_FORMED.clear()
    _WELL_FORMED[digest] = credential
    return credential


def _claim_uuid(claims: dict[str, object], name: str) -> UUID:
    """A claim that must hold a UUID string: anything else (a number, a list, an object)
    is an invalid credential, never a crash in UUID()."""
    value = claims.get(name)
    if not isinstance(value, str):
        raise InvalidCredential(f"invalid session token: {name} is not a string")
    try:
        return UUID(value)
    except ValueError:
        raise InvalidCredential(f"invalid session token: {name} is not a UUID") from None


class SessionCodec:
    """Issues and checks session JWTs. Only HS256 with our key is accepted: ``alg: none``,
    other algorithms, other keys, tampered or expired tokens are all InvalidCredential."""

    algorithm = "HS256"

    def __init__(self, secret: str, issuer: str) -> None:
        if len(secret) < 32:
            raise ValueError("JWT_SECRET must be at least 32 characters")
        self._secret = secret
        self._issuer = issuer

    def issue(self, *, session_id: UUID, organization_id: UUID, user_id: UUID, expires_at: dt.datetime) -> str:
        now = dt.datetime.now(dt.UTC)
        claims = {
            "iss": self._issuer,
            "sub": str(user_id),
            "sid": str(session_id),
            "org": str(organization_id),
            "iat": int(now.timestamp()),
            "exp": int(expires_at.timestamp()),
        }
        return jwt.encode(claims, self._secret, algorithm=self.algorithm)

    def parse(self, token: str) -> Credential:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self.algorithm],
                issuer=self._issuer,
                options={"require": ["exp", "iat", "iss", "sub", "sid", "org"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidCredential("session expired") from exc
        except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
            raise InvalidCredential("invalid session token") from exc
        _claim_uuid(claims, "sub")
        return Credential(kind="session", session_id=_claim_uuid(claims, "sid"),
                          session_org=_claim_uuid(claims, "org"), prefix="session")


def expired_session(codec: SessionCodec, token: str) -> tuple[UUID, UUID, UUID] | None:
    """(session id, organization id, user id) of a session JWT that is ours (signature,
    algorithm, issuer all checked) but expired; None for anything else. Lets the audit
    trail attribute the refused request to its organization (audit.usage)."""
    try:
        claims = jwt.decode(token, codec._secret, algorithms=[codec.algorithm], issuer=codec._issuer,
                            options={"verify_exp": False, "require": ["exp", "sub", "sid", "org"]})
        return _claim_uuid(claims, "sid"), _claim_uuid(claims, "org"), _claim_uuid(claims, "sub")
    except (jwt.InvalidTokenError, ValueError, TypeError, InvalidCredential):
        return None


WEBSOCKET_SUBPROTOCOL = "tenant-api.v1"
"""The subprotocol a WebSocket client offers beside its credential; the server selects it."""
_BEARER_SUBPROTOCOL = "bearer."


def bearer_from_subprotocols(header: bytes | None) -> bytes | None:
    """``Sec-WebSocket-Protocol: tenant-api.v1, bearer.<credential>`` -> ``Bearer <credential>``.

    Browsers cannot set Authorization on a WebSocket; a credential in the URL ends up in
    access and handshake logs, so it travels in this header instead (never echoed back:
    the server selects ``tenant-api.v1``)."""
    if not header:
        return None
    for offered in header.decode("latin-1").split(","):
        offered = offered.strip()
        if offered.startswith(_BEARER_SUBPROTOCOL):
            return b"Bearer " + offered[len(_BEARER_SUBPROTOCOL):].encode("latin-1")
    return None


def refused_prefix(raw: bytes) -> str | None:
    """What a security event may keep of a refused credential: an API token's display
    prefix (as stored for real tokens), "session" for a JWT, nothing of anything else."""
    value = raw.decode("latin-1").partition(" ")[2].strip()
    if value.startswith(TOKEN_PREFIX):
        return value[:DISPLAY_PREFIX_LEN]
    return "session" if value.count(".") == 2 else None


def parse_bearer(header: str | None, codec: SessionCodec) -> Credential:
    if not header:
        raise InvalidCredential("missing credential: send Authorization: Bearer <token>")
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise InvalidCredential("the Authorization header must be 'Bearer <token>'")
    if value.startswith(TOKEN_PREFIX):
        return parse_api_token(value)
    if value.count(".") == 2:
        return codec.parse(value)
    raise InvalidCredential("malformed credential")
