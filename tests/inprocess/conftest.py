"""Fixtures of the in-process layer: the adapter (FuseOperations) and its router built here, and
only here, with what needs a FUSE session replaced."""

from __future__ import annotations

import stat

import pyfuse3
import pytest
import trio

from inprocess.client import InProcess
from s3fuse import operations
from s3fuse.inodes import KernelPageCache
from s3fuse.mount import make_router
from s3fuse.options import parse_args
from s3fuse.s3client import ClientSettings, S3Client, make_boto_client


@pytest.fixture
def no_kernel(monkeypatch):
    """What needs a FUSE session: readdir replies go to a list, invalidations nowhere."""

    def readdir_reply(token: list[tuple[str, bool]], name: bytes, attr, next_id: int) -> bool:
        token.append((name.decode(), stat.S_ISDIR(attr.st_mode)))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", readdir_reply)
    monkeypatch.setattr(pyfuse3, "invalidate_inode", lambda *args, **kw: None)
    monkeypatch.setattr(pyfuse3, "invalidate_entry", lambda *args, **kw: None)
    monkeypatch.setattr(pyfuse3, "notify_store", lambda *args, **kw: None)


@pytest.fixture
def filesystem(moto, bucket, tmp_path, no_kernel, monkeypatch):
    """start(*args): an async context manager giving an InProcess over a fresh FuseOperations
    of the bucket; args are more command-line options."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")

    class Started:
        def __init__(self, *args: str) -> None:
            self.opts = parse_args(
                [bucket, str(tmp_path), "--endpoint-url", moto.url, "--cache-dir", str(tmp_path / "cache"), *args]
            )

        async def __aenter__(self) -> InProcess:
            settings_ = ClientSettings(endpoint_url=moto.url, region="us-east-1")
            s3 = S3Client(make_boto_client(settings_), bucket, settings_)
            self.nursery_manager = trio.open_nursery()
            self.nursery = nursery = await self.nursery_manager.__aenter__()
            router = await make_router(s3, self.opts, KernelPageCache(nursery), nursery)
            self.ops = operations.FuseOperations(self.opts, router)
            return InProcess(self.ops)

        async def __aexit__(self, *exc) -> None:
            try:
                await self.ops.shutdown()
            finally:
                self.nursery.cancel_scope.cancel()
                await self.nursery_manager.__aexit__(None, None, None)

    return Started
