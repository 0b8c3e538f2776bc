"""The pyfuse3 adapter: kernel requests in, calls to the mount's trees out.

Owns what is FUSE's: the handler signatures and types (bytes names, EntryAttributes,
FileInfo), the tables of open file and directory handles, the kernel's reference
counts and notifications (lookup counts, forgetting past --inode-limit; the page
cache's notifications are ``inodes.KernelPageCache``), and the one place where errors become errnos (``errno_of`` and
``guard_handlers``). Which tree serves a request is the router's answer (``router``
for a bucket, ``allbuckets`` for all of an account's); what a request does is the
tree's (``tree.Tree``). Nothing here depends on which tree it is.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from itertools import count
from typing import Any

import pyfuse3
import trio

from .errors import FsError
from .inodes import KernelForgetting, Node
from .metadata import DEVICE_KINDS
from .metrics import METRICS, STATS_XATTR
from .mutations import new_entry
from .names import NAME_MAX, decode_name, join
from .options import Config
from .router import Router
from .tree import AttrChanges, DirEntries, Opened, OpenedFile, Tree
from .xattrs import is_s3fuse_name

log = logging.getLogger(__name__)

PREFERRED_IO_SIZE = 1 << 20  # st_blksize: the largest request FUSE sends
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


def _name(name: bytes) -> str:
    """A name about to be created, as S3 can store it."""
    if len(name) > NAME_MAX:
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
    text = decode_name(name)
    if text is None:
        log.warning("refusing name %r: S3 keys must be UTF-8", name)
        raise pyfuse3.FUSEError(errno.EINVAL)
    return text


def _xattr_name(name: bytes) -> str:
    return name.decode(errors="surrogateescape")


@guard_handlers
class FuseOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    # The kernel gathers small writes into large ones (a 4 KiB write costs no round
    # trip) and sends them all before close() reaches flush, so durability holds.
    enable_writeback_cache = True

    def __init__(self, opts: Config, router: Router) -> None:
        super().__init__()
        self.opts = opts
        self.router = router
        self.mount_time_ns = time.time_ns()
        self._handles = count(1)
        self._files: dict[int, OpenedFile] = {}
        self._dirs: dict[int, tuple[Tree, DirEntries]] = {}
        self.initialized = trio.Event()
        self.forgetting = KernelForgetting()

    def init(self) -> None:
        """Called while libfuse answers the kernel's INIT; the reply goes out when this returns."""
        self.initialized.set()

    # ---- helpers

    async def _route(self, inode: int) -> tuple[Tree, Node]:
        with errno_of("find inode", str(inode)):
            return await self.router.route(inode)

    async def _directory(self, inode: int) -> tuple[Tree, Node]:
        tree, node = await self._route(inode)
        if not node.info.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return tree, node

    async def _lookup(self, parent_tree: Tree, parent: Node, name: bytes) -> tuple[Tree, Node | None]:
        if len(name) > NAME_MAX:
            # What a local file system answers, and before any request: the kernel looks a name
            # up before it creates, removes or renames it, so every call by path gets it.
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        text = decode_name(name)
        if text is None or not parent.info.is_dir:
            return parent_tree, None
        with errno_of("lookup", join(parent.path, text)):
            tree = await self.router.child_tree(parent_tree, parent, text)
            return tree, await tree.lookup(parent, text)

    async def _existing(self, parent_inode: int, name: bytes) -> tuple[Tree, Node]:
        tree, node = await self._lookup(*await self._route(parent_inode), name)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return tree, node

    def _attributes(self, tree: Tree, node: Node) -> pyfuse3.EntryAttributes:
        info, opts = node.info, self.opts
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.inode
        attr.entry_timeout = attr.attr_timeout = tree.ttl(node, opts.cache.attr_ttl)
        perm = info.mode if info.mode is not None else (opts.mount.dir_mode if info.is_dir else opts.mount.file_mode)
        attr.st_mode = info.kind | stat.S_IMODE(perm)
        attr.st_nlink = tree.link_count(node)
        if info.kind in DEVICE_KINDS and info.rdev is not None:
            attr.st_rdev = info.rdev
        attr.st_uid = info.uid if info.uid is not None else opts.mount.uid
        attr.st_gid = info.gid if info.gid is not None else opts.mount.gid
        attr.st_size = info.size
        attr.st_blksize = PREFERRED_IO_SIZE
        attr.st_blocks = (info.size + 511) // 512
        mtime = info.mtime_ns if info.mtime_ns is not None else self.mount_time_ns
        attr.st_mtime_ns = attr.st_ctime_ns = mtime
        # noatime: reads never change it (no request per read); only utimensat(2) sets it
        attr.st_atime_ns = info.atime_ns if info.atime_ns is not None else mtime
        return attr

    def _referenced(self, tree: Tree, node: Node) -> pyfuse3.EntryAttributes:
        """The attributes of a node the kernel now holds one more reference to."""
        node.nlookup += 1
        self._forget_surplus(tree)
        return self._attributes(tree, node)

    def _add_handle(self, opened: Opened) -> pyfuse3.FileInfo:
        fh = next(self._handles)
        self._files[fh] = opened.file
        return pyfuse3.FileInfo(fh=fh, keep_cache=opened.keep_cache, direct_io=opened.direct_io)

    def _forget_surplus(self, tree: Tree) -> None:
        """Past --inode-limit, have the kernel forget the files looked up least recently.

        The kernel drops a dentry it is told is invalid, and then sends FORGET for its
        inode (at once, if nothing uses it), so the inode table shrinks with it. The
        notification waits for requests on the same directory, so it is sent from
        KernelForgetting's threads.
        """
        for parent_inode, name in tree.surplus():
            self.forgetting.forget(parent_inode, name.encode())

    # ---- names and attributes

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        tree, node = await self._lookup(*await self._route(parent_inode), name)
        if node is None:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0  # a negative entry the kernel caches for entry_timeout
            negative.entry_timeout = self.opts.cache.negative_ttl
            return negative
        return self._referenced(tree, node)

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        self.router.forget(inode_list)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        tree, node = await self._route(inode)
        with errno_of("stat", node.path):
            fresh = await tree.getattr(node)
        if fresh is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(tree, fresh)

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        tree, node = await self._route(inode)
        # Only real changes: with the writeback cache the kernel also sends the times it
        # already has (after a rename, for instance), which must not cost a copy.
        now = self._attributes(tree, node)
        requested = (
            (fields.update_mode, "mode", stat.S_IMODE(attr.st_mode), stat.S_IMODE(now.st_mode)),
            (fields.update_uid, "uid", attr.st_uid, now.st_uid),
            (fields.update_gid, "gid", attr.st_gid, now.st_gid),
            (fields.update_mtime, "mtime_ns", attr.st_mtime_ns, now.st_mtime_ns),
            (fields.update_atime, "atime_ns", attr.st_atime_ns, now.st_atime_ns),
        )
        changed = {name: new for wanted, name, new, old in requested if wanted and new != old}
        if fields.update_atime and "mtime_ns" in changed:
            # utimensat(2) sends both times; the kernel's own stamp of writes comes alone, and a
            # tree may take an mtime alone for one (BucketTree._memory_only): keep the atime.
            changed["atime_ns"] = attr.st_atime_ns
        changes = AttrChanges(**changed, size=attr.st_size if fields.update_size else None)
        opened = self._files.get(fh) if fh is not None else None
        with errno_of("setattr", node.path):
            node = await tree.setattr(node, changes, opened)
        return self._attributes(tree, node)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        tree, node = await self._route(inode)
        if not node.info.is_symlink:
            raise pyfuse3.FUSEError(errno.EINVAL)
        with errno_of("readlink", node.path):
            return await tree.readlink(node)

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
        tree, node = await self._directory(inode)
        with errno_of("list", node.path):
            entries = await tree.opendir(node)
        fh = next(self._handles)
        self._dirs[fh] = (tree, entries)
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        tree, entries = self._dirs[fh]
        with errno_of("list", entries.path):
            await self._readdir(tree, entries, start_id, token)
        self._forget_surplus(tree)

    async def _readdir(self, tree: Tree, entries: DirEntries, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        index = start_id
        # Asked once per page, not per entry: while the kernel reads a page it holds the
        # directory's lock, so no unlink or rename through the mount changes it meanwhile.
        gone = entries.removed_since_listed()
        while True:
            try:
                item = await entries.entry(index)
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
            node = tree.entry_node(join(entries.path, name), info)
            if not pyfuse3.readdir_reply(token, name.encode(), self._attributes(tree, node), index + 1):
                tree.unreferenced(node)
                return
            node.nlookup += 1  # readdirplus: the kernel now holds a reference
            index += 1
            if index - start_id >= SHORT_REPLY and tree.full:
                # While the kernel reads a page it holds the directory's lock, which each of
                # its invalidations waits for: short pages let them keep up with the listing.
                return

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        pass  # every change to the tree is in S3 when its call returns

    # ---- file contents

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        tree, node = await self._route(inode)
        if node.info.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        with errno_of("open", node.path):
            return self._add_handle(await tree.open(node, flags))

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent_tree, parent = await self._directory(parent_inode)
        text = _name(name)
        tree = await self.router.child_tree(parent_tree, parent, text)
        with errno_of("create", join(parent.path, text)):
            opened, node = await tree.create(parent, text, new_entry(stat.S_IFREG, mode, ctx.uid, ctx.gid), flags)
        return self._add_handle(opened), self._referenced(tree, node)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        opened = self._files[fh]
        with errno_of("read", opened.node.path):
            return await opened.read(off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        opened = self._files[fh]
        with errno_of("write", opened.node.path):
            await opened.write(off, buf)
        return len(buf)

    async def flush(self, fh: int) -> None:
        """close(): the data is in S3 when this returns, or with --write-back in the local journal."""
        opened = self._files[fh]
        with errno_of("save", opened.node.path):
            await opened.flush()

    async def fsync(self, fh: int, datasync: bool) -> None:
        opened = self._files[fh]
        with errno_of("fsync", opened.node.path):
            await opened.fsync()

    async def release(self, fh: int) -> None:
        opened = self._files.pop(fh, None)
        if opened is not None:
            await opened.release()

    # ---- the tree

    async def _make(
        self, parent_inode: int, name: bytes, what: str, make: Callable[[Tree, Node, str], Awaitable[Node]]
    ) -> pyfuse3.EntryAttributes:
        """A new entry (mkdir, symlink, mknod): ``make(tree, parent, name)`` in the tree the name is in."""
        parent_tree, parent = await self._directory(parent_inode)
        text = _name(name)
        tree = await self.router.child_tree(parent_tree, parent, text)
        with errno_of(what, join(parent.path, text)):
            node = await make(tree, parent, text)
        return self._referenced(tree, node)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        info = new_entry(stat.S_IFDIR, mode, ctx.uid, ctx.gid)
        return await self._make(parent_inode, name, "mkdir", lambda tree, parent, text: tree.mkdir(parent, text, info))

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        info = new_entry(stat.S_IFLNK, 0o777, ctx.uid, ctx.gid, size=len(target))
        return await self._make(
            parent_inode, name, "symlink", lambda tree, parent, text: tree.symlink(parent, text, target, info)
        )

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFREG:
            fi, attr = await self.create(parent_inode, name, mode, os.O_WRONLY, ctx)
            try:
                await self.flush(fi.fh)
            finally:
                await self.release(fi.fh)
            return attr
        if kind not in (stat.S_IFIFO, stat.S_IFSOCK, *DEVICE_KINDS):
            raise pyfuse3.FUSEError(errno.EINVAL)
        if kind in DEVICE_KINDS and ctx.uid != 0:
            # The kernel checked CAP_MKNOD in the caller's user namespace; a device node in
            # the bucket is root's to make (a user namespace's root maps to another uid).
            log.warning("mknod of device %r refused: only root makes device nodes", name)
            raise pyfuse3.FUSEError(errno.EPERM)
        info = new_entry(kind, mode, ctx.uid, ctx.gid, rdev=rdev if kind in DEVICE_KINDS else None)
        return await self._make(parent_inode, name, "mknod", lambda tree, parent, text: tree.mknod(parent, text, info))

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        _, node = await self._route(inode)
        # EPERM is the kernel's own answer on a file system without hard links (vfs_link
        # without ->link: vfat, for one), so programs meet it as they would there: git
        # renames instead; rsync -H, cp -a and tar report the link and copy the rest.
        log.warning("hard link to %r refused: S3 objects have exactly one name", node.path)
        raise pyfuse3.FUSEError(errno.EPERM)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        tree, node = await self._existing(parent_inode, name)
        if node.info.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        with errno_of("unlink", node.path):
            await tree.unlink(node)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        tree, node = await self._existing(parent_inode, name)
        if not node.info.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        with errno_of("rmdir", node.path):
            await tree.rmdir(node)

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
        tree, node = await self._existing(parent_inode_old, name_old)
        new_parent_tree, new_parent = await self._directory(parent_inode_new)
        new_name = _name(name_new)
        new_tree, target = await self._lookup(new_parent_tree, new_parent, name_new)
        with errno_of("rename", node.path):
            if new_tree is not tree:
                raise tree.refuse("rename", node) if tree.refusal else new_tree.refuse_rename_into(node)
        if target is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            if target.info.is_dir and not node.info.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            if node.info.is_dir and not target.info.is_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
        try:
            with errno_of("rename", node.path):
                await tree.rename(node, new_parent, new_name, target)
        except pyfuse3.FUSEError:
            if node.info.is_dir:  # maybe half done: the kernel must ask again what the new name is
                self.forgetting.forget(parent_inode_new, name_new)
            raise

    # ---- extended attributes

    async def _xattr_target(self, inode: int) -> tuple[Tree, Node]:
        if self.opts.mount.no_xattr:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # the kernel stops asking, for the whole mount
        return await self._route(inode)

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        xattrs = not self.opts.mount.no_xattr
        if xattrs and name == STATS_XATTR and inode == pyfuse3.ROOT_INODE:
            return METRICS.snapshot(ctx.pid).encode()
        if xattrs and not is_s3fuse_name(name):
            # Not ENODATA: 'ls -l' asks every entry for security.selinux unless the answer says
            # the file system has no such attributes, which it then remembers for the mount.
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        tree, node = await self._xattr_target(inode)
        with errno_of("getxattr", node.path):
            return await tree.getxattr(node, _xattr_name(name))

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        tree, node = await self._xattr_target(inode)
        with errno_of("listxattr", node.path):
            return [name.encode() for name in await tree.listxattr(node)]

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        tree, node = await self._xattr_target(inode)
        with errno_of("setxattr", node.path):
            await tree.setxattr(node, _xattr_name(name), value)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        tree, node = await self._xattr_target(inode)
        with errno_of("removexattr", node.path):
            await tree.removexattr(node, _xattr_name(name))

    async def shutdown(self) -> None:
        """Before exit: every file still open for writing is saved or kept locally."""
        await trio.to_thread.run_sync(self.forgetting.stop)
        await self.router.shutdown()
