"""Extents and SpillFile against simple models (hypothesis): every byte comes from the right place."""

from __future__ import annotations

import itertools
import os

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from s3fuse.extents import Extents
from s3fuse.spill import MEMORY_BUDGET, SpillFile

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
    finally:
        spill.close()
    assert SpillFile.budget.free == MEMORY_BUDGET  # every byte held in memory was given back


def test_an_empty_range_intersects_nothing():
    extents = Extents()
    extents.add(0, 2)  # the case hypothesis found
    assert not extents.intersects(1, 1)
