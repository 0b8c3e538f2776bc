"""The disk cache of blocks (s3fuse/diskcache.py): files checked when read, LRU trims, the cap,
and BlockCache's use of it."""

from __future__ import annotations

import os
import random
import time

import trio
from conftest import boto_client

from s3fuse.blockcache import BlockCache
from s3fuse.diskcache import CHUNK, HEADER_SIZE, STALE_TMP_SECONDS, DiskCache, file_size, trim_dir
from s3fuse.reader import ObjectReader
from s3fuse.s3client import ClientSettings, S3Client

KIB = 1024
NAME = ("bucket", "key", '"etag-1"', None, 0, 4 * KIB)


def cache_at(directory: str, cap: int, origin: str = "", nursery: trio.Nursery | None = None) -> DiskCache:
    """A disk cache; without a nursery, for the blocking methods only."""
    return DiskCache(directory, cap, origin, nursery)  # type: ignore[arg-type]


def files_of(cache: DiskCache) -> list[str]:
    return [os.path.join(d, f) for d, _, names in os.walk(cache.directory) for f in names]


def bytes_of(cache: DiskCache) -> int:
    return sum(os.path.getsize(p) for p in files_of(cache))


def test_a_stored_block_is_loaded_only_under_its_own_identity(tmp_path):
    cache = cache_at(str(tmp_path / "blocks"), 1 << 20, origin="http://s3.example")
    data = os.urandom(4 * KIB)
    assert cache.store(NAME, data) == file_size(len(data)) == os.path.getsize(cache.path_of(NAME)[0])
    assert cache.load(NAME) == data
    assert cache.has(NAME)
    other_etag = ("bucket", "key", '"etag-2"', None, 0, 4 * KIB)
    other_bucket = ("bucket2", "key", '"etag-1"', None, 0, 4 * KIB)
    other_range = ("bucket", "key", '"etag-1"', None, 0, 2 * KIB)  # another mount's block size
    for name in (other_etag, other_bucket, other_range):
        assert cache.load(name) is None
    # the same bucket name on another server is another bucket
    assert cache_at(cache.directory, 1 << 20, origin="http://other").load(NAME) is None


def test_a_corrupted_torn_or_misplaced_file_is_a_miss_and_deleted(tmp_path):
    cache = cache_at(str(tmp_path / "blocks"), 1 << 20)
    data = os.urandom(4 * KIB)
    path, _ = cache.path_of(NAME)

    def damaged(change) -> None:
        cache.store(NAME, data)
        with open(path, "r+b") as f:
            raw = bytearray(f.read())
            f.seek(0)
            f.truncate()
            f.write(change(raw))
        assert cache.load(NAME) is None
        assert not os.path.exists(path)

    def flip(at: int):
        def change(raw: bytearray) -> bytes:
            raw[at] ^= 1
            return bytes(raw)

        return change

    damaged(flip(-100))  # one bit of the data
    damaged(flip(HEADER_SIZE + 3))  # of the checksums
    damaged(flip(20))  # of the header
    damaged(lambda raw: bytes(raw[:-1000]))  # torn: the data cut short
    damaged(lambda raw: bytes(raw[:10]))  # torn inside the header
    damaged(lambda raw: b"")
    damaged(lambda raw: bytes(raw) + b"x")
    # Another block's whole, intact file under this block's name (a mixed-up rename) is refused too.
    other = ("bucket", "key", '"etag-2"', None, 0, 4 * KIB)
    cache.store(other, data)
    os.replace(cache.path_of(other)[0], path)
    assert cache.load(NAME) is None


def test_a_range_is_read_and_checked_chunk_by_chunk(tmp_path):
    cache = cache_at(str(tmp_path / "blocks"), 1 << 20)
    name = ("bucket", "key", '"etag-1"', None, 0, 5 * CHUNK + 17)
    data = os.urandom(5 * CHUNK + 17)
    cache.store(name, data)
    for start, end in [(0, 1), (CHUNK - 3, CHUNK + 5), (100, 4 * CHUNK), (5 * CHUNK, len(data)), (7, len(data))]:
        assert cache.load_range(name, start, end) == data[start:end]
    path, _ = cache.path_of(name)
    with open(path, "r+b") as f:  # damage the third chunk: the others still read, then not it
        f.seek(file_size(len(data)) - len(data) + 2 * CHUNK + 9)
        f.write(b"\0" if data[2 * CHUNK + 9] else b"\1")
    assert cache.load_range(name, 0, 2 * CHUNK) == data[: 2 * CHUNK]
    assert cache.load_range(name, 2 * CHUNK + 100, 2 * CHUNK + 200) is None
    assert not os.path.exists(path)


def test_trim_evicts_the_least_recently_used_and_loading_touches(tmp_path):
    block = 64 * KIB
    cache = cache_at(str(tmp_path / "blocks"), 3 * file_size(block))
    names = [("b", f"k{i}", '"e"', None, 0, block) for i in range(4)]
    for age, name in zip((40, 30, 20, 10), names, strict=True):
        cache.store(name, os.urandom(block))
        past = time.time() - age
        os.utime(cache.path_of(name)[0], (past, past))
    assert cache.load(names[0]) is not None  # the oldest, used now: the newest
    held, holds = trim_dir(cache.directory, cache.max_bytes, 2 * file_size(block))
    assert held == 4 * file_size(block) and holds == 2 * file_size(block)
    assert [cache.has(n) for n in names] == [True, False, False, True]
    # under the cap: nothing deleted
    assert trim_dir(cache.directory, cache.max_bytes, cache.max_bytes) == (holds, holds)
    assert trim_dir(cache.directory, cache.max_bytes, 0) == (holds, 0)  # 0 empties it
    assert files_of(cache) == []


def test_trim_deletes_stale_temporary_files_and_tolerates_a_missing_directory(tmp_path):
    assert trim_dir(str(tmp_path / "none"), 1 << 20, 0) == (0, 0)
    cache = cache_at(str(tmp_path / "blocks"), 1 << 20)
    cache.store(NAME, b"x" * 100)
    path, _ = cache.path_of(NAME)
    stale, fresh = path + ".1.aa.tmp", path + ".2.bb.tmp"
    for tmp in (stale, fresh):
        with open(tmp, "wb") as f:
            f.write(b"partial")
    past = time.time() - 2 * STALE_TMP_SECONDS
    os.utime(stale, (past, past))
    assert trim_dir(cache.directory, cache.max_bytes, cache.max_bytes) == (file_size(100), file_size(100))
    assert not os.path.exists(stale) and os.path.exists(fresh)  # a writer may still rename it


def test_writes_keep_the_directory_under_the_cap(tmp_path):
    block = 64 * KIB
    cap = 5 * file_size(block)
    cache = cache_at(str(tmp_path / "blocks"), cap)

    async def main() -> None:
        async with trio.open_nursery() as nursery:  # at once, as readers' read-ahead writes them
            for i in range(40):
                nursery.start_soon(cache.write, ("b", f"k{i}", '"e"', None, 0, block), os.urandom(block))
        await cache.write(("b", "huge", '"e"', None, 0, cap), os.urandom(cap))  # over the cap: not kept

    trio.run(main)
    assert 0 < bytes_of(cache) <= cap
    assert not cache.has(("b", "huge", '"e"', None, 0, cap))


def test_block_cache_looks_on_disk_before_fetching(tmp_path):
    directory = str(tmp_path / "blocks")
    data = os.urandom(4 * KIB)
    fetches = []

    async def fetch() -> bytes:
        fetches.append(1)
        return data

    async def main() -> None:
        async with trio.open_nursery() as nursery:  # at its end, the blocks kept in the background are written
            first = BlockCache(1 << 20, cache_at(directory, 1 << 20, nursery=nursery))
            assert await first.get(("key", '"etag-1"', 0), fetch, NAME) == data
        assert len(fetches) == 1
        async with trio.open_nursery() as nursery:
            again = BlockCache(1 << 20, cache_at(directory, 1 << 20, nursery=nursery))  # a remount: memory empty
            assert await again.get(("key", '"etag-1"', 0), fetch, NAME) == data
            assert len(fetches) == 1
            # No disk name (a block that must not be kept on disk): fetched, never stored.
            other = ("bucket", "other", '"etag-1"', None, 0, 4 * KIB)
            assert await again.get(("other", '"etag-1"', 0), fetch) == data
        assert len(fetches) == 2 and not cache_at(directory, 1 << 20).has(other)

    trio.run(main)


def test_only_objects_with_an_etag_that_fit_in_half_the_cap_are_read_onto_disk(tmp_path):
    cache = BlockCache(1 << 20, cache_at(str(tmp_path / "blocks"), 64 << 20))

    def reader(size: int, etag: str | None) -> ObjectReader:
        return ObjectReader(None, cache, None, "k", size, etag, 1 << 20, 0, lambda: None)  # type: ignore[arg-type]

    assert reader(32 << 20, '"e"').on_disk
    assert not reader(32 << 20, None).on_disk  # nothing would tell its versions apart
    assert not reader(32 << 20, "").on_disk
    assert not reader((32 << 20) + 1, '"e"').on_disk  # streamed, not kept
    assert not reader(0, '"e"').on_disk
    assert not ObjectReader(None, BlockCache(1 << 20), None, "k", 5, '"e"', 1 << 20, 0, lambda: None).on_disk  # type: ignore[arg-type]


BLOCK = 256 * KIB


def read_on_disk(tmp_path, s3, bucket, moto, **settings) -> tuple[int, int]:
    """A sequential read of an object of 24 blocks and a bit, on disk, in reads of a quarter block:
    the most the block cache held, and the most of the transfer budget taken (all of it given back)."""
    body = random.Random(8).randbytes(24 * BLOCK + 5)
    etag = s3.put_object(Bucket=bucket, Key="big", Body=body)["ETag"]
    client = S3Client(boto_client(moto.url), bucket, ClientSettings(endpoint_url=moto.url, **settings))
    directory = str(tmp_path / "blocks")
    step = BLOCK // 4
    held = taken = 0

    async def main() -> None:
        nonlocal held, taken
        async with trio.open_nursery() as nursery:
            cache = BlockCache(64 << 20, cache_at(directory, 64 << 20, nursery=nursery))
            reader = ObjectReader(client, cache, nursery, "big", len(body), etag, BLOCK, 8 * BLOCK, lambda: None)
            assert reader.on_disk
            got = []
            for offset in range(0, len(body), step):
                got.append(bytes(await reader.read(offset, step)))
                held = max(held, cache.gauges()["s3fuse_block_cache_bytes"])
                taken = max(taken, client.transfer.used)
            reader.close()
            assert b"".join(got) == body
        assert client.transfer.used == 0
        assert len(files_of(cache_at(directory, 64 << 20))) == 25  # all of it kept on disk

    trio.run(main)
    return held, taken


def test_a_sequential_reader_on_disk_lets_the_blocks_it_passed_go_from_memory(tmp_path, s3, bucket, moto, monkeypatch):
    """Behind the kernel's slack, blocks kept on disk leave the block cache: it holds the slack,
    the block read and the read-ahead, not every block of the object (it has room for all)."""
    monkeypatch.setattr(ObjectReader, "SEQUENTIAL_SLACK", BLOCK)
    held, _ = read_on_disk(tmp_path, s3, bucket, moto)
    assert held <= (1 + 1 + 1 + 8) * BLOCK  # the slack's, the one behind it, the one read, the read-ahead


def test_the_read_ahead_of_a_reader_on_disk_stays_within_the_transfer_budget(tmp_path, s3, bucket, moto):
    _, taken = read_on_disk(tmp_path, s3, bucket, moto, transfer_budget=3 * BLOCK)
    assert 0 < taken <= 3 * BLOCK  # --read-ahead would have had 8 blocks in flight
