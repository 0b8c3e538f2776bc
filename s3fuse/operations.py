"""The pyfuse3 Operations class: kernel requests in, calls to the modules out.

Each handler converts between FUSE's types (inodes, bytes names, EntryAttributes)
and the modules that do the work: ``namespace`` for names and directories,
``reader`` for file contents, ``s3client`` for the errno of a failed S3 call.
Changes to the bucket arrive with the write path; until then every mutating call
fails with EROFS.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from itertools import count

import pyfuse3
import trio

from .blockcache import BlockCache
from .inodes import Node
from .metadata import EntryInfo
from .names import decode_name, file_key, join, split
from .namespace import DirHandle, Namespace
from .reader import ObjectReader
from .s3client import S3Client, S3Error

log = logging.getLogger(__name__)

PREFERRED_IO_SIZE = 1 << 20  # st_blksize: the largest request FUSE sends
FAKE_CAPACITY_BLOCKS = 1 << 40  # statfs: S3 has no capacity; report 4 PiB free like peers


@contextmanager
def errno_of_s3(action: str, path: str) -> Iterator[None]:
    """Report a failed S3 call as the errno its error maps to, with one log line."""
    try:
        yield
    except S3Error as exc:
        level = logging.DEBUG if exc.errno == errno.ENOENT else logging.WARNING
        log.log(level, "%s %r failed: %s", action, path, exc)
        raise pyfuse3.FUSEError(exc.errno) from None


class S3Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, s3: S3Client, opts: argparse.Namespace) -> None:
        super().__init__()
        self.s3 = s3
        self.opts = opts
        self.ns = Namespace(s3, opts, self._invalidate_soon)
        self.blocks = BlockCache(opts.cache_size)
        self.mount_time_ns = time.time_ns()
        self._handles = count(1)
        self._files: dict[int, ObjectReader] = {}
        self._dirs: dict[int, DirHandle] = {}
        self.nursery: trio.Nursery | None = None  # set by the mount loop before requests arrive

    # ---- helpers

    def _node(self, inode: int) -> Node:
        node = self.ns.inodes.get(inode)
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

    def _invalidate_soon(self, inode: int) -> None:
        """Drop an inode's kernel page cache from a worker thread.

        Called while a request may hold the kernel's inode lock, so it must not
        run inline: the notification would wait for the request that waits for it.
        """

        def invalidate() -> None:
            with suppress(OSError):  # the kernel forgot the inode meanwhile: nothing cached
                pyfuse3.invalidate_inode(inode)

        if self.nursery is not None:
            self.nursery.start_soon(trio.to_thread.run_sync, invalidate)

    # ---- names and attributes

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        text = decode_name(name)
        node = None
        if text is not None and parent.info.is_dir:
            with errno_of_s3("lookup", join(parent.path, text)):
                node = await self.ns.lookup(parent, text)
        if node is None:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0  # a negative entry the kernel caches for entry_timeout
            negative.entry_timeout = self.opts.negative_ttl
            return negative
        node.nlookup += 1
        return self._attributes(node)

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for inode, nlookup in inode_list:
            self.ns.inodes.forget(inode, nlookup)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        with errno_of_s3("stat", node.path):
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
        self._dirs[fh] = self.ns.open_dir(node)
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dirs[fh]
        with errno_of_s3("list", handle.path):
            await self._readdir(handle, start_id, token)

    async def _readdir(self, handle: DirHandle, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        index = start_id
        while True:
            try:
                item = await handle.entry(index)
            except S3Error:
                if index > start_id:
                    return  # deliver what the kernel accepted; the next call retries the page
                raise
            if item is None:
                return
            name, info = item
            node = self.ns.resolve(join(handle.path, name), info)
            if not pyfuse3.readdir_reply(token, name.encode(), self._attributes(node), index + 1):
                if node.nlookup == 0:
                    self.ns.inodes.drop(node)
                return
            node.nlookup += 1  # readdirplus: the kernel now holds a reference
            index += 1

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # ---- file contents

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.info.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        with errno_of_s3("open", node.path):
            fresh = await self.ns.revalidate(node)  # close-to-open: at most attr-ttl old
        if fresh is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        info = fresh.info
        fh = next(self._handles)
        self._files[fh] = reader = self._reader(fresh.path, info, on_changed=lambda: self.ns.mark_stale(fresh))
        # The kernel may keep its cached pages only if they hold this very version.
        keep = info.etag is not None and fresh.kernel_etag == info.etag
        fresh.kernel_etag = info.etag
        if not keep:
            reader.prefetch_small_object()
        parent, name = split(fresh.path)
        for sibling, sibling_info in self.ns.siblings.opened(parent, name):
            self._reader(join(parent, sibling), sibling_info).prefetch_small_object()
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    def _reader(self, path: str, info: EntryInfo, on_changed: Callable[[], None] = lambda: None) -> ObjectReader:
        assert self.nursery is not None
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

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        return await self._files[fh].read(off, size)

    async def release(self, fh: int) -> None:
        self._files.pop(fh, None)

    # ---- extended attributes: not supported yet. ENOSYS (not ENODATA) makes the kernel
    # answer every later call itself; 'ls -l' asks for security.selinux on each entry, and
    # a round trip to this daemon costs about as much as listing the entry from S3.

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    # ---- changes: refused until the write path lands

    async def _read_only(self, *args: object) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _read_only  # type: ignore[assignment]
    create = write = setxattr = removexattr = _read_only  # type: ignore[assignment]
