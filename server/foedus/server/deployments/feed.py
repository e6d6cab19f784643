"""Wakes the WatchAssignments streams of a deployment when it changes.

A change committed in this process wakes its watchers at once. Watchers also re-read the store every
few seconds, so a change made through another worker process or replica reaches them within that
poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib


class ChangeFeed:
    def __init__(self, loop: asyncio.AbstractEventLoop, *, poll_s: float = 2.0) -> None:
        self._loop = loop
        self.poll_s = poll_s
        self._waiters: dict[tuple[str, str], set[asyncio.Event]] = {}

    def notify(self, tenant: str, deployment: str) -> None:
        """Thread-safe: called by the service after it committed a change."""
        self._loop.call_soon_threadsafe(self._wake, (tenant, deployment))

    def _wake(self, key: tuple[str, str]) -> None:
        for event in self._waiters.get(key, ()):
            event.set()

    async def wait(self, tenant: str, deployment: str) -> None:
        """Returns when the deployment changed here, or after the poll interval."""
        key = (tenant, deployment)
        event = asyncio.Event()
        self._waiters.setdefault(key, set()).add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), self.poll_s)
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[key]
