"""Graceful shutdown: live connections end cleanly before the server stops.

uvicorn, on SIGTERM/SIGINT, stops accepting, closes WebSockets with 1012, waits for
in-flight requests (at most SHUTDOWN_TIMEOUT_SECONDS), cancels what is left (a live
stream never ends by itself: a CancelledError traceback), then runs the app's shutdown.
Under uvicorn the app therefore takes the signal first (``install_signal_handlers``, at
start-up, wrapping uvicorn's handler) and drains:

1. Server-Sent Event streams get a final ``event: error`` (503, "reconnect with
   Last-Event-ID") and end;
2. robot WebSockets are closed with 1001 (going away), their rows marked
   ``server_shutdown``;
3. runners' claims waiting for work (long polls) end with a 503 and Retry-After, which
   runners retry; a claim arriving meanwhile does not start waiting;
4. at most ``drain_seconds`` later, uvicorn's own shutdown proceeds: in-flight requests
   finish, then the app's shutdown flushes the usage records, stops the mailer and
   closes the pools.

A second signal during the drain skips to uvicorn's shutdown at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

log = logging.getLogger("tenant_api.shutdown")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Drain:
    """What this process must end before it stops: streams (through the hub), the tasks
    of open robot sockets, and claims waiting for work (through the run queue)."""

    def __init__(self, hub: Any, drain_seconds: float, run_queue: Any = None) -> None:
        self.hub = hub
        self.run_queue = run_queue
        self.drain_seconds = drain_seconds
        self.draining = False
        self._sockets: set[asyncio.Task[Any]] = set()

    @contextmanager
    def track_socket(self) -> Iterator[None]:
        """Around a socket's conversation: drain cancels the task, and the handler
        closes the socket with 1001."""
        task = asyncio.current_task()
        assert task is not None
        self._sockets.add(task)
        try:
            yield
        finally:
            self._sockets.discard(task)

    @property
    def open_sockets(self) -> int:
        return len(self._sockets)

    async def drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        streams, sockets = self.hub.open_streams, len(self._sockets)
        log.info("draining: ending %d stream(s), %d socket(s) and %d waiting claim(s)", streams, sockets,
                 self._claims())
        self.hub.drain()
        if self.run_queue is not None:
            self.run_queue.drain()
        for task in list(self._sockets):
            task.cancel("server shutting down")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_seconds
        while self._open() and loop.time() < deadline:  # noqa: ASYNC110 - three sources
            await asyncio.sleep(0.05)
        if self._open():
            log.warning("drain timed out with %d stream(s), %d socket(s) and %d waiting claim(s) open",
                        self.hub.open_streams, len(self._sockets), self._claims())
        else:
            log.info("drained")

    def _claims(self) -> int:
        return self.run_queue.waiting if self.run_queue is not None else 0

    def _open(self) -> bool:
        return bool(self.hub.open_streams or self._sockets or self._claims())


def _is_uvicorn_handler(handler: Any) -> bool:
    owner = getattr(handler, "__self__", None)
    return type(owner).__module__.startswith("uvicorn.") and getattr(handler, "__name__", "") == "handle_exit"


def install_signal_handlers(drain: Drain) -> Callable[[], None]:
    """Take SIGTERM/SIGINT before uvicorn does (only when uvicorn serves this app in
    the main thread; a test client or another server is left alone). Returns a function
    restoring uvicorn's handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    if not all(_is_uvicorn_handler(h) for h in previous.values()):
        return lambda: None
    loop = asyncio.get_running_loop()
    started: list[asyncio.Task[None]] = []

    def handle(sig: int, frame: FrameType | None) -> None:
        uvicorn_handler: Any = previous[signal.Signals(sig)]
        if started:  # a second signal: stop waiting
            uvicorn_handler(sig, frame)
            return

        async def drain_then_stop() -> None:
            try:
                await drain.drain()
            except Exception:
                log.exception("drain failed")
            finally:
                uvicorn_handler(sig, frame)

        # A fresh context: the signal may land while a request's (its request id) is current.
        started.append(loop.create_task(drain_then_stop(), context=contextvars.Context()))

    for sig in _SIGNALS:
        signal.signal(sig, handle)

    def restore() -> None:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is handle:
                signal.signal(sig, handler)

    return restore
