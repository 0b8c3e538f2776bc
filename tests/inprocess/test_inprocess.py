"""The file system driven in-process: FuseOperations' handlers called directly, no kernel.

A real S3 server over HTTP (the session's moto) and a real FuseOperations with its
namespace, write-back and upload code; only what needs a FUSE session is replaced
(``pyfuse3.readdir_reply`` collects entries, kernel cache invalidations do nothing).
What the kernel would add (page cache, writeback cache, path walks) is absent, so
these tests show the daemon's logic, fast; end-to-end behaviour stays proven by the
real mounts of tests/mount/. The client (``InProcess``) and the fixtures are in
tests/inprocess/client.py and conftest.py. The property test here runs the sequences of
tests/mount/test_sparse.py's mounted one many times faster.
"""

from __future__ import annotations

import errno
import random
import time

import pyfuse3
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import writes_and_truncates

from s3fuse.xattrs import Xattrs


@pytest.mark.trio
async def test_a_file_written_in_process_is_in_s3_and_listed(filesystem, s3, bucket):
    async with filesystem() as fs:
        h = await fs.create("a.txt")
        assert await fs.write(h, b"hello") == 5
        await fs.close(h)
        assert s3.get_object(Bucket=bucket, Key="a.txt")["Body"].read() == b"hello"
        assert await fs.read_all("a.txt") == b"hello"
        assert await fs.listdir("") == [("a.txt", False)]


@pytest.mark.trio
async def test_a_truncate_past_5_tib_fails_with_efbig_and_sends_nothing(filesystem, s3, bucket):
    s3.put_object(Bucket=bucket, Key="f", Body=b"small")
    async with filesystem() as fs:
        h = await fs.open("f")
        with pytest.raises(pyfuse3.FUSEError) as err:
            await fs.ftruncate(h, (5 << 40) + 1)
        assert err.value.errno == errno.EFBIG
        await fs.close(h)
    assert s3.get_object(Bucket=bucket, Key="f")["Body"].read() == b"small"


@pytest.mark.trio
async def test_an_unexpected_exception_in_a_handler_is_eio(filesystem, monkeypatch):
    async def broken(self, *args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(Xattrs, "get", broken)
    async with filesystem() as fs:
        with pytest.raises(pyfuse3.FUSEError) as err:
            await fs.getxattr("", "user.x")
        assert err.value.errno == errno.EIO
        assert await fs.listdir("") == []  # and the file system goes on


operation = st.one_of(*writes_and_truncates, st.tuples(st.just("reopen")))


@pytest.mark.trio
async def test_random_pwrite_truncate_sequences_save_the_bytes_of_a_local_file(filesystem, s3, bucket):
    """tests/mount/test_sparse.py's property, without the kernel: every byte S3 holds after close."""
    async with filesystem() as fs:
        token = trio.lowlevel.current_trio_token()
        examples = []

        @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(st.lists(operation, min_size=1, max_size=8))
        def check(ops: list[tuple]) -> None:
            name = f"p{len(examples)}.bin"
            model = trio.from_thread.run(run, name, ops, trio_token=token)
            got = s3.get_object(Bucket=bucket, Key=name)["Body"].read()
            s3.delete_object(Bucket=bucket, Key=name)
            assert got == model, f"{len(got)} bytes, expected {len(model)}"
            examples.append(name)

        async def run(name: str, ops: list[tuple]) -> bytes:
            model = bytearray()
            h = await fs.create(name)
            try:
                for op in ops:
                    if op[0] == "pwrite":
                        _, offset, size, seed = op
                        data = random.Random(seed).randbytes(size)
                        await fs.pwrite(h, data, offset)
                        model.extend(bytes(max(0, offset + size - len(model))))
                        model[offset : offset + size] = data
                    elif op[0] == "truncate":
                        await fs.ftruncate(h, op[1])
                        del model[op[1] :]
                        model.extend(bytes(op[1] - len(model)))
                    else:
                        await fs.close(h)
                        h = await fs.open(name)
            finally:
                await fs.close(h)
            return bytes(model)

        await trio.to_thread.run_sync(check)
        assert len(examples) >= 100  # not vacuous: hypothesis ran that many sequences


@pytest.mark.trio
async def test_an_index_entry_learnt_by_head_never_vouches_for_a_later_rewrite(filesystem, s3, bucket, tmp_path):
    """Mount C HEADs a file another tool wrote; a moment later mount B changes its mode (a copy onto
    itself: same ETag and size) and dies before writing its index entry; C then writes the entry it
    learnt. A fresh mount must show B's mode, which is in the object's headers: C's entry is dated by
    the version's own LastModified, not by the time of C's HEAD."""
    async with filesystem("--cache-dir", str(tmp_path / "a")) as a:
        await a.mkdir("d", 0o755)  # its index object exists from now on
    s3.put_object(Bucket=bucket, Key="d/f", Body=b"by another tool", Metadata={"mode": str(0o100600)})
    second = int(time.time())
    while int(time.time()) == second:  # C's HEAD and B's copy in a later second than the put
        await trio.sleep(0.05)
    async with filesystem("--cache-dir", str(tmp_path / "c")) as c:
        assert (await c.stat("d/f")).st_mode == 0o100600  # HEADed: d has an index that lacks f
        async with filesystem("--cache-dir", str(tmp_path / "b")) as b:
            await b.chmod("d/f", 0o640)
            b.ops.router.ns.index._pending.clear()  # its crash: the entry of its copy is never written
    head = s3.head_object(Bucket=bucket, Key="d/f")
    assert head["Metadata"]["mode"] == str(0o100640)
    async with filesystem("--cache-dir", str(tmp_path / "fresh")) as fresh:
        assert (await fresh.stat("d/f")).st_mode == 0o100640


@pytest.mark.trio
async def test_listings_ahead_stay_bounded_when_many_directories_are_read(filesystem, s3, bucket, monkeypatch):
    """ls in 40 directories of 3 subdirectories each, while no listing ahead can start, queues at
    most QUEUED of them, not 120; once they can, each queued one is listed whole."""
    from s3fuse.dirprefetch import SubdirectoryPrefetch

    monkeypatch.setattr(SubdirectoryPrefetch, "QUEUED", 10)
    keys = [f"d{i:02d}/s{j}/f" for i in range(40) for j in range(3)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    async with filesystem() as fs:
        ahead = fs.ops.router.bucket.ahead
        holders = [object() for _ in range(ahead.AT_ONCE)]
        for holder in holders:  # every slot taken: listings ahead wait in the queue
            await ahead._limiter.acquire_on_behalf_of(holder)
        for i in range(40):
            assert await fs.listdir(f"d{i:02d}") == [("s0", True), ("s1", True), ("s2", True)]
        assert len(ahead._pending) == 10
        with trio.fail_after(5):  # a lookup does not wait for a listing ahead still queued
            assert await fs.read_all("d00/s0/f") == b"x"
        for holder in holders:
            ahead._limiter.release_on_behalf_of(holder)
        with trio.fail_after(10):
            while ahead._pending:
                await trio.sleep(0.05)
        assert set(fs.ops.router.ns.cached_listing("d02/s1") or ()) == {"f"}  # queued, then listed whole
