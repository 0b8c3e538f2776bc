"""Special files in-process: what the adapter decides before the tree, where a real mount cannot
reach (the kernel refuses device nodes to a caller without CAP_MKNOD before s3fuse is asked)."""

from __future__ import annotations

import errno
import os
import stat
from types import SimpleNamespace

import pyfuse3
import pytest

from inprocess.client import CTX


@pytest.mark.trio
async def test_device_nodes_are_roots_to_make(filesystem, s3, bucket, moto):
    async with filesystem() as fs:
        user = SimpleNamespace(**{**vars(CTX), "uid": 1000})
        mark = moto.mark()
        for kind in (stat.S_IFCHR, stat.S_IFBLK):
            with pytest.raises(pyfuse3.FUSEError) as err:
                await fs.ops.mknod(pyfuse3.ROOT_INODE, b"dev", kind | 0o600, os.makedev(1, 3), user)
            assert err.value.errno == errno.EPERM
        assert moto.requests(mark, bucket) == []  # refused before any request

        fifo = await fs.ops.mknod(pyfuse3.ROOT_INODE, b"fifo", stat.S_IFIFO | 0o600, 0, user)  # anyone's
        assert (stat.S_IFMT(fifo.st_mode), fifo.st_uid, fifo.st_rdev) == (stat.S_IFIFO, 1000, 0)
        root = SimpleNamespace(**{**vars(CTX), "uid": 0})
        dev = await fs.ops.mknod(pyfuse3.ROOT_INODE, b"dev", stat.S_IFCHR | 0o600, os.makedev(1, 3), root)
        assert (stat.S_IFMT(dev.st_mode), dev.st_rdev) == (stat.S_IFCHR, os.makedev(1, 3))
        assert s3.head_object(Bucket=bucket, Key="dev")["Metadata"]["rdev"] == str(os.makedev(1, 3))
        assert await fs.listdir("") == [("dev", False), ("fifo", False)]
