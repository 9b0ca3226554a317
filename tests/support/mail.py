"""A real SMTP server's inbox for the tests (aiosmtpd), and reading what it received."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from email.message import Message

from tests.support.live_server import free_port


class Inbox:
    """aiosmtpd handler: keeps every delivered message; can refuse the first DATA for
    some recipients (a temporary failure, as a busy server would)."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []
        self.refuse_once: set[str] = set()

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 -- aiosmtpd's hook name
        refused = self.refuse_once & {r.lower() for r in envelope.rcpt_tos}
        if refused:
            self.refuse_once -= refused
            return "451 4.3.0 try again later"
        self.messages.append(([r.lower() for r in envelope.rcpt_tos], message_from_bytes(envelope.content)))
        return "250 OK"

    def to(self, email: str) -> list[Message]:
        """Invitation mails to ``email`` (sign-up's verification mails go to the same inbox)."""
        return [m for rcpts, m in self.messages
                if email.lower() in rcpts and m["Subject"] != "Confirm your email address"]

    async def wait_for(self, email: str, count: int = 1, timeout: float = 10.0) -> list[Message]:
        deadline = time.monotonic() + timeout
        while len(self.to(email)) < count:
            assert time.monotonic() < deadline, f"no mail to {email} within {timeout} s"
            await asyncio.sleep(0.02)
        return self.to(email)


def body_of(message: Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


@contextmanager
def smtp_server(inbox: Inbox | None = None) -> Iterator[tuple[Inbox, str]]:
    """A real SMTP server (aiosmtpd) on a free local port delivering into ``inbox``:
    yields (inbox, its smtp:// URL), stopped at the end."""
    from aiosmtpd.controller import Controller

    # aiosmtpd (standing in for the recipient's mail server) logs whole messages at
    # DEBUG: keep it quiet, so the "no secret in our logs" checks read our logs only.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    inbox = inbox if inbox is not None else Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield inbox, f"smtp://127.0.0.1:{controller.port}"
    finally:
        controller.stop()
