"""The bucket's own tree: objects as files, common prefixes as directories.

Owns what a request on the bucket's files and directories does: names and attributes
come from ``namespace`` (listings, HEADs, the inode table), file contents from
``reader`` (ranged GETs through the block cache) or, for a file with unsaved changes,
from its ``write.OpenFile``; changes go to ``mutations`` (the tree) and
``write`` (file contents and headers), xattrs to ``xattrs``. The reserved names
of the root (``.s3``, ``.versions``), which the router gives to other trees, are
hidden from its listing here.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence

import trio

from .blockcache import BlockCache
from .dirprefetch import SubdirectoryPrefetch
from .errors import FsError
from .inodes import Node
from .metadata import EntryInfo
from .mutations import Mutations
from .names import file_key, join, split
from .namespace import Namespace
from .options import Config
from .reader import ObjectReader
from .s3client import S3Client
from .tree import AttrChanges, DirEntries, ObjectTree, Opened, OpenedFile
from .write import HeaderChanges, OpenFile, WriteBack, check_file_size
from .xattrs import Xattrs

log = logging.getLogger(__name__)

READ_ATTEMPTS = 5  # a read of a file with unsaved changes, each cut short by a save of the file


class BucketFile:
    """A file of the bucket opened by the kernel: a reader of the version in S3 and, opened for writing, a writer."""

    def __init__(self, tree: BucketTree, node: Node, writer: OpenFile | None = None, direct: bool = False) -> None:
        self.tree = tree
        self.node = node
        self.writer = writer
        # O_DIRECT: its reads pass the kernel's page cache by, so its reader puts nothing there (see
        # ObjectReader._start_fetching_rest: every read would look like one of dropped pages).
        self.direct = direct
        self.reader: ObjectReader | None = None  # for the version in S3; replaced when it changes

    def current_reader(self) -> ObjectReader:
        """The reader of the version now in S3 (which a save through the mount replaces)."""
        node, reader = self.node, self.reader
        if reader is None or reader.etag != node.info.etag or reader.size != node.info.size:
            if reader is not None:
                reader.close()
            reader = self.reader = self.tree.reader(
                node.path,
                node.info,
                on_changed=lambda: self.tree.ns.mark_stale(node),
                node=None if self.direct else node,
            )
        return reader

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        for _ in range(READ_ATTEMPTS):
            writer = self.tree.wb.files.get(self.node.inode)
            if writer is None or writer.spill is None:
                return await self.current_reader().read(offset, size)
            data = await writer.read(offset, size)  # unsaved changes: read them
            if data is not None:
                return data
            # else a save of the file ended meanwhile: read it again, as it is now
        raise FsError(errno.EIO, "SavedWhileRead", f"saved {READ_ATTEMPTS} times while it was read; giving up")

    async def write(self, offset: int, data: bytes) -> None:
        if self.writer is None:
            raise FsError(errno.EBADF, "NotOpenForWriting", "not open for writing")
        await self.writer.write(offset, data)

    async def flush(self) -> None:
        if self.writer is None:
            return
        if self.tree.opts.write.write_back:  # durable locally; uploaded in the background after the last close
            await self.tree.wb.acknowledge(self.writer)
        elif not (self.writer.only_emptied or self.writer.shared):
            await self.writer.save()

    async def fsync(self) -> None:
        if self.writer is not None:
            await self.writer.save()

    async def release(self) -> None:
        self.node.opened -= 1
        if self.reader is not None:
            self.reader.close()
        if self.writer is not None:
            await self.tree.wb.release(self.writer)


class BucketTree(ObjectTree):
    """The objects of a bucket (under --prefix) as a tree of files, directories and symlinks."""

    refusal = None  # allows every change S3 can make

    def __init__(
        self,
        s3: S3Client,
        opts: Config,
        ns: Namespace,
        blocks: BlockCache,
        reserved: Sequence[tuple[str, EntryInfo | None]],
        wb: WriteBack,
    ) -> None:
        """reserved: the root's names for other trees, with the entry a listing shows (None: hidden)."""
        super().__init__(s3, opts, ns, blocks)
        self.reserved = list(reserved)
        self.mount_time_ns = time.time_ns()
        self.wb = wb
        self.mut = Mutations(s3, ns, wb, blocks, opts)
        self.ahead = SubdirectoryPrefetch(ns, opts.cache.prefetch_dirs, self._listing)
        self.xattrs = Xattrs(s3, opts, self._change_headers, wb.pending_headers, wb.upload_state)

    @classmethod
    async def make(
        cls,
        s3: S3Client,
        opts: Config,
        ns: Namespace,
        blocks: BlockCache,
        reserved: Sequence[tuple[str, EntryInfo | None]],
        nursery: trio.Nursery,
    ) -> BucketTree:
        """The tree with its write-back, which takes the journal (JournalInUse if another mount has it)."""
        tree = cls(s3, opts, ns, blocks, reserved, await WriteBack.create(s3, blocks, opts, nursery, tree=ns))
        tree.wb.start()  # the uploads adopted from the journal
        if not opts.mount.read_only:
            await tree.mut.finish_renames()
        return tree

    def start(self, nursery: trio.Nursery) -> None:
        super().start(nursery)
        nursery.start_soon(self.ns.index.run)

    async def shutdown(self) -> None:
        """Every file still open for writing is saved or kept locally; the attribute index is written."""
        await self.wb.shutdown()
        await self.ns.index.flush_all()

    async def _changing(self, parent: Node, name: str | None = None) -> None:
        """Before a change in the directory parent (of its entry ``name``, if given)."""
        if name is not None and name in self.ns.internal_names(parent.path):
            raise FsError(errno.EPERM, "Reserved", f"{name!r} in the bucket's root is reserved for s3fuse's own keys")
        await self.ns.index.prepare(parent.path)

    async def _changing_entry(self, node: Node) -> None:
        """Before a change of the entry node (its parent directory's index records it; the root's own)."""
        await self.ns.index.prepare(split(node.path)[0] if node.path else "")

    # ---- names and attributes

    async def lookup(self, parent: Node, name: str) -> Node | None:
        return await self.ns.lookup(parent, name, lambda: self.ahead.settled(parent.path))

    async def getattr(self, node: Node) -> Node | None:
        return await self.ns.revalidate(node)

    async def _revalidate(self, node: Node) -> Node:
        """node with attributes at most attr-ttl old.

        A new version of the object has a new inode (see Namespace.resolve); ESTALE
        makes the kernel look the name up again and retry with that inode.
        """
        fresh = await self.ns.revalidate(node)
        if fresh is None:
            raise FsError(errno.ENOENT, "NoSuchKey", f"{node.path!r} is gone")
        if fresh is not node:
            raise FsError(errno.ESTALE, "Replaced", f"{node.path!r} was replaced")
        return fresh

    def link_count(self, node: Node) -> int:
        """A directory: 2 + its subdirectories while its complete listing is cached, else 1."""
        if not node.info.is_dir:
            return super().link_count(node)
        subdirectories = self.ns.subdirectories(node.path)
        if subdirectories is None:
            return 1
        if node.path == "":  # the other trees' directories the root lists (.s3 with --show-control-dir)
            subdirectories += sum(1 for _, info in self.reserved if info is not None and info.is_dir)
        return 2 + subdirectories

    async def readlink(self, node: Node) -> bytes:
        if not node.info.is_symlink:
            return await super().readlink(node)
        return bytes(await self.reader(node.path, node.info).fetch_range(0, node.info.size))

    # ---- directories and files

    async def opendir(self, node: Node) -> DirEntries:
        path = node.path
        await self.ahead.settled(path)
        reserved = self.reserved if path == "" else ()
        exclude = [name for name, _ in reserved]
        return self.ns.open_dir(
            path, reserved=reserved, local=self.wb.local_entries(path), on_end=lambda: self.ahead.listed(path, exclude)
        )

    def _listing(self, path: str) -> DirEntries:
        """A handle on the listing of a directory below the root, for listing it ahead."""
        return self.ns.open_dir(path, local=self.wb.local_entries(path))

    def reader(
        self, path: str, info: EntryInfo, on_changed: Callable[[], None] = lambda: None, node: Node | None = None
    ) -> ObjectReader:
        """A reader of the object at path; ``node``: its file's, whose kernel pages it may fill."""
        assert self.nursery is not None
        return ObjectReader(
            self.s3,
            self.blocks,
            self.nursery,
            file_key(self.opts.mount.prefix, path),
            info.size,
            info.etag,
            self.opts.cache.block_size,
            self.opts.cache.read_ahead,
            on_changed=on_changed,
            fill=self.ns.page_filler(node, info.etag) if node is not None and info.etag else None,
            random_fetch_max=self.opts.cache.random_fetch_max,
        )

    async def open(self, node: Node, flags: int) -> Opened:
        fresh = await self._revalidate(node)  # close-to-open: at most attr-ttl old
        opened = BucketFile(self, fresh, direct=bool(flags & os.O_DIRECT))
        if flags & os.O_ACCMODE != os.O_RDONLY:
            await self._changing_entry(fresh)
            await self.wb.before_change(fresh)
            await self.ns.fills_done(fresh)
            opened.writer = self.wb.open(fresh, exists=True)
            if flags & os.O_TRUNC:
                await opened.writer.truncate(0)
        fresh.opened += 1
        info = fresh.info
        # The kernel may keep its cached pages only if they hold this very version.
        keep = info.etag is not None and fresh.kernel_etag == info.etag
        fresh.kernel_etag = info.etag
        if not keep and opened.writer is None:
            opened.current_reader().prefetch_small_object()
            parent, name = split(fresh.path)
            for sibling, sibling_info in self.ns.siblings.opened(parent, name):
                self.reader(join(parent, sibling), sibling_info).prefetch_small_object()
        return Opened(opened, keep_cache=keep)

    # ---- changes

    async def create(self, parent: Node, name: str, info: EntryInfo, flags: int) -> tuple[Opened, Node]:
        await self._changing(parent, name)
        path = join(parent.path, name)
        if flags & os.O_EXCL and self.mut.exclusive:
            node = await self.mut.claim(path, info)  # in S3 now: exclusive across mounts
        else:
            node = self.ns.added(path, info)  # reaches S3 at its first save
        opened = BucketFile(self, node, writer=self.wb.open(node, exists=node.info.etag is not None))
        node.opened += 1
        return Opened(opened), node

    async def mkdir(self, parent: Node, name: str, info: EntryInfo) -> Node:
        await self._changing(parent, name)
        return await self.mut.mkdir(join(parent.path, name), info)

    async def symlink(self, parent: Node, name: str, target: bytes, info: EntryInfo) -> Node:
        await self._changing(parent, name)
        return await self.mut.symlink(join(parent.path, name), target, info)

    async def mknod(self, parent: Node, name: str, info: EntryInfo) -> Node:
        await self._changing(parent, name)
        return await self.mut.mknod(join(parent.path, name), info)

    async def unlink(self, node: Node) -> None:
        await self.mut.unlink(node)

    async def rmdir(self, node: Node) -> None:
        await self.mut.rmdir(node)

    async def rename(self, node: Node, new_parent: Node, new_name: str, target: Node | None) -> None:
        new_path = join(new_parent.path, new_name)
        if new_path == node.path:
            return
        await self._changing(new_parent, new_name)
        if await self.mut.rename_journaled(node, new_path, target):
            return
        pending = self.wb.files.get(node.inode)
        if pending is None or not pending.only_attributes:  # held attribute changes go in the rename's copy
            await self.wb.settled(node)
        await self.mut.rename(node, new_path, target)

    async def setattr(self, node: Node, changes: AttrChanges, opened: OpenedFile | None) -> Node:
        """changes: only what differs from node's attributes (the adapter drops the rest)."""
        info = node.info
        changed = changes.attributes()
        if "mode" in changed:
            changed["mode"] |= info.kind
        if not (changed or changes.size is not None):
            return node  # ctime alone: not kept
        await self._changing_entry(node)
        if changes.size is None and self._memory_only(node, changed):
            new_info = dataclasses.replace(info, **changed)
            if self.ns.attached(node):
                self.ns.added(node.path, new_info)  # the caches too, or a listing would bring back the old value
            else:
                node.info = new_info
            return node
        if info.is_dir:
            raise FsError(errno.EISDIR, "IsADirectory", f"truncate of directory {node.path!r}")
        if changes.size is not None:
            check_file_size(changes.size)  # before any request
        await self._change_file(
            node, lambda writer: _apply(writer, changes.size, changed), touches_data=changes.size is not None
        )
        return node

    def _memory_only(self, node: Node, changes: dict[str, int]) -> bool:
        """Changes kept in memory, with no request to S3.

        - to an inode no name leads to any more (the kernel sends the times of
          unlinked or replaced files when it evicts them);
        - to a directory: its attributes live in its parent's attribute index (recorded
          by ``Namespace.added``), not on its marker, which would cost a PutObject per
          change (two per directory of a tar archive);
        - an mtime alone that moved by less than a second, of a regular file, and not a
          whole second: the kernel's own stamp of writes s3fuse already saved, sent late
          (a stamp of the kernel's clock, never a whole second). utimensat(2) with both
          times is always stored, to the nanosecond, and so is a whole-second mtime alone
          (tar sets the archive's, atime omitted), and any time of a symlink or special file
          (the kernel stamps only regular files).
        """
        if node.info.is_dir or not self.ns.attached(node):
            return True
        if set(changes) != {"mtime_ns"} or node.writers or node.info.kind != stat.S_IFREG:
            return False
        if changes["mtime_ns"] % 1_000_000_000 == 0:
            return False
        current = node.info.mtime_ns if node.info.mtime_ns is not None else self.mount_time_ns
        return abs(changes["mtime_ns"] - current) < 1_000_000_000

    async def _change_file(
        self, node: Node, change: Callable[[OpenFile], Awaitable[None]], touches_data: bool = False
    ) -> None:
        """Apply a change to a file: folded into its pending upload, or saved right away."""
        pending = self.wb.files.get(node.inode)
        if pending is not None and pending.record is not None and not pending.handles:
            # journaled and not uploaded yet (--write-back, or attribute changes held): the change joins it
            if touches_data:
                await self.wb.before_change(node)
            writer = self.wb.open(node, exists=True)
            try:
                await change(writer)
                if touches_data and not self.wb.write_back:  # attribute changes held: this one is saved now
                    await writer.save()
                else:
                    await self.wb.acknowledge(writer)
            finally:
                await self.wb.release(writer)
            return
        await self.wb.settled(node)
        writer = self.wb.files.get(node.inode)
        if writer is not None:
            await change(writer)
            return
        fresh = await self._revalidate(node)
        await self.ns.fills_done(fresh)
        writer = self.wb.open(fresh, exists=True)
        try:
            await change(writer)
            if touches_data or not await self.wb.hold(writer):
                await writer.save()
        finally:
            await self.wb.release(writer)

    async def _change_headers(self, node: Node, changes: HeaderChanges) -> None:
        await self._changing_entry(node)

        async def apply(writer: OpenFile) -> None:
            writer.set_headers(changes)

        await self._change_file(node, apply)

    # ---- extended attributes (see xattrs.py)

    async def getxattr(self, node: Node, name: str) -> bytes:
        return await self.xattrs.get(node, name, is_root=node.path == "")

    async def listxattr(self, node: Node) -> list[str]:
        return await self.xattrs.names(node, is_root=node.path == "")

    async def setxattr(self, node: Node, name: str, value: bytes) -> None:
        await self.xattrs.set(node, name, value, is_root=node.path == "")

    async def removexattr(self, node: Node, name: str) -> None:
        await self.xattrs.remove(node, name, is_root=node.path == "")


async def _apply(writer: OpenFile, size: int | None, changes: dict[str, int]) -> None:
    if size is not None:
        await writer.truncate(size)
    if changes:
        writer.set_attributes(**changes)
