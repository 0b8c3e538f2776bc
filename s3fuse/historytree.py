"""The read-only trees of old versions: ``.versions/`` and a whole mount at an instant (``--at``).

Owns the answers of those trees as the adapter asks for them (nodes, open files, xattrs);
what is in them, and what is cached of it, is ``versions``'s. Every change is EROFS:
old versions are what they were.
"""

from __future__ import annotations

import os

from .blockcache import BlockCache
from .inodes import Node
from .metadata import EntryInfo
from .names import join
from .namespace import Namespace
from .options import Config
from .reader import ObjectReader
from .s3client import S3Client
from .tree import DirEntries, ObjectTree, Opened, ReadOnlyFile, SpecialTree
from .versions import VERSIONS_DIR, TimeView, Versions, version_reader


class VersionFile(ReadOnlyFile):
    """An open version: one version for good."""

    def __init__(self, node: Node, reader: ObjectReader) -> None:
        super().__init__(node)
        self.reader = reader

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        return await self.reader.read(offset, size)

    async def release(self) -> None:
        await super().release()
        self.reader.close()


class HistoryTree(ObjectTree):
    """A tree of version entries (``versions.Versions`` or ``versions.TimeView``) in a bucket's inode table."""

    def __init__(
        self, s3: S3Client, opts: Config, ns: Namespace, blocks: BlockCache, history: Versions | TimeView
    ) -> None:
        super().__init__(s3, opts, ns, blocks)
        self.history = history

    async def lookup(self, parent: Node, name: str) -> Node | None:
        path = join(parent.path, name)
        entry = await self.history.lookup(path)
        return None if entry is None else self.ns.own_entry(path, entry.info)

    async def opendir(self, node: Node) -> DirEntries:
        return self.history.open_dir(node.path)

    async def open(self, node: Node, flags: int) -> Opened:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise self.refuse("open for writing", node)
        version = await self.history.version(node.path)
        assert self.nursery is not None
        reader = version_reader(self.s3, self.opts, version, self.blocks, self.nursery)
        node.opened += 1
        return Opened(VersionFile(node, reader))

    async def readlink(self, node: Node) -> bytes:
        return await self.history.readlink(node.path)

    async def getxattr(self, node: Node, name: str) -> bytes:
        value = (await self.history.xattrs(node.path)).get(name)
        if value is None:
            return await super().getxattr(node, name)
        return value

    async def listxattr(self, node: Node) -> list[str]:
        return list(await self.history.xattrs(node.path))


class VersionsTree(HistoryTree, SpecialTree):
    """``.versions/``: every version of every key, and the bucket at any instant."""

    name = VERSIONS_DIR

    def __init__(self, s3: S3Client, opts: Config, ns: Namespace, blocks: BlockCache) -> None:
        self.versions = Versions(s3, opts)
        super().__init__(s3, opts, ns, blocks, self.versions)

    def root_entry(self) -> EntryInfo:
        return self.versions.info()

    async def lookup(self, parent: Node, name: str) -> Node | None:
        if parent.path == "":
            return self.ns.own_entry(VERSIONS_DIR, self.versions.info())
        return await super().lookup(parent, name)
