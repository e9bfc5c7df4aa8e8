"""Group commit: the concurrent requests of one API process share one flush (for intake: one
transaction and one publish), each still getting its own answer.

Contract of :class:`GroupCommit`:

1. ``await submit(item)`` returns that item's own result, or raises that item's own error.
2. No timer, ever (leader/follower): a submit that finds no flush running starts one at once,
   with everything queued. While a flush runs, newcomers queue; when it returns, the next flush
   takes them (up to ``max_batch`` per flush). An idle process thus answers a lone request with
   no added wait, and a busy one fills its batches exactly as fast as flushes come back: the
   batch size follows the load, and a busy event loop never delays a flush.
3. At most ``max_flushes`` flushes at a time per batcher (a newcomer starts another flush while
   fewer run, so a slow flush does not hold up the requests behind it: the process keeps up to
   that many transactions in flight, each carrying what queued meanwhile).
   ``flush(items)`` runs once per batch, off the event loop
   (``run``, the thread pool by default), and returns one entry per item, in order: the item's
   result, or an exception instance that is that item's error alone. If ``flush`` raises (the
   whole transaction failed), every item of that batch gets that error.
4. A request cancelled (client gone) while still queued is left out of its batch; one cancelled
   while its batch is flushing does not stop the flush (its item may be stored, as it may on
   the one-request path), and its result is dropped.
5. One event loop at a time: a batcher first used on a new loop (a test client's) forgets
   anything left queued on the old one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from starlette.concurrency import run_in_threadpool

T = TypeVar("T")
R = TypeVar("R")

#: ``flush(items)`` -> one entry per item: its result, or an exception that is its error alone.
Flush = Callable[[list[T]], Sequence[R | Exception]]


class GroupCommit(Generic[T, R]):
    """Batches concurrent :meth:`submit` calls into :attr:`flush` calls (the module's contract)."""

    def __init__(
        self,
        flush: Flush[T, R],
        *,
        max_batch: int,
        max_flushes: int = 1,
        run: Callable[..., Awaitable[Any]] = run_in_threadpool,
    ) -> None:
        if max_batch < 1 or max_flushes < 1:
            raise ValueError("max_batch and max_flushes must be at least 1")
        self.flush, self.max_batch, self.max_flushes = flush, max_batch, max_flushes
        self._run = run
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._drainers: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def queued(self) -> int:
        """Items waiting for the next flush (not counting the one running)."""
        return len(self._queue)

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop: nothing of the old one can be answered
            self._loop, self._queue, self._drainers = loop, [], set()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future))
        if len(self._drainers) < self.max_flushes:
            self._drainers.add(loop.create_task(self._drain()))
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = [(i, f) for i, f in self._queue[: self.max_batch] if not f.done()]
                del self._queue[: self.max_batch]
                if batch:
                    await self._flush(batch)
        finally:
            # No await between the last look at the queue and here: a newcomer either was
            # taken above or finds a free drainer slot and starts the next one.
            current = asyncio.current_task()
            if current is not None:
                self._drainers.discard(current)  # type: ignore[arg-type]

    async def _flush(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        results: Sequence[R | Exception]
        try:
            results = await self._run(self.flush, [item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"flush returned {len(results)} results for {len(batch)}")
        except Exception as exc:  # noqa: BLE001 - the whole batch failed: each item gets it
            results = [exc] * len(batch)
        except BaseException:  # cancelled (the loop is shutting down): nobody to answer
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # its request was cancelled meanwhile
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
