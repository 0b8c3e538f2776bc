"""Parallel transfers through a real mount: several streamed GETs per sequential reader and
several parts in flight per sequential writer, within the mount's transfer budget.

What must hold: reads return exact bytes whatever their offsets and sizes across the
8 MiB segments, with many readers of one file and of many files sharing a small
budget; writes of sizes around part boundaries leave exact objects, in both modes; a
GET or a part that fails midway is made up for (or fails the call with EIO); and
every byte taken from the budget comes back once the files are closed.
"""

from __future__ import annotations

import os
import random
import re
import threading

import pytest
from conftest import keys_of, unique_bucket_name, wait_until
from faultproxy import Rule

from mount.test_faults import QUICK, body_of, mount_via, randbytes, read_file, uploads_in_progress, write_file

MIB = 1 << 20
SEGMENT = 8 * MIB
PART = 8 * MIB


def transfer_bytes(mnt) -> float:
    """The bytes the mount's transfer budget has out (the s3fuse_transfer_bytes gauge)."""
    text = os.getxattr(mnt, "s3fuse.stats").decode()
    return float(re.search(r"^s3fuse_transfer_bytes (\S+)$", text, re.M).group(1))


@pytest.fixture(scope="module")
def objects(s3):
    """(bucket, {key: bytes}): one object of 5 segments and a bit, and four of 2 segments and a bit."""
    name = unique_bucket_name("parallel")
    s3.create_bucket(Bucket=name)
    data = {"big.bin": randbytes(40, 5 * SEGMENT + 12_345)}
    data |= {f"f{i}.bin": randbytes(41 + i, 2 * SEGMENT + 777 * i + 1) for i in range(4)}
    for key, body in data.items():
        s3.put_object(Bucket=name, Key=key, Body=body)
    yield name, data
    for key in data:
        s3.delete_object(Bucket=name, Key=key)


def test_reads_at_random_offsets_and_sizes_across_segments(objects, mount):
    """Runs of sequential reads of random sizes (streams), from random places (the streams start
    again there), and scattered small reads in between (they close them)."""
    bucket, data = objects
    body = data["big.bin"]
    mnt = mount(bucket)
    rng = random.Random(7)
    fd = os.open(mnt / "big.bin", os.O_RDONLY | os.O_DIRECT)
    try:
        for _ in range(6):
            offset = rng.choice([0, rng.randrange(len(body)), SEGMENT - rng.randrange(1, 5000)])
            for _ in range(rng.randrange(4, 30)):  # a run across one or more segment boundaries
                size = rng.choice([MIB, 3 * MIB + 4097, rng.randrange(256 * 1024, 2 * MIB)])
                assert os.pread(fd, size, offset) == body[offset : offset + size], (offset, size)
                offset += size
            for _ in range(3):
                offset, size = rng.randrange(len(body)), rng.randrange(1, 100_000)
                assert os.pread(fd, size, offset) == body[offset : offset + size], (offset, size)
    finally:
        os.close(fd)
    assert read_file(mnt / "big.bin", 3 * MIB + 1) == body
    assert wait_until(lambda: transfer_bytes(mnt) == 0, 10)


def test_concurrent_readers_of_one_file_and_of_many_share_a_small_budget(objects, mount):
    """Three streams' worth of budget for seven readers: most are refused for a while and read
    without streams, the others stream; all get exact bytes, and the budget comes back whole."""
    bucket, data = objects
    mnt = mount(bucket, "--transfer-budget", "24M")
    errors: list = []

    def reader(key: str, chunk: int) -> None:
        try:
            if read_file(mnt / key, chunk) != data[key]:
                errors.append(key)
        except OSError as exc:
            errors.append((key, exc))

    jobs = [("big.bin", MIB), ("big.bin", 2 * MIB + 3), ("big.bin", 300_001)]
    jobs += [(f"f{i}.bin", MIB + i) for i in range(4)]
    threads = [threading.Thread(target=reader, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert wait_until(lambda: transfer_bytes(mnt) == 0, 10)


def write_back(mode: str, cache_dir) -> list[str]:
    """The options of a mount in this mode (a --write-back journal has one owner: a cache dir each)."""
    return ["--write-back", "--cache-dir", str(cache_dir)] if mode == "write-back" else []


SIZES = [PART - 1, 2 * PART, 3 * PART + 1]  # one PutObject; parts that end the file; a tail of one byte


@pytest.mark.parametrize("mode", ["default", "write-back"])
def test_sequential_writes_around_part_boundaries(s3, bucket, mount, mode, tmp_path):
    """Parts go several at a time (two at once with a budget of 16M, up to eight with the default)."""
    small = mount(bucket, *write_back(mode, tmp_path / "small"), "--transfer-budget", "16M")
    default = mount(bucket, *write_back(mode, tmp_path / "default"))
    written = {}
    for i, size in enumerate(SIZES):
        for mnt in (small, default):
            key = f"{mnt.name}-{i}.bin"
            written[key] = randbytes(100 + i, size)
            assert write_file(mnt / key, written[key]) is None
    for key, data in written.items():
        if mode == "write-back":  # close() returned once journaled: the upload follows
            assert wait_until(lambda key=key: key in keys_of(s3, bucket), 60)
        assert body_of(s3, bucket, key) == data, key
    for mnt in (small, default):
        assert wait_until(lambda mnt=mnt: transfer_bytes(mnt) == 0, 10)


def test_a_get_cut_short_midway_is_made_up_for(s3, bucket, faulty, mount):
    """The first GET and every third after it break off halfway: the streams that fail give way to
    ranged GETs, which retry."""
    body = randbytes(50, 6 * SEGMENT + 3)
    s3.put_object(Bucket=bucket, Key="cut.bin", Body=body)
    mnt = mount_via(mount, faulty, bucket)
    # (from a server that answers fast, the streams' segments are long: a few GETs)
    cut = {"fault": "truncate", "path": "/cut.bin$", "method": "GET", "keep": 0.5}
    faulty.add(Rule(**cut, times=1), Rule(**cut, p=0.33))
    assert read_file(mnt / "cut.bin") == body
    assert len(faulty.injected("truncate")) >= 1
    faulty.clear()
    assert wait_until(lambda: transfer_bytes(mnt) == 0, 10)


def test_parts_failing_midway_are_retried_or_fail_close_and_abort(s3, bucket, faulty, mount):
    """A part answered with an error is sent again; a part that always fails fails close()
    with EIO, and the upload is aborted while the other parts are in flight."""
    data = randbytes(60, 4 * PART + 5)
    mnt = mount_via(mount, faulty, bucket, *QUICK)
    faulty.add(Rule(("slowdown", "internal"), method="PUT", query="partNumber=2&", times=1))
    assert write_file(mnt / "retried.bin", data) is None
    assert body_of(s3, bucket, "retried.bin") == data
    faulty.add(Rule("internal", method="PUT", query="partNumber=3&"))
    assert write_file(mnt / "failed.bin", data) == ("close", 5)  # EIO
    assert "failed.bin" not in keys_of(s3, bucket)
    assert wait_until(lambda: uploads_in_progress(s3, bucket) == [], 10)
    faulty.clear()
    assert wait_until(lambda: transfer_bytes(mnt) == 0, 10)
