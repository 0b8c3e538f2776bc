"""The pyfuse3 Operations class: kernel requests in, calls to the modules out.

Each handler converts between FUSE's types (inodes, bytes names, EntryAttributes)
and the modules that do the work: ``namespace`` for names and directories,
``reader`` for file contents, ``write`` for files open for writing,
``mutations`` for changes to the tree, ``s3client`` for the errno of a failed S3 call.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import inspect
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from itertools import count
from typing import Any

import pyfuse3
import trio

from .blockcache import BlockCache
from .controldir import CONTROL_DIR, ControlDir, ControlDirHandle, ControlFile, document_name, in_control_dir
from .errors import FsError
from .inodes import KernelForgetting, Node
from .metadata import EntryInfo
from .metrics import METRICS, STATS_XATTR
from .mutations import Mutations, new_entry
from .names import NAME_MAX, decode_name, file_key, join, split
from .namespace import DirHandle, Namespace
from .reader import ObjectReader
from .s3client import S3Client
from .versions import VERSIONS_DIR, TimeView, VersionListing, Versions, in_versions_dir, version_reader
from .write import HeaderChanges, OpenFile, WriteBack, check_file_size
from .xattrs import Xattrs, is_s3fuse_name

log = logging.getLogger(__name__)

PREFERRED_IO_SIZE = 1 << 20  # st_blksize: the largest request FUSE sends
READ_ATTEMPTS = 5  # a read of a file with unsaved changes, each cut short by a save of the file
SHORT_REPLY = KernelForgetting.THREADS // 2  # readdir entries per reply past --inode-limit
FAKE_CAPACITY_BLOCKS = 1 << 40  # statfs: S3 has no capacity; report 4 PiB free like peers


@contextmanager
def errno_of(action: str, path: str) -> Iterator[None]:
    """Report a failed call (an FsError, S3's included) as its errno, with one log line."""
    try:
        yield
    except FsError as exc:
        _log_failure(exc, "%s %r failed: %s", action, path, exc)
        raise pyfuse3.FUSEError(exc.errno) from None


def _log_failure(exc: FsError, message: str, *args: Any) -> None:
    if exc.logged:
        return
    level = logging.DEBUG if exc.errno in (errno.ENOENT, errno.ENOTEMPTY, errno.ENODATA) else logging.WARNING
    log.log(level, message, *args)


# The request handlers pyfuse3 awaits (init is called, not awaited).
HANDLERS = frozenset(name for name, value in vars(pyfuse3.Operations).items() if inspect.iscoroutinefunction(value))


def _guarded(name: str, handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(handler)
    async def guarded(self: pyfuse3.Operations, *args: Any) -> Any:
        # pyfuse3 answers only FUSEError; anything else would end its loop, and with it
        # the mount and every unsaved write of every open file.
        try:
            return await handler(self, *args)
        except pyfuse3.FUSEError as exc:
            error = exc
        except FsError as exc:
            _log_failure(exc, "%s failed: %s", name, exc)
            error = pyfuse3.FUSEError(exc.errno)
        except Exception:
            log.exception("%s failed with an unexpected error; the call fails with EIO, the mount stays up", name)
            error = pyfuse3.FUSEError(errno.EIO)
        if name == "forget":  # pyfuse3 sends forget no reply: an error would end its loop
            return None
        raise error

    return guarded


def guard_handlers(cls: type[pyfuse3.Operations]) -> type[pyfuse3.Operations]:
    """Class decorator: no exception of a request handler ends the daemon.

    Every handler cls defines fails its call instead: FsError with its errno, any
    other exception (a bug, MemoryError, an OSError nobody expected) with EIO and
    its traceback in the log.
    """
    for name in HANDLERS & vars(cls).keys():
        setattr(cls, name, _guarded(name, getattr(cls, name)))
    return cls


@dataclass
class FileHandle:
    node: Node
    reader: ObjectReader | None = None  # for the version in S3; replaced when it changes
    writer: OpenFile | None = None  # set when opened for writing
    control: ControlFile | None = None  # a file of the control directory .s3/
    pinned: bool = False  # reader reads one version for good (.versions/, --at)


@guard_handlers
class S3Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    # The kernel gathers small writes into large ones (a 4 KiB write costs no round
    # trip) and sends them all before close() reaches flush, so durability holds.
    enable_writeback_cache = True

    # Made by make(): the write-back's start-up is I/O.
    wb: WriteBack
    mut: Mutations
    xattrs: Xattrs

    def __init__(
        self,
        s3: S3Client,
        opts: argparse.Namespace,
        nursery: trio.Nursery,
        root_inode: int = pyfuse3.ROOT_INODE,
        blocks: BlockCache | None = None,
    ) -> None:
        """Use ``make``, which also opens the write-back."""
        super().__init__()
        self.s3 = s3
        self.opts = opts
        self.nursery = nursery  # background work: streamed parts, write-back uploads, read-ahead
        self.ns = Namespace(s3, opts, self._invalidate_soon, root_inode)
        self.ns.nursery = nursery
        self.blocks = blocks if blocks is not None else BlockCache(opts.cache_size)
        self.mount_time_ns = time.time_ns()
        self.control = ControlDir(s3, opts)
        self.versions = Versions(s3, opts)
        # --at: the whole mount is the bucket as it was then (mounted read-only)
        self.time_view = TimeView(s3, opts, opts.at) if opts.at is not None else None
        self._handles = count(root_inode)
        self._files: dict[int, FileHandle] = {}
        self._dirs: dict[int, DirHandle | ControlDirHandle | VersionListing] = {}
        self.initialized = trio.Event()
        self.forgetting = KernelForgetting()

    @classmethod
    async def make(
        cls,
        s3: S3Client,
        opts: argparse.Namespace,
        nursery: trio.Nursery,
        root_inode: int = pyfuse3.ROOT_INODE,
        blocks: BlockCache | None = None,
    ) -> S3Operations:
        """The tree of a bucket, its background work in ``nursery``; JournalInUse as ``WriteBack.create``.

        (Not ``create``: that is the handler of the same name.)

        root_inode: the first inode and handle number of this tree; blocks: a block cache
        to share. Both let allbuckets.py run one tree per bucket in one mount.
        """
        ops = cls(s3, opts, nursery, root_inode, blocks)
        ops.wb = await WriteBack.create(s3, ops.blocks, opts, nursery, tree=ops.ns)
        ops.mut = Mutations(s3, ops.ns, ops.wb, ops.blocks, opts)
        ops.xattrs = Xattrs(s3, opts, ops._change_headers, ops.wb.pending_headers, ops.wb.upload_state)
        ops.wb.start()
        return ops

    def init(self) -> None:
        """Called while libfuse answers the kernel's INIT; the reply goes out when this returns."""
        self.initialized.set()

    # ---- helpers

    def _node(self, inode: int) -> Node:
        node = self.ns.inodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _new_path(self, parent_inode: int, name: bytes) -> str:
        """The path for a name about to be created in a directory."""
        parent = self._node(parent_inode)
        if not parent.info.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        self._refuse_in_control_dir(parent)
        self._refuse_in_history(parent)
        if len(name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        text = decode_name(name)
        if text is None:
            log.warning("refusing name %r: S3 keys must be UTF-8", name)
            raise pyfuse3.FUSEError(errno.EINVAL)
        return join(parent.path, text)

    @staticmethod
    def _refuse_in_control_dir(*nodes: Node) -> None:
        """.s3/ holds the bucket's configuration files, which are edited, not moved or created."""
        if any(in_control_dir(node.path) for node in nodes):
            log.warning("%s/ holds bucket configuration files only; they can be read, written and removed", CONTROL_DIR)
            raise pyfuse3.FUSEError(errno.EPERM)

    def _history(self, path: str) -> Versions | TimeView | None:
        """The tree of old versions that serves path, if one does."""
        if self.time_view is not None:
            return self.time_view
        return self.versions if in_versions_dir(path) else None

    def _refuse_in_history(self, *nodes: Node) -> None:
        if any(self._history(node.path) is not None for node in nodes):
            raise pyfuse3.FUSEError(errno.EROFS)  # old versions are what they were

    async def _revalidate(self, node: Node, action: str) -> Node:
        """node with attributes at most attr-ttl old.

        A new version of the object has a new inode (see Namespace.resolve); ESTALE
        makes the kernel look the name up again and retry with that inode.
        """
        with errno_of(action, node.path):
            fresh = await self.ns.revalidate(node)
        if fresh is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if fresh is not node:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return fresh

    async def _existing(self, parent_inode: int, name: bytes) -> Node:
        node = await self._lookup(self._node(parent_inode), name)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        info, opts = node.info, self.opts
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.inode
        # A file's attributes may be trusted only for what is left of their TTL; a
        # directory has none that change.
        ttl = opts.attr_ttl if info.is_dir else max(0.0, opts.attr_ttl - info.age())
        if in_control_dir(node.path):
            ttl = 0.0  # a configuration file's size changes with what another client puts
        attr.entry_timeout = attr.attr_timeout = ttl
        perm = info.mode if info.mode is not None else (opts.dir_mode if info.is_dir else opts.file_mode)
        attr.st_mode = info.kind | stat.S_IMODE(perm)
        attr.st_nlink = 2 if info.is_dir else 1
        attr.st_uid = info.uid if info.uid is not None else opts.uid
        attr.st_gid = info.gid if info.gid is not None else opts.gid
        attr.st_size = info.size
        attr.st_blksize = PREFERRED_IO_SIZE
        attr.st_blocks = (info.size + 511) // 512
        mtime = info.mtime_ns if info.mtime_ns is not None else self.mount_time_ns
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = mtime
        return attr

    def _add_handle(self, handle: FileHandle) -> int:
        fh = next(self._handles)
        self._files[fh] = handle
        handle.node.opened += 1
        return fh

    def _forget_surplus(self) -> None:
        """Past --inode-limit, have the kernel forget the files looked up least recently.

        The kernel drops a dentry it is told is invalid, and then sends FORGET for its
        inode (at once, if nothing uses it), so the inode table shrinks with it. The
        notification waits for requests on the same directory, so it is sent from
        KernelForgetting's threads.
        """
        for node in self.ns.inodes.surplus():
            parent_path, name = split(node.path)
            parent = self.ns.inodes.by_path(parent_path)
            if parent is not None:
                self.forgetting.forget(parent.inode, name.encode())

    def _invalidate_soon(self, inode: int) -> None:
        """Drop an inode's kernel page cache from a worker thread.

        Called while a request may hold the kernel's inode lock, so it must not
        run inline: the notification would wait for the request that waits for it.
        """

        def invalidate() -> None:
            with suppress(OSError):  # the kernel forgot the inode meanwhile: nothing cached
                pyfuse3.invalidate_inode(inode)

        self.nursery.start_soon(trio.to_thread.run_sync, invalidate)

    # ---- names and attributes

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = await self._lookup(self._node(parent_inode), name)
        if node is None:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0  # a negative entry the kernel caches for entry_timeout
            negative.entry_timeout = self.opts.negative_ttl
            return negative
        node.nlookup += 1
        self._forget_surplus()
        return self._attributes(node)

    async def _lookup(self, parent: Node, name: bytes) -> Node | None:
        text = decode_name(name)
        if text is None or not parent.info.is_dir:
            return None
        with errno_of("lookup", join(parent.path, text)):
            if parent.path == "" and text == CONTROL_DIR:
                return self.ns.inodes.resolve(CONTROL_DIR, self.control.info())
            if parent.path == "" and text == VERSIONS_DIR and self.time_view is None:
                return self.ns.inodes.resolve(VERSIONS_DIR, self.versions.info())
            history = self._history(parent.path)
            if history is not None:
                entry = await history.lookup(join(parent.path, text))
                return None if entry is None else self.ns.inodes.resolve(join(parent.path, text), entry.info)
            if parent.path == CONTROL_DIR:
                info = await self.control.lookup(text)
                if info is None:
                    return None
                # The kernel keeps its own size for a regular file (writeback cache): a
                # document of another length needs another inode.
                known = self.ns.inodes.by_path(join(CONTROL_DIR, text))
                changed = known is not None and known.info.size != info.size
                return self.ns.inodes.resolve(join(CONTROL_DIR, text), info, new_inode=changed)
            return await self.ns.lookup(parent, text)

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for inode, nlookup in inode_list:
            self.ns.inodes.forget(inode, nlookup)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if in_control_dir(node.path) or self._history(node.path) is not None:
            return self._attributes(node)
        with errno_of("stat", node.path):
            fresh = await self.ns.revalidate(node)
        if fresh is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(fresh)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = pyfuse3.StatvfsData()
        st.f_bsize = PREFERRED_IO_SIZE
        st.f_frsize = 4096
        st.f_blocks = st.f_bfree = st.f_bavail = FAKE_CAPACITY_BLOCKS
        st.f_files = st.f_ffree = st.f_favail = 1 << 32
        st.f_namemax = 255
        return st

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return True  # default_permissions: the kernel checks modes itself

    # ---- directories

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        if not node.info.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = next(self._handles)
        history = self._history(node.path)
        if node.path == CONTROL_DIR:
            self._dirs[fh] = ControlDirHandle(self.control)
        elif history is not None:
            self._dirs[fh] = history.open_dir(node.path)
        elif node.path == "":
            show = self.opts.show_control_dir
            reserved = [(CONTROL_DIR, self.control.info()), (VERSIONS_DIR, self.versions.info())]
            self._dirs[fh] = self.ns.open_dir(
                node,
                reserved=[(name, info if show else None) for name, info in reserved],
                local=self.wb.local_entries(""),
            )
        else:
            self._dirs[fh] = self.ns.open_dir(node, local=self.wb.local_entries(node.path))
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dirs[fh]
        with errno_of("list", handle.path):
            await self._readdir(handle, start_id, token)
        self._forget_surplus()

    async def _readdir(
        self, handle: DirHandle | ControlDirHandle | VersionListing, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        index = start_id
        # Asked once per page, not per entry: while the kernel reads a page it holds the
        # directory's lock, so no unlink or rename through the mount changes it meanwhile.
        gone = handle.gone if isinstance(handle, DirHandle) and handle.changed_since_listed() else None
        while True:
            try:
                item = await handle.entry(index)
            except FsError:
                if index > start_id:
                    return  # deliver what the kernel accepted; the next call retries the page
                raise
            if item is None:
                return
            name, info = item
            if gone is not None and gone(name):
                index += 1  # listed before this mount removed it: the kernel must not learn it
                continue
            node = self.ns.resolve(join(handle.path, name), info)
            if not pyfuse3.readdir_reply(token, name.encode(), self._attributes(node), index + 1):
                if node.nlookup == 0:
                    self.ns.inodes.drop(node)
                return
            node.nlookup += 1  # readdirplus: the kernel now holds a reference
            index += 1
            if index - start_id >= SHORT_REPLY and self.ns.inodes.full:
                # While the kernel reads a page it holds the directory's lock, which each of
                # its invalidations waits for: short pages let them keep up with the listing.
                return

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # ---- file contents

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.info.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if in_control_dir(node.path):
            return await self._open_control(node, flags, create=False)
        history = self._history(node.path)
        if history is not None:
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise pyfuse3.FUSEError(errno.EROFS)
            with errno_of("open", node.path):
                version = await history.version(node.path)
            reader = version_reader(self.s3, self.opts, version, self.blocks, self.nursery)
            return pyfuse3.FileInfo(fh=self._add_handle(FileHandle(node, reader=reader, pinned=True)))
        fresh = await self._revalidate(node, "open")  # close-to-open: at most attr-ttl old
        handle = FileHandle(fresh)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            await self.wb.before_change(fresh)
            handle.writer = self.wb.open(fresh, exists=True)
            if flags & os.O_TRUNC:
                await handle.writer.truncate(0)
        fh = self._add_handle(handle)
        info = fresh.info
        # The kernel may keep its cached pages only if they hold this very version.
        keep = info.etag is not None and fresh.kernel_etag == info.etag
        fresh.kernel_etag = info.etag
        if not keep and handle.writer is None:
            self._reader_for(handle).prefetch_small_object()
            parent, name = split(fresh.path)
            for sibling, sibling_info in self.ns.siblings.opened(parent, name):
                self._reader(join(parent, sibling), sibling_info).prefetch_small_object()
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    async def _open_control(self, node: Node, flags: int, create: bool) -> pyfuse3.FileInfo:
        writing = flags & os.O_ACCMODE != os.O_RDONLY
        with errno_of("open", node.path):
            document = self.control.document(document_name(node.path))
            if writing and not document.writable:
                raise pyfuse3.FUSEError(errno.EACCES)
            opened = await self.control.open(document.name, truncate=bool(flags & os.O_TRUNC), create=create)
        fh = self._add_handle(FileHandle(node, control=opened))
        node.info = dataclasses.replace(node.info, size=len(opened.content))
        # direct_io: reads and writes reach the document itself, never a stale page cache
        return pyfuse3.FileInfo(fh=fh, direct_io=True)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._node(parent_inode)
        if parent.path == CONTROL_DIR:
            text = name.decode(errors="replace")
            if not self.control.knows(text):
                self._refuse_in_control_dir(parent)
            node = self.ns.inodes.resolve(join(CONTROL_DIR, text), self.control.file_info(text, b""))
            fi = await self._open_control(node, flags | os.O_TRUNC, create=True)
            node.nlookup += 1
            return fi, self._attributes(node)
        path = self._new_path(parent_inode, name)
        node = self.ns.added(path, new_entry(stat.S_IFREG, mode, ctx.uid, ctx.gid))
        fh = self._add_handle(FileHandle(node, writer=self.wb.open(node, exists=False)))
        node.nlookup += 1
        self._forget_surplus()
        return pyfuse3.FileInfo(fh=fh, keep_cache=False), self._attributes(node)

    def _reader(self, path: str, info: EntryInfo, on_changed: Callable[[], None] = lambda: None) -> ObjectReader:
        return ObjectReader(
            self.s3,
            self.blocks,
            self.nursery,
            file_key(self.opts.prefix, path),
            info.size,
            info.etag,
            self.opts.block_size,
            self.opts.read_ahead,
            on_changed=on_changed,
        )

    def _reader_for(self, handle: FileHandle) -> ObjectReader:
        """The handle's reader for the version now in S3 (which a save through the mount replaces)."""
        node = handle.node
        reader = handle.reader
        if reader is None or reader.etag != node.info.etag or reader.size != node.info.size:
            if reader is not None:
                reader.close()
            reader = handle.reader = self._reader(node.path, node.info, on_changed=lambda: self.ns.mark_stale(node))
        return reader

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        handle = self._files[fh]
        if handle.control is not None:
            return handle.control.read(off, size)
        if handle.pinned:
            assert handle.reader is not None
            return await handle.reader.read(off, size)
        for _ in range(READ_ATTEMPTS):
            writer = self.wb.files.get(handle.node.inode)
            if writer is None or writer.spill is None:
                return await self._reader_for(handle).read(off, size)
            with errno_of("read", handle.node.path):  # unsaved changes: read them
                data = await writer.read(off, size)
            if data is not None:
                return data
            # else a save of the file ended meanwhile: read it again, as it is now
        log.warning("read %r: saved %d times while it was read; giving up", handle.node.path, READ_ATTEMPTS)
        raise pyfuse3.FUSEError(errno.EIO)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._files[fh]
        if handle.control is not None:
            handle.control.write(off, buf)
            handle.node.info = dataclasses.replace(handle.node.info, size=len(handle.control.content))
            return len(buf)
        writer = handle.writer
        if writer is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        with errno_of("write", handle.node.path):
            await writer.write(off, buf)
        return len(buf)

    async def flush(self, fh: int) -> None:
        """close(): the data is in S3 when this returns, or with --write-back in the local journal."""
        handle = self._files[fh]
        if handle.control is not None:
            with errno_of("save", handle.node.path):
                await self.control.save(handle.control)
        if handle.writer is None:
            return
        with errno_of("save", handle.node.path):
            if self.opts.write_back:  # durable locally; uploaded in the background after the last close
                await self.wb.acknowledge(handle.writer)
            elif not handle.writer.only_emptied:
                await handle.writer.save()

    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._files[fh]
        if handle.writer is not None:
            with errno_of("fsync", handle.node.path):
                await handle.writer.save()
        else:
            await self.flush(fh)

    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is None:
            return
        handle.node.opened -= 1
        if handle.reader is not None:
            handle.reader.close()
        if handle.writer is not None:
            await self.wb.release(handle.writer)

    # ---- attributes

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if in_control_dir(node.path):
            return self._setattr_control(node, attr, fields, fh)
        self._refuse_in_history(node)
        # Only real changes: with the writeback cache the kernel also sends the times it
        # already has (after a rename, for instance), which must not cost a copy.
        now = self._attributes(node)
        requested = (
            (fields.update_mode, "mode", node.info.kind | stat.S_IMODE(attr.st_mode), now.st_mode),
            (fields.update_uid, "uid", attr.st_uid, now.st_uid),
            (fields.update_gid, "gid", attr.st_gid, now.st_gid),
            (fields.update_mtime, "mtime_ns", attr.st_mtime_ns, now.st_mtime_ns),
        )
        changes = {name: new for wanted, name, new, old in requested if wanted and new != old}
        if not (changes or fields.update_size):
            return self._attributes(node)  # atime or ctime alone: not kept
        if not fields.update_size and self._memory_only(node, changes):
            info = dataclasses.replace(node.info, **changes)
            if self.ns.inodes.attached(node):
                self.ns.added(node.path, info)  # the caches too, or a listing would bring back the old value
            else:
                node.info = info
            return self._attributes(node)
        if node.info.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)  # a truncate
        with errno_of("setattr", node.path):
            if fields.update_size:
                check_file_size(attr.st_size)  # before any request
            await self._change_file(
                node,
                lambda writer: self._change(writer, fields.update_size, attr.st_size, changes),
                touches_data=fields.update_size,
            )
        return self._attributes(node)

    async def _change_file(
        self, node: Node, change: Callable[[OpenFile], Awaitable[None]], touches_data: bool = False
    ) -> None:
        """Apply a change to a file: folded into its pending upload, or saved right away."""
        pending = self.wb.files.get(node.inode)
        if pending is not None and pending.record is not None and not pending.handles:
            # journaled and not uploaded yet (--write-back): the change joins the upload, durably
            if touches_data:
                await self.wb.before_change(node)
            writer = self.wb.open(node, exists=True)
            try:
                await change(writer)
                await self.wb.acknowledge(writer)
            finally:
                await self.wb.release(writer)
            return
        await self.wb.settled(node)
        writer = self.wb.files.get(node.inode)
        if writer is not None:
            await change(writer)
            return
        writer = self.wb.open(await self._revalidate(node, "change"), exists=True)
        try:
            await change(writer)
            await writer.save()
        finally:
            await self.wb.release(writer)

    async def _change_headers(self, node: Node, changes: HeaderChanges) -> None:
        async def apply(writer: OpenFile) -> None:
            writer.set_headers(changes)

        await self._change_file(node, apply)

    def _setattr_control(
        self, node: Node, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, fh: int | None
    ) -> pyfuse3.EntryAttributes:
        """Only a truncate of an open configuration file means something (O_TRUNC, shell '>')."""
        if fields.update_mode or fields.update_uid or fields.update_gid:
            self._refuse_in_control_dir(node)
        if fields.update_size:
            handle = self._files.get(fh) if fh is not None else None
            opened = handle.control if handle is not None else None
            if opened is None:
                opened = next((h.control for h in self._files.values() if h.node is node and h.control), None)
            if opened is None:
                self._refuse_in_control_dir(node)
            opened.truncate(attr.st_size)  # type: ignore[union-attr]
            node.info = dataclasses.replace(node.info, size=attr.st_size)
        return self._attributes(node)

    def _memory_only(self, node: Node, changes: dict[str, int]) -> bool:
        """Changes kept in memory, with no request to S3.

        - to an inode no name leads to any more (the kernel sends the times of
          unlinked or replaced files when it evicts them);
        - to a directory: listings carry no headers and s3fuse never reads a marker's,
          so stored directory attributes could not be seen, while writing them would
          cost a PutObject per change (two per directory of a tar archive);
        - an mtime that moved by less than a second, the precision of x-amz-meta-mtime
          (the kernel's own stamp of a write s3fuse already saved, sent late).
        """
        if node.info.is_dir or not self.ns.inodes.attached(node):
            return True
        if set(changes) != {"mtime_ns"} or node.writers:
            return False
        current = node.info.mtime_ns if node.info.mtime_ns is not None else self.mount_time_ns
        return abs(changes["mtime_ns"] - current) < 1_000_000_000

    @staticmethod
    async def _change(writer: OpenFile, truncate: bool, size: int, changes: dict[str, int]) -> None:
        if truncate:
            await writer.truncate(size)
        if changes:
            writer.set_attributes(**changes)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        if not node.info.is_symlink:
            raise pyfuse3.FUSEError(errno.EINVAL)
        history = self._history(node.path)
        if history is not None:
            with errno_of("readlink", node.path):
                return await history.readlink(node.path)
        with errno_of("readlink", node.path):
            return bytes(await self._reader(node.path, node.info).fetch_range(0, node.info.size))

    # ---- the tree

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._new_path(parent_inode, name)
        with errno_of("mkdir", path):
            node = await self.mut.mkdir(path, new_entry(stat.S_IFDIR, mode, ctx.uid, ctx.gid))
        node.nlookup += 1
        return self._attributes(node)

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._new_path(parent_inode, name)
        info = new_entry(stat.S_IFLNK, 0o777, ctx.uid, ctx.gid, size=len(target))
        with errno_of("symlink", path):
            node = await self.mut.symlink(path, target, info)
        node.nlookup += 1
        return self._attributes(node)

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if not stat.S_ISREG(mode):
            log.warning("mknod of %r refused: S3 holds no device nodes, FIFOs or sockets", name)
            raise pyfuse3.FUSEError(errno.EPERM)
        fi, attr = await self.create(parent_inode, name, mode, os.O_WRONLY, ctx)
        await self.flush(fi.fh)
        await self.release(fi.fh)
        return attr

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        log.warning("hard link to %r refused: S3 objects have exactly one name", self._node(inode).path)
        raise pyfuse3.FUSEError(errno.EPERM)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = await self._existing(parent_inode, name)
        self._refuse_in_history(node)
        if node.info.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        with errno_of("unlink", node.path):
            if in_control_dir(node.path):
                await self.control.delete(document_name(node.path))
                self.ns.inodes.detach(node.path, tree=False)
                return
            await self.mut.unlink(node)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = await self._existing(parent_inode, name)
        if not node.info.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        self._refuse_in_control_dir(node)
        self._refuse_in_history(node)
        with errno_of("rmdir", node.path):
            await self.mut.rmdir(node)

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            log.warning("rename with RENAME_EXCHANGE refused: S3 cannot swap two objects atomically")
            raise pyfuse3.FUSEError(errno.EINVAL)
        if flags & ~pyfuse3.RENAME_NOREPLACE:  # RENAME_WHITEOUT (overlay file systems) and any newer flag
            raise pyfuse3.FUSEError(errno.EINVAL)
        node = await self._existing(parent_inode_old, name_old)
        self._refuse_in_control_dir(node)
        self._refuse_in_history(node)
        new_path = self._new_path(parent_inode_new, name_new)
        target = await self._lookup(self._node(parent_inode_new), name_new)
        if target is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            if target.info.is_dir and not node.info.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            if node.info.is_dir and not target.info.is_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
        if new_path == node.path:
            return
        await self.wb.settled(node)
        try:
            with errno_of("rename", node.path):
                await self.mut.rename(node, new_path, target)
        except pyfuse3.FUSEError:
            if node.info.is_dir:  # maybe half done: the kernel must ask again what the new name is
                self.forgetting.forget(parent_inode_new, name_new)
            raise

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        pass  # every change to the tree is in S3 when its call returns

    # ---- extended attributes (see xattrs.py)

    def _xattr_node(self, inode: int) -> Node:
        if self.opts.no_xattr:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # the kernel stops asking, for the whole mount
        node = self._node(inode)
        if in_control_dir(node.path):
            raise pyfuse3.FUSEError(errno.ENODATA)
        return node

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if name == STATS_XATTR and inode == pyfuse3.ROOT_INODE and not self.opts.no_xattr:
            return METRICS.snapshot(ctx.pid).encode()
        if not is_s3fuse_name(name) and not self.opts.no_xattr:
            # Not ENODATA: 'ls -l' asks every entry for security.selinux unless the answer says
            # the file system has no such attributes, which it then remembers for the mount.
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        node = self._xattr_node(inode)
        history = self._history(node.path)
        if history is not None:
            with errno_of("getxattr", node.path):
                values = await history.xattrs(node.path)
            value = values.get(name.decode(errors="surrogateescape"))
            if value is None:
                raise pyfuse3.FUSEError(errno.ENODATA)
            return value
        with errno_of("getxattr", node.path):
            return await self.xattrs.get(node, name.decode(errors="surrogateescape"), is_root=node.path == "")

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        try:
            node = self._xattr_node(inode)
        except pyfuse3.FUSEError as exc:
            if exc.errno == errno.ENODATA:
                return []
            raise
        history = self._history(node.path)
        if history is not None:
            with errno_of("listxattr", node.path):
                return [name.encode() for name in await history.xattrs(node.path)]
        with errno_of("listxattr", node.path):
            return [name.encode() for name in await self.xattrs.names(node, is_root=node.path == "")]

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self._xattr_node(inode)
        self._refuse_in_history(node)
        with errno_of("setxattr", node.path):
            await self.xattrs.set(node, name.decode(errors="surrogateescape"), value, is_root=node.path == "")

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self._xattr_node(inode)
        self._refuse_in_history(node)
        with errno_of("removexattr", node.path):
            await self.xattrs.remove(node, name.decode(errors="surrogateescape"), is_root=node.path == "")

    async def shutdown(self) -> None:
        """Before exit: every file still open for writing is saved or kept locally."""
        await trio.to_thread.run_sync(self.forgetting.stop)
        await self.wb.shutdown()
