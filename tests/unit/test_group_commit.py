"""The intake batcher (api.group_commit) with a fake store: an idle request is flushed at once,
requests arriving during a flush share the next one, each request gets its own answer, one
item's error stays its own and a failed flush fails its batch only."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from api.group_commit import GroupCommit


class FakeStore:
    """Stores ints; refuses negative ones (that item's error); the next ``down`` flushes fail
    whole.
    ``hold`` keeps a flush running until released, so the test decides what queues meanwhile."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.down = 0
        self.hold: asyncio.Event | None = None
        self.flushing = asyncio.Event()

    def flush(self, items: list[int]) -> Sequence[str | Exception]:
        self.batches.append(items)
        if self.down:
            self.down -= 1
            raise ConnectionError("database unreachable")
        return [ValueError(f"bad {i}") if i < 0 else f"stored {i}" for i in items]

    async def run(self, fn: Callable[[list[int]], Any], items: list[int]) -> Any:
        self.flushing.set()
        if self.hold is not None:
            await self.hold.wait()
        return fn(items)


async def until(predicate: Callable[[], bool]) -> None:
    """Yield to the event loop until ``predicate`` holds (no clock involved)."""
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def submit_all(batcher: GroupCommit[int, str], items: Sequence[int]) -> list[asyncio.Task[str]]:
    return [asyncio.ensure_future(batcher.submit(i)) for i in items]


async def answers(tasks: Sequence[Awaitable[str]]) -> list[Any]:
    return list(await asyncio.gather(*tasks, return_exceptions=True))


def run(main: Callable[[FakeStore], Awaitable[None]]) -> FakeStore:
    store = FakeStore()
    asyncio.run(main(store))
    return store


def test_an_idle_request_is_flushed_at_once_alone():
    async def main(store: FakeStore) -> None:
        batcher = GroupCommit(store.flush, max_batch=64, run=store.run)
        [alone] = submit_all(batcher, [7])
        for _ in range(3):  # a few turns of the loop, far less than any timer's tick
            await asyncio.sleep(0)
        assert store.flushing.is_set(), "the flush waited for company"
        assert await alone == "stored 7"

    assert run(main).batches == [[7]]


def test_requests_arriving_during_a_flush_share_the_next_one():
    async def main(store: FakeStore) -> None:
        store.hold = asyncio.Event()
        batcher = GroupCommit(store.flush, max_batch=64, run=store.run)
        first = submit_all(batcher, [1])
        await store.flushing.wait()
        rest = submit_all(batcher, range(2, 12))
        await until(lambda: batcher.queued == 10)
        store.hold.set()
        assert await answers(first + rest) == [f"stored {i}" for i in range(1, 12)]

    assert run(main).batches == [[1], list(range(2, 12))]


def test_a_flush_takes_at_most_max_batch_and_the_rest_follow():
    async def main(store: FakeStore) -> None:
        store.hold = asyncio.Event()
        batcher = GroupCommit(store.flush, max_batch=4, run=store.run)
        first = submit_all(batcher, [0])
        await store.flushing.wait()
        rest = submit_all(batcher, range(1, 11))
        await until(lambda: batcher.queued == 10)
        store.hold.set()
        assert await answers(first + rest) == [f"stored {i}" for i in range(11)]

    assert run(main).batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]


def test_one_bad_item_fails_alone():
    async def main(store: FakeStore) -> None:
        store.hold = asyncio.Event()
        batcher = GroupCommit(store.flush, max_batch=64, run=store.run)
        first = submit_all(batcher, [1])
        await store.flushing.wait()
        rest = submit_all(batcher, [2, -3, 4])
        await until(lambda: batcher.queued == 3)
        store.hold.set()
        got = await answers(first + rest)
        assert got[:2] == ["stored 1", "stored 2"] and got[3] == "stored 4"
        assert isinstance(got[2], ValueError) and str(got[2]) == "bad -3"

    assert run(main).batches == [[1], [2, -3, 4]]


def test_a_failed_flush_fails_its_batch_and_the_next_batch_still_runs():
    async def main(store: FakeStore) -> None:
        store.hold = asyncio.Event()
        store.down = 1
        batcher = GroupCommit(store.flush, max_batch=64, run=store.run)
        doomed = submit_all(batcher, [1, 2])
        await store.flushing.wait()
        later = submit_all(batcher, [3])
        await until(lambda: batcher.queued == 1)
        store.hold.set()
        got = await answers(doomed + later)
        assert [type(g) for g in got[:2]] == [ConnectionError, ConnectionError]
        assert got[2] == "stored 3"

    assert run(main).batches == [[1, 2], [3]]


def test_a_request_cancelled_while_queued_is_left_out_and_the_others_answered():
    async def main(store: FakeStore) -> None:
        store.hold = asyncio.Event()
        batcher = GroupCommit(store.flush, max_batch=64, run=store.run)
        first = submit_all(batcher, [1])
        await store.flushing.wait()
        gone, kept = submit_all(batcher, [2, 3])
        await until(lambda: batcher.queued == 2)
        gone.cancel()
        store.hold.set()
        assert await answers([*first, kept]) == ["stored 1", "stored 3"]
        assert gone.cancelled()

    assert run(main).batches == [[1], [3]]


def test_a_flush_that_answers_the_wrong_number_of_items_fails_its_batch():
    async def main(store: FakeStore) -> None:
        batcher = GroupCommit(lambda items: ["only one"], max_batch=64, run=store.run)
        got = await answers(submit_all(batcher, [1, 2]))
        assert all(isinstance(g, RuntimeError) for g in got), got

    run(main)


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch"):
        GroupCommit(FakeStore().flush, max_batch=0)


def test_a_held_flush_does_not_hold_up_the_next_while_flushes_are_free():
    """With room for two flushes, a request arriving while one flush is held is flushed at
    once by a second; with room for one it waits for the first to return."""

    async def main(store: FakeStore, max_flushes: int) -> None:
        store.hold = asyncio.Event()
        batcher = GroupCommit(store.flush, max_batch=64, max_flushes=max_flushes, run=store.run)
        first = submit_all(batcher, [1])
        await until(store.flushing.is_set)
        store.flushing.clear()
        second = submit_all(batcher, [2])
        for _ in range(3):
            await asyncio.sleep(0)
        assert store.flushing.is_set() is (max_flushes > 1)
        store.hold.set()
        assert await answers([*first, *second]) == ["stored 1", "stored 2"]

    for max_flushes in (1, 2):
        store = FakeStore()
        asyncio.run(main(store, max_flushes))
        assert store.batches == [[1], [2]]
