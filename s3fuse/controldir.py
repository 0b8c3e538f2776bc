"""The ``.s3/`` directory: the bucket's configuration as files.

Owns the control directory's entries (one file per configuration the bucket has,
see ``bucketconfig.DOCUMENTS``), their cached contents (for the directory TTL, so
``ls -l`` and ``cat`` cost one Get each), and the open files: a configuration is read
whole when opened, edited in memory, and put whole when the file is closed. A bucket
key under ``.s3/`` is hidden by it; the name is reserved.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
import time
from collections.abc import Callable

import trio
from cachetools import TTLCache

from .bucketconfig import DOCUMENTS, ConfigDocument
from .errors import FsError
from .inodes import Node
from .metadata import EntryInfo, directory
from .names import at_or_below, join
from .namespace import Namespace
from .options import Config
from .s3client import S3Client
from .tree import AttrChanges, DirEntries, Opened, OpenedFile, SpecialTree

log = logging.getLogger(__name__)

CONTROL_DIR = ".s3"


def in_control_dir(path: str) -> bool:
    return at_or_below(path, CONTROL_DIR)


def document_name(path: str) -> str:
    """'.s3/cors' -> 'cors'."""
    return path.removeprefix(CONTROL_DIR + "/")


class ControlFile:
    """One open configuration file: its whole content, and whether it was changed."""

    def __init__(self, control: ControlDir, node: Node, document: ConfigDocument, content: bytes) -> None:
        self.control = control
        self.node = node
        self.document = document
        self.content = bytearray(content)
        self.dirty = False
        self._sized()

    def _sized(self) -> None:
        self.node.info = dataclasses.replace(self.node.info, size=len(self.content))

    async def read(self, offset: int, size: int) -> bytes:
        return bytes(self.content[offset : offset + size])

    async def write(self, offset: int, data: bytes) -> None:
        if offset > len(self.content):
            self.content.extend(bytes(offset - len(self.content)))
        self.content[offset : offset + len(data)] = data
        self.dirty = True
        self._sized()

    def truncate(self, size: int) -> None:
        # Not a change by itself: '> file' truncates, then closes a duplicate descriptor
        # before it writes; putting the empty document then would fail.
        del self.content[size:]
        self.content.extend(bytes(size - len(self.content)))
        self._sized()

    async def flush(self) -> None:
        await self.control.save(self)

    async def fsync(self) -> None:
        await self.control.save(self)

    async def release(self) -> None:
        self.node.opened -= 1
        self.control.closed(self)


class ControlDir:
    """The configuration documents of the mounted bucket, as directory entries and files."""

    def __init__(self, s3: S3Client, opts: Config) -> None:
        self.s3 = s3
        self.opts = opts
        self._contents: TTLCache[str, bytes | None] = TTLCache(
            maxsize=len(DOCUMENTS), ttl=max(opts.cache.dir_ttl, 1e-3), timer=time.monotonic
        )
        self.mtime_ns = time.time_ns()
        self._open: dict[Node, list[ControlFile]] = {}  # open files by node, for a truncate by name

    def info(self) -> EntryInfo:
        """The directory itself."""
        info = directory()
        info.mode = stat.S_IFDIR | 0o755
        return info

    def knows(self, name: str) -> bool:
        return name in DOCUMENTS

    def document(self, name: str) -> ConfigDocument:
        document = DOCUMENTS.get(name)
        if document is None:
            raise FsError(errno.ENOENT, "NoSuchConfiguration", f"no bucket configuration is called {name!r}")
        return document

    def file_info(self, name: str, content: bytes) -> EntryInfo:
        mode = 0o644 if self.document(name).writable else 0o444
        return EntryInfo(is_dir=False, size=len(content), mode=stat.S_IFREG | mode, mtime_ns=self.mtime_ns)

    async def content(self, name: str, fresh: bool = False) -> bytes | None:
        """The document's current text; None when the bucket has no such configuration."""
        document = self.document(name)
        if not fresh and name in self._contents:
            return self._contents[name]
        content = await document.read(self.s3)
        self._contents[name] = content
        return content

    async def lookup(self, name: str) -> EntryInfo | None:
        content = await self.content(name)
        return None if content is None else self.file_info(name, content)

    async def entries(self) -> list[tuple[str, EntryInfo]]:
        """Every configuration the bucket has, read in parallel."""
        found: dict[str, bytes] = {}

        async def read(name: str) -> None:
            try:
                content = await self.content(name)
            except FsError as exc:  # a server without that API: leave the file out
                log.info("bucket configuration %r could not be read: %s", name, exc)
                return
            if content is not None:
                found[name] = content

        async with trio.open_nursery() as nursery:
            for name in DOCUMENTS:
                nursery.start_soon(read, name)
        return [(name, self.file_info(name, found[name])) for name in DOCUMENTS if name in found]

    async def open(self, node: Node, truncate: bool, create: bool = False) -> ControlFile:
        document = self.document(document_name(node.path))
        content = b"" if truncate else await self.content(document.name, fresh=True)
        if content is None and not create:
            raise FsError(errno.ENOENT, "NoSuchConfiguration", f"the bucket has no {document.name} configuration")
        opened = ControlFile(self, node, document, content or b"")
        node.opened += 1
        self._open.setdefault(node, []).append(opened)
        return opened

    def opened(self, node: Node) -> ControlFile | None:
        """One of the open files of node, if any."""
        return next(iter(self._open.get(node, ())), None)

    def closed(self, opened: ControlFile) -> None:
        files = self._open.get(opened.node, [])
        files.remove(opened)
        if not files:
            self._open.pop(opened.node, None)

    async def save(self, opened: ControlFile) -> None:
        """Put a changed document; the old configuration stays if S3 refuses it."""
        if not opened.dirty:
            return
        name = opened.document.name
        self._contents.pop(name, None)
        try:
            await opened.document.write(self.s3, bytes(opened.content))
        except FsError as exc:
            log.warning("bucket configuration %s not changed: %s", name, exc)
            raise
        opened.dirty = False
        log.info("bucket configuration %s changed", name)

    async def delete(self, name: str) -> None:
        document = self.document(name)
        if not document.deletable:
            raise FsError(errno.EPERM, "NotDeletable", f"S3 cannot delete a bucket's {name} configuration")
        self._contents.pop(name, None)
        await document.delete(self.s3)
        log.info("bucket configuration %s deleted", name)


class ControlDirHandle:
    """readdir of ``.s3/``: the documents the bucket has, read when the directory is opened."""

    def __init__(self, control: ControlDir) -> None:
        self.control = control
        self.path = CONTROL_DIR
        self._entries: list[tuple[str, EntryInfo]] | None = None

    async def entry(self, index: int) -> tuple[str, EntryInfo] | None:
        if self._entries is None or index == 0:
            self._entries = await self.control.entries()
        return self._entries[index] if index < len(self._entries) else None

    def removed_since_listed(self) -> Callable[[str], bool] | None:
        return None


class ControlTree(SpecialTree):
    """``.s3/``: configuration files are read, written, created (a known name) and removed; nothing else."""

    refusal = errno.EPERM
    name = CONTROL_DIR

    def __init__(self, s3: S3Client, opts: Config, ns: Namespace) -> None:
        super().__init__(ns)
        self.control = ControlDir(s3, opts)

    def refuse(self, what: str, node: Node) -> FsError:
        log.warning("%s/ holds bucket configuration files only; they can be read, written and removed", CONTROL_DIR)
        return super().refuse(what, node)

    def root_entry(self) -> EntryInfo:
        return self.control.info()

    def ttl(self, node: Node, attr_ttl: float) -> float:
        return 0.0  # a configuration file's size changes with what another client puts

    async def lookup(self, parent: Node, name: str) -> Node | None:
        if parent.path == "":
            return self.ns.own_entry(CONTROL_DIR, self.control.info())
        info = await self.control.lookup(name)
        if info is None:
            return None
        # The kernel keeps its own size for a regular file (writeback cache): a
        # document of another length needs another inode.
        known = self.ns.node_at(join(CONTROL_DIR, name))
        changed = known is not None and known.info.size != info.size
        return self.ns.own_entry(join(CONTROL_DIR, name), info, new_inode=changed)

    async def opendir(self, node: Node) -> DirEntries:
        return ControlDirHandle(self.control)

    async def open(self, node: Node, flags: int) -> Opened:
        return await self._open(node, flags, create=False)

    async def _open(self, node: Node, flags: int, create: bool) -> Opened:
        document = self.control.document(document_name(node.path))
        if flags & os.O_ACCMODE != os.O_RDONLY and not document.writable:
            raise FsError(errno.EACCES, "ReadOnlyConfiguration", f"the bucket's {document.name} cannot be changed")
        opened = await self.control.open(node, truncate=bool(flags & os.O_TRUNC), create=create)
        # direct_io: reads and writes reach the document itself, never a stale page cache
        return Opened(opened, direct_io=True)

    async def create(self, parent: Node, name: str, info: EntryInfo, flags: int) -> tuple[Opened, Node]:
        if parent.path != CONTROL_DIR or not self.control.knows(name):
            raise self.refuse("create", parent)
        node = self.ns.own_entry(join(CONTROL_DIR, name), self.control.file_info(name, b""))
        return await self._open(node, flags | os.O_TRUNC, create=True), node

    async def setattr(self, node: Node, changes: AttrChanges, opened: OpenedFile | None) -> Node:
        """Only a truncate of an open configuration file means something (O_TRUNC, shell '>')."""
        if changes.mode is not None or changes.uid is not None or changes.gid is not None:
            raise self.refuse("setattr", node)
        if changes.size is not None:
            file = opened if isinstance(opened, ControlFile) else self.control.opened(node)
            if file is None:
                raise self.refuse("truncate", node)
            file.truncate(changes.size)
        return node

    async def unlink(self, node: Node) -> None:
        await self.control.delete(document_name(node.path))
        self.ns.detach(node.path, tree=False)
