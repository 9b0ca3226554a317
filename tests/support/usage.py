"""The app's usage recorder, as the tests wait for it."""

from __future__ import annotations

import asyncio

from litestar.testing import AsyncTestClient


async def flush(client: AsyncTestClient) -> None:
    """Wait until the app's usage recorder has written everything it was handed."""
    assert await asyncio.to_thread(client.app.state.usage.flush, 10.0)
