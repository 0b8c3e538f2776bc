"""The transfer budget's fair shares, and how a reader's window of streams grows (on trio's mock clock)."""

from __future__ import annotations

import trio
import trio.testing

from s3fuse.blockcache import BlockCache
from s3fuse.reader import ObjectReader, _Round
from s3fuse.transfer import TransferBudget

MIB = 1 << 20


def test_a_user_takes_up_to_its_share_and_a_newcomer_gets_the_bytes_that_come_back():
    async def main():
        budget = TransferBudget(64 * MIB)
        greedy, newcomer = object(), object()
        for _ in range(8):
            assert budget.try_take(greedy, 8 * MIB)
        assert not budget.try_take(newcomer, 8 * MIB)  # all taken: refused, and now counted in the share
        budget.give_back(greedy, 8 * MIB)
        assert not budget.try_take(greedy, 8 * MIB)  # 56 MiB held, over its half
        assert budget.try_take(newcomer, 8 * MIB)  # the first bytes need only room
        for _ in range(3):
            budget.give_back(greedy, 8 * MIB)
        assert budget.try_take(newcomer, 24 * MIB)  # 32 MiB: its half
        assert not budget.try_take(newcomer, 8 * MIB)
        budget.leave(newcomer)
        budget.give_back(newcomer, 32 * MIB)
        assert budget.try_take(greedy, 32 * MIB)  # alone again: the whole budget
        assert budget.used == 64 * MIB

    trio.run(main)


def test_an_upload_waits_for_bytes_and_a_part_larger_than_the_budget_goes_alone():
    async def main():
        budget = TransferBudget(16 * MIB)
        reader, upload = object(), object()
        assert budget.try_take(reader, 16 * MIB)
        async with trio.open_nursery() as nursery:
            taken = trio.Event()

            async def part() -> None:
                await budget.take(upload, 8 * MIB)
                taken.set()

            nursery.start_soon(part)
            await trio.testing.wait_all_tasks_blocked()
            assert not taken.is_set()
            budget.give_back(reader, 8 * MIB)
            await taken.wait()
        budget.give_back(reader, 8 * MIB)
        budget.give_back(upload, 8 * MIB)
        await budget.take(upload, 40 * MIB)  # more than the whole budget, with nothing else in flight
        assert not budget.try_take(reader, MIB)

    trio.run(main)


class FakeStream:
    """What ObjectReader._passed reads of a stream."""

    def __init__(self, start: int, waited: bool) -> None:
        self.start, self.end = start, start + ObjectReader.SEGMENT
        self.waits = int(waited)

    def close(self) -> None:
        pass


def reader_of(max_readahead: int) -> ObjectReader:
    """A reader whose streams have just started (_passed needs nothing of S3 or the cache's blocks)."""
    cache = BlockCache(MIB)
    reader = ObjectReader(None, cache, None, "k", 1 << 40, None, MIB, max_readahead, lambda: None)  # type: ignore[arg-type]
    reader._round = _Round(trio.current_time(), reader._window)
    return reader


def pass_segments(
    reader: ObjectReader, clock: trio.testing.MockClock, count: int, seconds_each: float, waited: bool = True
) -> None:
    for _ in range(count):
        clock.jump(seconds_each)
        reader._passed(FakeStream(0, waited))


def test_the_window_doubles_while_throughput_grows_and_goes_back_when_it_does_not():
    clock = trio.testing.MockClock()

    async def main():
        reader = reader_of(512 * MIB)  # room for 64 streams
        assert reader._window == ObjectReader.INITIAL_STREAMS == 8
        pass_segments(reader, clock, 8, 0.1)  # the first round
        assert reader._window == 16
        pass_segments(reader, clock, 16, 0.05)  # twice the throughput with twice the GETs
        assert reader._window == 32
        pass_segments(reader, clock, 32, 0.045)  # about the same throughput: back to 16, and stay
        assert reader._window == 16 and not reader._growing
        pass_segments(reader, clock, 16, 0.01)
        assert reader._window == 16

    trio.run(main, clock=clock)


def test_a_reader_that_never_waits_keeps_its_window_and_the_window_is_capped_by_the_read_ahead():
    clock = trio.testing.MockClock()

    async def main():
        reader = reader_of(128 * MIB)
        pass_segments(reader, clock, 8, 0.1, waited=False)  # the reader, not S3, is the bottleneck
        assert reader._window == 8
        pass_segments(reader, clock, 8, 0.01)
        assert reader._window == 16
        pass_segments(reader, clock, 16, 0.001)
        assert reader._window == 16 and reader._growing  # --read-ahead 128M: 16 segments
        assert reader_of(32 * MIB)._window == 4  # --read-ahead 32M: never more than 4

    trio.run(main, clock=clock)
