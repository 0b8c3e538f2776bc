"""Extents and SpillFile against simple models (hypothesis): every byte comes from the right place."""

from __future__ import annotations

import itertools
import os

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from s3fuse.extents import Extents
from s3fuse.write.spill import MEMORY_BUDGET, REMOVE_APART, REMOVER, SpillFile

SIZE = 200  # small files: hypothesis explores the interval arithmetic, not the disk

ranges = st.tuples(st.integers(0, SIZE), st.integers(0, SIZE)).map(sorted)


@given(st.lists(ranges, max_size=12), st.integers(0, SIZE), ranges)
def test_extents_match_a_set_of_offsets(added, cut, probe):
    extents, model = Extents(), set()
    for start, end in added:
        extents.add(start, end)
        model.update(range(start, end))
    extents.truncate(cut)
    model = {i for i in model if i < cut}
    start, end = probe
    segments = list(extents.segments(start, end))
    # the segments tile [start, end), alternate, and say truly which bytes are in the set
    assert [(s, e) for s, e, _ in segments] == list(itertools.pairwise([start] + [e for _, e, _ in segments]))
    assert (segments[-1][1] if segments else start) == end
    assert all(a[2] != b[2] for a, b in itertools.pairwise(segments))
    for s, e, inside in segments:
        assert all((i in model) == inside for i in range(s, e))
    assert extents.intersects(start, end) == any(i in model for i in range(start, end))


operations = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, SIZE), st.binary(min_size=1, max_size=40)),
        st.tuples(st.just("truncate"), st.integers(0, SIZE + 40), st.just(b"")),
    ),
    max_size=10,
)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=SIZE), operations, ranges, st.sampled_from(["memory", "disk", "memory, then disk"]))
def test_spill_file_reads_what_a_local_file_would_hold(tmp_path_factory, base, ops, probe, where):
    directory = tmp_path_factory.mktemp("spill") / "not yet made"
    spill = SpillFile(str(directory), len(base), in_memory=where != "disk")
    if where == "memory, then disk":
        spill.memory_limit = SIZE // 2  # writes past it move the bytes to disk
    model = bytearray(base)
    fetched = []

    async def fetch_base(start: int, end: int) -> bytes:
        assert end <= spill.base_limit  # never asks S3 for bytes past what is still the object's
        fetched.append((start, end))
        return bytes(base[start:end])

    try:
        for op, offset, data in ops:
            if op == "write":
                spill.write(offset, data)
                model.extend(bytes(max(0, offset + len(data) - len(model))))
                model[offset : offset + len(data)] = data
            else:
                spill.truncate(offset)
                del model[offset:]
                model.extend(bytes(offset - len(model)))
        assert spill.size == len(model)
        start, end = probe
        assert trio.run(spill.read, start, end, fetch_base) == bytes(model[start:end])
        assert spill.needs_base(start, end) == bool(fetched)
        crossed = any(op == "write" and offset + len(data) > SIZE // 2 for op, offset, data in ops)
        assert directory.exists() == (where == "disk" or (where == "memory, then disk" and crossed))
        for s, e in spill.written.ranges():  # the file on disk, made now if need be
            assert os.pread(spill.fd, e - s, s) == bytes(model[s:e])
        assert trio.run(spill.read, start, end, fetch_base) == bytes(model[start:end])
        # On disk it is as long as the file, holes and all: any range can be sent from it ...
        assert os.fstat(spill.fd).st_size == len(model)
        # ... once fill has copied in what only the base object holds, a few bytes at a time.
        trio.run(spill.fill, start, end, fetch_base, 7)
        assert os.pread(spill.fd, end - start, start) == bytes(model[start:end])
        assert not spill.needs_base(start, end)
    finally:
        spill.close()
    assert SpillFile.budget.free == MEMORY_BUDGET  # every byte held in memory was given back


def test_an_empty_range_intersects_nothing():
    extents = Extents()
    extents.add(0, 2)  # the case hypothesis found
    assert not extents.intersects(1, 1)


def test_a_read_keeps_the_spill_file_until_it_ends(tmp_path):
    """A save that ends while a read awaits S3 closes the spill file only after that read:
    the read's later pieces come from the file it began with, never from a reused descriptor."""
    spill = SpillFile(str(tmp_path), 100, in_memory=False)  # bytes [0, 100) are the object's
    spill.write(100, b"new bytes")

    async def main() -> None:
        closed = trio.Event()

        async def fetch_base(start: int, end: int) -> bytes:
            spill.close()  # the save ends while the read waits for S3
            closed.set()
            return b"b" * (end - start)

        assert await spill.read(0, 109, fetch_base) == b"b" * 100 + b"new bytes"
        assert closed.is_set()

    trio.run(main)
    assert not os.listdir(tmp_path)  # closed and removed once the read ended
    with pytest.raises(OSError):
        spill.write(0, b"late")  # never into whatever file took its descriptor number


def test_a_large_spill_file_is_removed_apart_and_waited_for(tmp_path):
    """Closing a large spill file leaves its removal (the kernel freeing its pages) to a thread of
    its own; ``REMOVER.wait`` (before the spill directory goes) returns once it is gone."""
    small, large = SpillFile(str(tmp_path), 0, in_memory=False), SpillFile(str(tmp_path), 0, in_memory=False)
    small.write(0, b"s")
    large.write(REMOVE_APART - 1, b"l")
    small.close()
    assert len(os.listdir(tmp_path)) == 1  # the small one at once
    large.close()
    REMOVER.wait()
    assert not os.listdir(tmp_path)
