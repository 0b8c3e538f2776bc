"""The file system driven in-process: S3Operations' handlers called directly, no kernel.

A real S3 server over HTTP (the session's moto) and a real S3Operations with its
namespace, write-back and upload code; only what needs a FUSE session is replaced
(``pyfuse3.readdir_reply`` collects entries, kernel cache invalidations do nothing).
What the kernel would add (page cache, writeback cache, path walks) is absent, so
these tests show the daemon's logic, fast; end-to-end behaviour stays proven by the
real mounts of the other test files. The property test here runs the sequences of
tests/mount/test_sparse.py's mounted one many times faster.
"""

from __future__ import annotations

import errno
import os
import random
import stat
from types import SimpleNamespace

import pyfuse3
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import writes_and_truncates

from s3fuse import operations
from s3fuse.options import parse_args
from s3fuse.s3client import ClientSettings, S3Client, make_boto_client

MIB = 1 << 20
CTX = SimpleNamespace(uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), umask=0o022)


class InProcess:
    """A path-level client of one S3Operations, as a program sees a mount (minus the kernel)."""

    def __init__(self, ops: operations.S3Operations) -> None:
        self.ops = ops

    async def inode(self, path: str) -> int:
        inode = pyfuse3.ROOT_INODE
        for name in filter(None, path.split("/")):
            inode = (await self.ops.lookup(inode, name.encode(), CTX)).st_ino
        return inode

    async def create(self, path: str) -> int:
        parent, _, name = path.rpartition("/")
        fi, _ = await self.ops.create(await self.inode(parent), name.encode(), stat.S_IFREG | 0o644, os.O_RDWR, CTX)
        return fi.fh

    async def open(self, path: str, flags: int = os.O_RDWR) -> int:
        return (await self.ops.open(await self.inode(path), flags, CTX)).fh

    async def close(self, fh: int) -> None:
        try:
            await self.ops.flush(fh)  # close(): the save, whose error close() returns
        finally:
            await self.ops.release(fh)

    async def truncate(self, fh: int, size: int) -> None:
        attr = pyfuse3.EntryAttributes()
        attr.st_size = size
        fields = SimpleNamespace(
            update_size=True, update_mode=False, update_uid=False, update_gid=False, update_mtime=False
        )
        await self.ops.setattr(self.ops._files[fh].node.inode, attr, fields, fh, CTX)

    async def read_all(self, path: str) -> bytes:
        fh = await self.open(path, os.O_RDONLY)
        try:
            chunks, offset = [], 0
            while chunk := await self.ops.read(fh, offset, MIB):
                chunks.append(bytes(chunk))
                offset += len(chunk)
            return b"".join(chunks)
        finally:
            await self.ops.release(fh)

    async def listdir(self, path: str) -> list[str]:
        fh = await self.ops.opendir(await self.inode(path), CTX)
        try:
            names: list[str] = []
            await self.ops.readdir(fh, 0, names)  # the token: replies are collected into it
            return names
        finally:
            await self.ops.releasedir(fh)


@pytest.fixture
def no_kernel(monkeypatch):
    """What needs a FUSE session: readdir replies go to a list, invalidations nowhere."""

    def readdir_reply(token: list[str], name: bytes, attr, next_id: int) -> bool:
        token.append(name.decode())
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", readdir_reply)
    monkeypatch.setattr(pyfuse3, "invalidate_inode", lambda *args, **kw: None)
    monkeypatch.setattr(pyfuse3, "invalidate_entry", lambda *args, **kw: None)


@pytest.fixture
def filesystem(moto, bucket, tmp_path, no_kernel, monkeypatch):
    """start(): an async context manager giving an InProcess over a fresh S3Operations of the bucket."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    opts = parse_args([bucket, str(tmp_path), "--endpoint-url", moto.url, "--cache-dir", str(tmp_path / "cache")])

    class Started:
        async def __aenter__(self) -> InProcess:
            settings_ = ClientSettings(endpoint_url=moto.url, region="us-east-1")
            self.ops = operations.S3Operations(S3Client(make_boto_client(settings_), bucket, settings_), opts)
            self.nursery_manager = trio.open_nursery()
            self.ops.nursery = await self.nursery_manager.__aenter__()
            return InProcess(self.ops)

        async def __aexit__(self, *exc) -> None:
            try:
                await self.ops.shutdown()
            finally:
                self.ops.nursery.cancel_scope.cancel()
                await self.nursery_manager.__aexit__(None, None, None)

    return Started


@pytest.mark.trio
async def test_a_file_written_in_process_is_in_s3_and_listed(filesystem, s3, bucket):
    async with filesystem() as fs:
        fh = await fs.create("/a.txt")
        assert await fs.ops.write(fh, 0, b"hello") == 5
        await fs.close(fh)
        assert s3.get_object(Bucket=bucket, Key="a.txt")["Body"].read() == b"hello"
        assert await fs.read_all("/a.txt") == b"hello"
        assert await fs.listdir("/") == ["a.txt"]


@pytest.mark.trio
async def test_a_truncate_past_5_tib_fails_with_efbig_and_sends_nothing(filesystem, s3, bucket):
    s3.put_object(Bucket=bucket, Key="f", Body=b"small")
    async with filesystem() as fs:
        fh = await fs.open("/f")
        with pytest.raises(pyfuse3.FUSEError) as err:
            await fs.truncate(fh, (5 << 40) + 1)
        assert err.value.errno == errno.EFBIG
        await fs.close(fh)
    assert s3.get_object(Bucket=bucket, Key="f")["Body"].read() == b"small"


@pytest.mark.trio
async def test_an_unexpected_exception_in_a_handler_is_eio(filesystem, monkeypatch):
    async with filesystem() as fs:

        async def broken(self, *args, **kwargs):
            raise KeyError("a bug")

        monkeypatch.setattr(fs.ops.xattrs, "get", broken.__get__(fs.ops.xattrs))
        with pytest.raises(pyfuse3.FUSEError) as err:
            await fs.ops.getxattr(pyfuse3.ROOT_INODE, b"user.x", CTX)
        assert err.value.errno == errno.EIO
        assert await fs.listdir("/") == []  # and the file system goes on


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
            fh = await fs.create(f"/{name}")
            try:
                for op in ops:
                    if op[0] == "pwrite":
                        _, offset, size, seed = op
                        data = random.Random(seed).randbytes(size)
                        await fs.ops.write(fh, offset, data)
                        model.extend(bytes(max(0, offset + size - len(model))))
                        model[offset : offset + size] = data
                    elif op[0] == "truncate":
                        await fs.truncate(fh, op[1])
                        del model[op[1] :]
                        model.extend(bytes(op[1] - len(model)))
                    else:
                        await fs.close(fh)
                        fh = await fs.open(f"/{name}")
            finally:
                await fs.close(fh)
            return bytes(model)

        await trio.to_thread.run_sync(check)
        assert len(examples) >= 100  # not vacuous: hypothesis ran that many sequences
