"""A new special tree is one class and one line in ``BucketRouter._special``, nothing in the adapter.

The tree here (``.hello``: one read-only file) stands for a module of its own, as
DEVELOPMENT.md shows; the test adds it to the router's list and drives the whole
adapter in-process: the root lists it, lookups, reads, xattrs and refusals reach it,
and keys of the bucket named like it are hidden, while the other trees work as before.
"""

from __future__ import annotations

import errno
import os
import stat

import pyfuse3
import pytest

from s3fuse.inodes import Node
from s3fuse.metadata import EntryInfo
from s3fuse.names import join
from s3fuse.router import BucketRouter
from s3fuse.tree import DirEntries, Opened, ReadOnlyFile, SpecialTree

GREETING = b"hello from a tree of its own\n"


class HelloFile(ReadOnlyFile):
    async def read(self, offset: int, size: int) -> bytes:
        return GREETING[offset : offset + size]


class HelloEntries:
    path = ".hello"

    async def entry(self, index: int) -> tuple[str, EntryInfo] | None:
        return ("greeting", _file()) if index == 0 else None

    def removed_since_listed(self) -> None:
        return None


def _file() -> EntryInfo:
    return EntryInfo(is_dir=False, size=len(GREETING), mode=stat.S_IFREG | 0o444)


class HelloTree(SpecialTree):
    name = ".hello"
    refusal = errno.EROFS

    def root_entry(self) -> EntryInfo:
        return EntryInfo(is_dir=True, mode=stat.S_IFDIR | 0o555)

    async def lookup(self, parent: Node, name: str) -> Node | None:
        if parent.path == "":
            return self.ns.own_entry(self.name, self.root_entry())
        return self.ns.own_entry(join(parent.path, name), _file()) if name == "greeting" else None

    async def opendir(self, node: Node) -> DirEntries:
        return HelloEntries()

    async def open(self, node: Node, flags: int) -> Opened:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise self.refuse("open for writing", node)
        node.opened += 1
        return Opened(HelloFile(node))


@pytest.fixture
def with_hello(monkeypatch):
    special = BucketRouter._special

    def with_hello_tree(s3, opts, ns, blocks):
        return [*special(s3, opts, ns, blocks), HelloTree(ns)]  # the one router line

    monkeypatch.setattr(BucketRouter, "_special", staticmethod(with_hello_tree))


@pytest.mark.trio
async def test_a_special_tree_is_one_class_and_one_router_line(with_hello, filesystem, s3, bucket):
    s3.put_object(Bucket=bucket, Key="plain.txt", Body=b"plain")
    s3.put_object(Bucket=bucket, Key=".hello/hidden", Body=b"a key under the reserved name")
    async with filesystem("--show-control-dir") as fs:
        assert await fs.listdir("") == [(".hello", True), (".s3", True), (".versions", True), ("plain.txt", False)]
        assert await fs.listdir(".hello") == [("greeting", False)]
        assert await fs.read_all(".hello/greeting") == GREETING
        assert (await fs.stat(".hello/greeting")).st_size == len(GREETING)
        assert await fs.listxattr(".hello/greeting") == []
        for change in (
            lambda: fs.create(".hello/new"),
            lambda: fs.mkdir(".hello/dir", 0o755),
            lambda: fs.unlink(".hello/greeting"),
            lambda: fs.rename("plain.txt", ".hello/plain.txt"),
            lambda: fs.setxattr(".hello/greeting", "user.x", b"1"),
            lambda: fs.open(".hello/greeting", os.O_RDWR),
        ):
            with pytest.raises(pyfuse3.FUSEError) as err:
                await change()
            assert err.value.errno == errno.EROFS
        with pytest.raises(pyfuse3.FUSEError) as err:
            await fs.stat(".hello/hidden")  # the key under the reserved name is not reachable
        assert err.value.errno == errno.ENOENT
        assert await fs.read_all("plain.txt") == b"plain"  # the bucket's tree is unchanged
        # and so is the next special tree, whose history shows every key
        assert await fs.listdir(".versions") == [(".hello", True), ("plain.txt", True)]
