"""What every servicer and the call guard share: where blocking service calls run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class BlockingRunner:
    """Runs the services' blocking calls off or on the event loop.

    Writes, uploads and gates always run in the thread pool. Reads run inline on the event loop
    when `inline_reads` is set: a local SQLite read in WAL mode never waits for a writer and takes
    about 0.1 ms, less than the hop to a pool thread and back. With a networked database
    (PostgreSQL) reads go to the pool too, so a slow query never stalls other calls.
    """

    def __init__(self, executor: Executor, *, inline_reads: bool) -> None:
        self.executor = executor
        self.inline_reads = inline_reads

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Runs a blocking call in the thread pool."""
        loop = asyncio.get_running_loop()
        if kwargs:
            return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))
        return await loop.run_in_executor(self.executor, fn, *args)

    async def read(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Runs a read-only call, inline when reads are cheap enough (see the class docstring)."""
        if self.inline_reads:
            return fn(*args, **kwargs)
        return await self.run(fn, *args, **kwargs)


class ServicerBase:
    def __init__(self, runner: BlockingRunner) -> None:
        self.run = runner.run
        self.read = runner.read
