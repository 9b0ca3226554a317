"""The invite mailer: delivers the rows of invite_outbox.

It runs as a background task of each API process (started by create_app when
SMTP_URL is set, or by `make run`, see below). Each round it claims due rows through
auth.claim_invite_mail (FOR UPDATE SKIP LOCKED, so several workers never claim the same
row; a lease, so a row claimed by a process that died is due again), re-derives each
invite's secret (auth.mail_secrets), sends the mail with the standard library's smtplib in a
thread, and settles the row through auth.finish_invite_mail: sent, or retried with
exponential backoff (InviteSettings.backoff_seconds doubled per attempt, at most an hour)
up to max_attempts, then 'failed'. A failure never touches the invite itself: it stays
pending, and GET .../invites shows delivery_status so an admin can resend it.

Where the link goes without SMTP_URL:
  * `tenant-api dev` (make run) sets InviteSettings.log_links: the mail, link and
    secret included, is written to the log instead of sent. That is the developer's own
    machine and terminal, and the only way to use invites there without a mail server.
  * `tenant-api serve` never does (log_links is not read from the environment): the
    mailer does not run and mails wait in the outbox; nothing secret is ever logged.
    In SMTP mode the log names the recipient and the outbox row, never the link.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from tenant_api.auth.credentials import token_hash
from tenant_api.auth.verification import LINK_LINE
from tenant_api.errors import log_failure
from tenant_api.auth import mail_secrets
from tenant_api.ops.metrics import MAILS
from tenant_api.settings import InviteSettings

log = logging.getLogger("tenant_api.mailer")

MAX_BACKOFF_SECONDS = 3600.0


class PermanentFailure(Exception):
    """Retrying cannot help."""


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    security: str  # "plain" | "starttls" | "tls"
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> SmtpTarget:
        parts = urlsplit(url)
        security = {"smtp": "plain", "smtp+starttls": "starttls", "smtps": "tls"}.get(parts.scheme)
        if security is None or not parts.hostname:
            raise ValueError("SMTP_URL must look like smtp://, smtp+starttls:// or smtps://[user:password@]host[:port]")
        port = parts.port or {"plain": 25, "starttls": 587, "tls": 465}[security]
        return cls(parts.hostname, port, security,
                   unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None)

    def send(self, message: EmailMessage, timeout: float = 30.0) -> None:
        smtp_class = smtplib.SMTP_SSL if self.security == "tls" else smtplib.SMTP
        kwargs: dict[str, Any] = {"context": ssl.create_default_context()} if self.security == "tls" else {}
        with smtp_class(self.host, self.port, timeout=timeout, **kwargs) as smtp:
            if self.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.send_message(message)


def backoff(attempts: int, base: float) -> float:
    """Delay before the next try after ``attempts`` failed ones: base, 2*base, 4*base, ..."""
    return min(base * 2 ** (attempts - 1), MAX_BACKOFF_SECONDS)


class Mailer:
    def __init__(self, sessionmaker: async_sessionmaker, settings: InviteSettings, jwt_secret: str,
                 base_url: str = "http://127.0.0.1:8000") -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.base_url = base_url.rstrip("/")
        """PUBLIC_URL (ServerSettings.base_url): every link starts with it."""
        self.invite_key = mail_secrets.mail_key(jwt_secret)
        self.verify_key = mail_secrets.verify_key(jwt_secret)
        self.smtp = SmtpTarget.parse(settings.smtp_url) if settings.smtp_url else None

    async def run_once(self, limit: int = 20) -> int:
        """One round: claim up to ``limit`` due mails, deliver each, settle each.
        Returns how many were claimed."""
        async with self.sessionmaker() as session:
            async with session.begin():
                rows = (await session.execute(text("select * from auth.claim_invite_mail(:limit, :lease)"),
                                              {"limit": limit, "lease": _interval(self.settings.lease_seconds)})).all()
            for row in rows:
                error, retry_in = None, None
                try:
                    await self._deliver(row)
                except Exception as exc:  # noqa: BLE001 -- any failure is recorded on the row
                    error = f"{type(exc).__name__}: {exc}"[:1000]
                    if not isinstance(exc, PermanentFailure) and row.attempts < self.settings.max_attempts:
                        retry_in = backoff(row.attempts, self.settings.backoff_seconds)
                    log.warning("invite mail %s to %s failed (attempt %d): %s; %s", row.id, row.recipient,
                                row.attempts, error,
                                f"retry in {retry_in:.0f} s" if retry_in is not None else "giving up")
                MAILS.labels("sent" if error is None else "retry" if retry_in is not None else "failed").inc()
                async with session.begin():
                    await session.execute(
                        text("select auth.finish_invite_mail(:org, :id, :error, :retry_in)"),
                        {"org": row.organization_id, "id": row.id, "error": error,
                         "retry_in": _interval(retry_in) if retry_in is not None else None})
        return len(rows)

    def link(self, kind: str, nonce: bytes) -> tuple[str, str]:
        """The mail's secret (re-derived from the row's nonce) and the link carrying it,
        in the fragment: browsers never send a fragment to any server."""
        if kind == "verify":
            secret = mail_secrets.derive(self.verify_key, nonce, mail_secrets.VERIFY_PREFIX)
            return secret, f"{self.base_url}/verify-email#token={secret}"
        secret = mail_secrets.derive(self.invite_key, nonce)
        return secret, f"{self.base_url}/invites/accept#invite_token={secret}"

    async def _deliver(self, row: Any) -> None:
        secret, link = self.link(row.kind, row.nonce)
        if row.token_hash is None or token_hash(secret) != row.token_hash:
            raise PermanentFailure("the mail's secret cannot be re-derived (JWT_SECRET changed, or a newer mail "
                                   "replaced it): resend it")
        body = "\n".join(link if line == LINK_LINE else line for line in row.body.split("\n"))
        if self.smtp is None:
            log.info("mail (development: logged, not sent) to %s\nSubject: %s\n\n%s",
                     row.recipient, row.subject, body)
            if self.settings.mail_dir:
                _write_dev_mail(self.settings.mail_dir, row.recipient, f"Subject: {row.subject}\n\n{body}\n")
            return
        message = EmailMessage()
        message["From"] = self.settings.mail_from
        message["To"] = row.recipient
        message["Subject"] = row.subject
        message["Message-ID"] = make_msgid(domain="tenant-api")
        message.set_content(body)
        await asyncio.to_thread(self.smtp.send, message)
        log.info("invite mail %s sent to %s", row.id, row.recipient)

    async def run_forever(self) -> None:
        while True:
            try:
                claimed = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 -- the database may be away for a moment
                log_failure(log, "invite mailer round failed", exc)
                claimed = 0
            if claimed == 0:
                await asyncio.sleep(self.settings.poll_seconds)


def _write_dev_mail(directory: str, recipient: str, text_: str) -> None:
    """`make run` only: the latest mail to each address, readable by the walkthroughs."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "@.-_+" else "_" for c in recipient.lower())
    target = path / f"{safe}.txt"
    target.write_text(text_)
    target.chmod(0o600)


def _interval(seconds: float) -> dt.timedelta:
    return dt.timedelta(seconds=seconds)
