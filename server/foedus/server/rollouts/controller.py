"""The rollout controller: a background task of the server that ticks every active rollout.

With several server processes (workers or replicas) on one database, a lease in the store makes
sure one controller ticks at a time; the others stand by and take over when the lease expires.
Each rollout's transitions are also guarded by its revision, so a person's pause, promote or abort
racing with a tick never gets lost (the tick is dropped and recomputed on the next one).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable
from concurrent.futures import Executor

from foedus.server.rollouts.service import RolloutService
from foedus.server.store.base import Store
from foedus.server.tenancy.service import now_us

log = logging.getLogger(__name__)

LEASE = "rollout-controller"


class RolloutController:
    def __init__(
        self,
        service: RolloutService,
        store: Store,
        executor: Executor,
        *,
        interval_s: float = 5.0,
        on_tick: Callable[[str, int], None] | None = None,
        clock: Callable[[], int] = now_us,
    ) -> None:
        """`on_tick(tenant, rollout_id)` is called after a tick stored a change of that rollout."""
        if interval_s <= 0:
            raise ValueError("the rollout controller interval must be positive")
        self._service = service
        self._store = store
        self._executor = executor
        self.interval_s = interval_s
        self._on_tick = on_tick
        self._clock = clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def tick_all(self) -> int:
        """One pass over the active rollouts when this process holds the lease; returns how many changed."""
        ttl_us = int(max(3 * self.interval_s, 10.0) * 1e6)
        if not self._store.acquire_lease(LEASE, self.owner, self._clock(), ttl_us):
            return 0
        changed = 0
        for rollout in self._store.active_rollouts():
            try:
                saved = self._service.tick(rollout)
            except Exception:
                log.exception(
                    "tick of rollout %s (%s/%s) failed", rollout.id, rollout.tenant, rollout.deployment
                )
                continue
            if saved is not None:
                changed += 1
                if saved.phase != rollout.phase or saved.step != rollout.step:
                    log.info(
                        "rollout %s of %s/%s: %s, step %d: %s",
                        saved.id,
                        saved.tenant,
                        saved.deployment,
                        saved.phase.name.lower(),
                        saved.step + 1,
                        saved.reason,
                    )
                if self._on_tick is not None:
                    self._on_tick(saved.tenant, saved.id)
        return changed

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await loop.run_in_executor(self._executor, self.tick_all)
            except Exception:
                log.exception("rollout controller pass failed")
