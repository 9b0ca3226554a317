"""Passwords: argon2id (argon2-cffi's defaults), hashed and verified off the event loop,
a bounded number at a time.

One argon2id hash takes ~64 MiB and tens of milliseconds of CPU (in C, without the
GIL). Run on the default thread pool (40 threads), 25 concurrent failed logins took
both cores and every other request waited behind them (issue 10: another tenant's GET
went from 6 ms to up to a second). So password work has a pool of its own, at most
``concurrency`` threads per worker; callers wait for a turn in a bounded queue (at most
``queue`` waiting, at most ``wait_seconds`` each), and beyond either bound get a 503
with Retry-After instead of more CPU. Per-account failed-login throttling lives in
ops.ratelimit.FailedLogins (the login route checks it before any password work).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from tenant_api.errors import ProblemError
from tenant_api.ops.metrics import PASSWORD_WORK_REFUSED
from tenant_api.settings import AuthSettings

_hasher = PasswordHasher()
# Verified when the email is unknown, so a wrong email costs the same as a wrong password.
_DUMMY_HASH = _hasher.hash("not a password: equalizes login timing")

T = TypeVar("T")


def _verify(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


class PasswordWork:
    """Hashing and verification with bounded concurrency (one per worker process: its
    pool and its queue; created by create_app, found in ``app.state.passwords``)."""

    def __init__(self, concurrency: int = 1, queue: int = 32, wait_seconds: float = 5.0) -> None:
        self.concurrency = max(concurrency, 1)
        self.queue = max(queue, 0)
        self.wait_seconds = wait_seconds
        self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="argon2")
        self._turns: asyncio.Semaphore | None = None
        self._waiting = 0

    @classmethod
    def from_settings(cls, auth: AuthSettings) -> PasswordWork:
        return cls(auth.password_hash_concurrency, auth.password_hash_queue, auth.password_hash_wait_seconds)

    def _busy(self, why: str) -> ProblemError:
        PASSWORD_WORK_REFUSED.labels(why).inc()
        retry = max(math.ceil(self.wait_seconds), 1)
        return ProblemError(503, f"too many password checks in progress ({why}); retry in {retry}s",
                            headers={"Retry-After": str(retry)})

    async def _run(self, work: Callable[[], T]) -> T:
        if self._turns is None:  # made in the serving loop, at first use
            self._turns = asyncio.Semaphore(self.concurrency)
        turns = self._turns
        if turns.locked():
            if self._waiting >= self.queue:
                raise self._busy("queue full")
            self._waiting += 1
            try:
                await asyncio.wait_for(turns.acquire(), timeout=self.wait_seconds)
            except TimeoutError:
                raise self._busy("waited too long") from None
            finally:
                self._waiting -= 1
        else:
            await turns.acquire()
        try:
            future = asyncio.get_running_loop().run_in_executor(self._executor, work)
        except BaseException:
            turns.release()
            raise
        # The turn is held until the thread is done, even if the request is cancelled
        # meanwhile: the CPU is spent either way.
        future.add_done_callback(lambda _: turns.release())
        return await asyncio.shield(future)

    async def hash(self, password: str) -> str:
        return await self._run(lambda: _hasher.hash(password))

    async def verify(self, password_hash: str | None, password: str) -> bool:
        return await self._run(lambda: _verify(password_hash, password))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
