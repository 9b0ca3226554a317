"""Rate limits count in fixed windows (tenant_api.ops.ratelimit): a test that counts
requests against a quota must not straddle a window's end, or the count starts afresh
midway and the test fails on the clock, not on the code."""

from __future__ import annotations

import asyncio
import time


async def inside_one_window(need_seconds: float, window: int = 60) -> None:
    """Return when at least ``need_seconds`` remain in the current window (sleeping into
    the next window when fewer do)."""
    left = window - time.time() % window
    if left < need_seconds:
        await asyncio.sleep(left + 0.2)
