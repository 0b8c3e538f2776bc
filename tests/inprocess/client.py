"""A path-level client of FuseOperations' handlers, as a program sees a mount minus the kernel.

``InProcess`` turns the calls of a program (open a path, pwrite, rename, ...) into the
pyfuse3 handler calls the kernel would make, with what the kernel itself decides
before it asks the file system: the path walk (ENOENT, ENOTDIR), O_CREAT and O_EXCL,
a directory opened for writing (EISDIR), the access mode of an open file (EBADF,
EINVAL), the offset of an O_APPEND write, and rename's and link's own checks. A
failure is the handler's ``pyfuse3.FUSEError``; ``Blocking`` makes the calls from a
thread outside the trio loop, failures as the OSError a program gets. Only the
handlers are used, no attribute of FuseOperations: tests/inprocess/conftest.py builds it.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from types import SimpleNamespace

import pyfuse3
import trio

MIB = 1 << 20
CTX = SimpleNamespace(uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), umask=0o022)


@dataclass(eq=False)
class Opened:
    """An open file or directory: what the kernel keeps of a descriptor."""

    fh: int
    inode: int
    flags: int
    is_dir: bool = False
    position: int = 0

    @property
    def readable(self) -> bool:
        return self.flags & os.O_ACCMODE != os.O_WRONLY

    @property
    def writable(self) -> bool:
        return self.flags & os.O_ACCMODE != os.O_RDONLY


def inside(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip("/") + "/")


class InProcess:
    """Calls by path (relative to root, a directory of the file system) on one FuseOperations."""

    def __init__(self, ops: pyfuse3.Operations, root: str = "") -> None:
        self.ops = ops
        self.root = root

    def within(self, directory: str) -> InProcess:
        return InProcess(self.ops, f"{self.root}/{directory}")

    # ---- the path walk

    async def _lookup(self, parent: int, name: bytes) -> pyfuse3.EntryAttributes | None:
        attr = await self.ops.lookup(parent, name, CTX)
        return attr if attr.st_ino else None  # st_ino 0: a negative entry

    async def entry(self, path: str) -> pyfuse3.EntryAttributes:
        names = [n for n in f"{self.root}/{path}".split("/") if n not in ("", ".")]
        attr = await self.ops.getattr(pyfuse3.ROOT_INODE, CTX)
        for name in names:
            if not stat.S_ISDIR(attr.st_mode):
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            found = await self._lookup(attr.st_ino, name.encode())
            if found is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            attr = found
        return attr

    async def inode(self, path: str) -> int:
        return (await self.entry(path)).st_ino

    async def _parent(self, path: str) -> tuple[int, bytes]:
        """The directory a name is in, and the name."""
        parent, _, name = path.rpartition("/")
        attr = await self.entry(parent)
        if not stat.S_ISDIR(attr.st_mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return attr.st_ino, name.encode()

    async def _new(self, path: str) -> tuple[int, bytes]:
        """_parent of a name to create: EEXIST if it is taken."""
        parent, name = await self._parent(path)
        if await self._lookup(parent, name) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        return parent, name

    # ---- open files

    async def create(self, path: str, mode: int = 0o644) -> Opened:
        return await self.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)

    async def open(self, path: str, flags: int = os.O_RDWR, mode: int = 0o644) -> Opened:
        parent, name = await self._parent(path)
        attr = await self._lookup(parent, name)
        if attr is None:
            if not flags & os.O_CREAT:
                raise pyfuse3.FUSEError(errno.ENOENT)
            fi, attr = await self.ops.create(parent, name, stat.S_IFREG | mode & ~CTX.umask, flags, CTX)
            return Opened(fi.fh, attr.st_ino, flags)
        if flags & os.O_CREAT and flags & os.O_EXCL:
            raise pyfuse3.FUSEError(errno.EEXIST)
        if stat.S_ISDIR(attr.st_mode):
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise pyfuse3.FUSEError(errno.EISDIR)
            return Opened(await self.ops.opendir(attr.st_ino, CTX), attr.st_ino, flags, is_dir=True)
        return Opened((await self.ops.open(attr.st_ino, flags, CTX)).fh, attr.st_ino, flags)

    async def close(self, h: Opened) -> None:
        if h.is_dir:
            await self.ops.releasedir(h.fh)
            return
        try:
            await self.ops.flush(h.fh)  # close(): the save, whose error close() returns
        finally:
            await self.ops.release(h.fh)

    async def pread(self, h: Opened, size: int, offset: int) -> bytes:
        if h.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if not h.readable:
            raise pyfuse3.FUSEError(errno.EBADF)
        return bytes(await self.ops.read(h.fh, offset, size))

    async def pwrite(self, h: Opened, data: bytes, offset: int) -> int:
        if not h.writable:
            raise pyfuse3.FUSEError(errno.EBADF)
        if h.flags & os.O_APPEND:  # at the end, whatever the offset (Linux's pwrite)
            offset = (await self.fstat(h)).st_size
        written = await self.ops.write(h.fh, offset, data)
        h.position = offset + written
        return written

    async def read(self, h: Opened, size: int) -> bytes:
        data = await self.pread(h, size, h.position)
        h.position += len(data)
        return data

    async def write(self, h: Opened, data: bytes) -> int:
        return await self.pwrite(h, data, h.position)

    async def read_all(self, path: str) -> bytes:
        h = await self.open(path, os.O_RDONLY)
        try:
            chunks = []
            while chunk := await self.read(h, MIB):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            await self.close(h)

    async def ftruncate(self, h: Opened, size: int) -> None:
        if not h.writable:
            raise pyfuse3.FUSEError(errno.EINVAL)
        await self._setattr(h.inode, h.fh, st_size=size)

    async def fstat(self, h: Opened) -> pyfuse3.EntryAttributes:
        return await self.ops.getattr(h.inode, CTX)

    async def fsync(self, h: Opened) -> None:
        if h.is_dir:
            await self.ops.fsyncdir(h.fh, False)
        else:
            await self.ops.fsync(h.fh, False)

    # ---- paths

    async def _setattr(self, inode: int, fh: int | None, **values: int) -> None:
        """setattr of the attributes given (st_size, st_mode), and of no other."""
        attr = pyfuse3.EntryAttributes()
        kinds = ("size", "mode", "uid", "gid", "mtime", "atime")
        fields = SimpleNamespace(**{f"update_{kind}": False for kind in kinds})
        for name, value in values.items():
            setattr(attr, name, value)
            setattr(fields, "update_" + name.removeprefix("st_"), True)
        await self.ops.setattr(inode, attr, fields, fh, CTX)

    async def stat(self, path: str) -> pyfuse3.EntryAttributes:
        return await self.entry(path)

    async def truncate(self, path: str, size: int) -> None:
        attr = await self.entry(path)
        if stat.S_ISDIR(attr.st_mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        await self._setattr(attr.st_ino, None, st_size=size)

    async def chmod(self, path: str, mode: int) -> None:
        await self._setattr(await self.inode(path), None, st_mode=mode)

    async def mkdir(self, path: str, mode: int) -> None:
        parent, name = await self._new(path)
        await self.ops.mkdir(parent, name, stat.S_IFDIR | mode & ~CTX.umask, CTX)

    async def rmdir(self, path: str) -> None:
        await self.ops.rmdir(*await self._parent(path), CTX)

    async def unlink(self, path: str) -> None:
        await self.ops.unlink(*await self._parent(path), CTX)

    async def rename(self, src: str, dst: str, flags: int = 0) -> None:
        """With the kernel's checks before it asks the file system (do_renameat2 in fs/namei.c)."""
        old_parent, old_name = await self._parent(src)
        new_parent, new_name = await self._parent(dst)
        if await self._lookup(old_parent, old_name) is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        target = await self._lookup(new_parent, new_name)
        if flags & pyfuse3.RENAME_NOREPLACE and target is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        if flags & pyfuse3.RENAME_EXCHANGE and target is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if inside(dst, src):  # the source an ancestor of the target
            raise pyfuse3.FUSEError(errno.EINVAL)
        if inside(src, dst):  # the target an ancestor of the source
            raise pyfuse3.FUSEError(errno.EINVAL if flags & pyfuse3.RENAME_EXCHANGE else errno.ENOTEMPTY)
        await self.ops.rename(old_parent, old_name, new_parent, new_name, flags, CTX)

    async def link(self, src: str, dst: str) -> None:
        inode = await self.inode(src)
        await self.ops.link(inode, *await self._new(dst), CTX)

    async def listdir(self, path: str) -> list[tuple[str, bool]]:
        """(name, is a directory) of each entry, sorted."""
        fh = await self.ops.opendir(await self.inode(path), CTX)
        try:
            entries: list[tuple[str, bool]] = []
            await self.ops.readdir(fh, 0, entries)  # the token: no_kernel's readdir_reply appends to it
            return sorted(entries)
        finally:
            await self.ops.releasedir(fh)

    # ---- extended attributes

    async def getxattr(self, path: str, name: str) -> bytes:
        return await self.ops.getxattr(await self.inode(path), name.encode(), CTX)

    async def setxattr(self, path: str, name: str, value: bytes) -> None:
        await self.ops.setxattr(await self.inode(path), name.encode(), value, CTX)

    async def listxattr(self, path: str) -> list[str]:
        return [name.decode() for name in await self.ops.listxattr(await self.inode(path), CTX)]

    async def removexattr(self, path: str, name: str) -> None:
        await self.ops.removexattr(await self.inode(path), name.encode(), CTX)


class Blocking:
    """InProcess's calls from a thread outside its trio loop (trio.from_thread), for code that
    is not async (a hypothesis state machine): a failure is the OSError a program would get."""

    def __init__(self, fs: InProcess, token: trio.lowlevel.TrioToken) -> None:
        self.fs = fs
        self.token = token

    def within(self, directory: str) -> Blocking:
        return Blocking(self.fs.within(directory), self.token)

    def __getattr__(self, name: str):
        method = getattr(self.fs, name)

        def call(*args):
            try:
                return trio.from_thread.run(method, *args, trio_token=self.token)
            except pyfuse3.FUSEError as exc:
                raise OSError(exc.errno, os.strerror(exc.errno)) from None

        return call
