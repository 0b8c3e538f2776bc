"""What a tree of the mount is: the interface between the pyfuse3 adapter and each namespace.

A mount serves several trees: the bucket itself (``buckettree``), the bucket's
configuration under ``.s3/`` (``controldir``), its history under ``.versions/`` and a
whole mount at an instant with ``--at`` (``historytree``), and in all-buckets mode the
root of buckets (``allbuckets``). ``router`` says which tree serves an inode; the
adapter (``operations``) converts FUSE's types and calls the tree. A tree speaks in
``Node``s, ``str`` names and ``FsError``s, never in FUSE types or errnos raised as
FUSEError.

``Tree`` answers every change with its ``refusal`` (EROFS for the history trees, EPERM
for ``.s3/`` and the bucket root) unless it overrides the change, so a read-only tree
says so once.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import trio

from .errors import FsError
from .inodes import Node
from .metadata import EntryInfo
from .names import split

if TYPE_CHECKING:
    from .blockcache import BlockCache
    from .namespace import Namespace
    from .options import Config
    from .s3client import S3Client


def refused(code: int, what: str, path: str) -> FsError:
    return FsError(code, errno.errorcode.get(code, "Error"), f"{what} of {path!r} refused")


class OpenedFile(Protocol):
    """An open file of a tree: what the adapter's file handle table holds."""

    node: Node

    async def read(self, offset: int, size: int) -> bytes | memoryview: ...

    async def write(self, offset: int, data: bytes) -> None: ...

    async def flush(self) -> None:
        """close(): saved when this returns (or kept durably, with --write-back)."""

    async def fsync(self) -> None: ...

    async def release(self) -> None: ...


class DirEntries(Protocol):
    """An open directory: its entries by position, as readdir asks for them."""

    path: str

    async def entry(self, index: int) -> tuple[str, EntryInfo] | None:
        """The entry at index (0 first), or None past the last one."""

    def removed_since_listed(self) -> Callable[[str], bool] | None:
        """Which listed names the mount has removed since (asked once per readdir call), if any."""


class ReadOnlyFile:
    """An OpenedFile that is only read: nothing to save, a write is EBADF (the kernel checks the
    access mode first, so one arriving here is a bug)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        raise NotImplementedError

    async def write(self, offset: int, data: bytes) -> None:
        raise FsError(errno.EBADF, "NotOpenForWriting", f"{self.node.path!r} is open read-only")

    async def flush(self) -> None:
        pass

    async def fsync(self) -> None:
        pass

    async def release(self) -> None:
        self.node.opened -= 1


@dataclass
class Opened:
    """A file a tree opened, with what the kernel may do with its pages."""

    file: OpenedFile
    keep_cache: bool = False  # the kernel's cached pages hold this very version
    direct_io: bool = False  # no page cache at all: every read and write reaches the tree


@dataclass(frozen=True)
class AttrChanges:
    """A setattr: the attributes the caller asked to change (None: leave as it is)."""

    mode: int | None = None  # permission bits only
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None
    atime_ns: int | None = None
    size: int | None = None  # a truncate

    def attributes(self) -> dict[str, int]:
        """The attributes to change, by EntryInfo field (mode: permission bits only)."""
        wanted = {
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "mtime_ns": self.mtime_ns,
            "atime_ns": self.atime_ns,
        }
        return {name: value for name, value in wanted.items() if value is not None}


class Tree:
    """A tree of the mount. The defaults read nothing and refuse every change."""

    refusal: int | None = errno.EROFS  # the errno of a change this tree does not allow (None: allows them)

    def refuse(self, what: str, node: Node) -> FsError:
        return refused(self.refusal or errno.EPERM, what, node.path)

    def start(self, nursery: trio.Nursery) -> None:
        """The mount loop runs: background work of this tree goes to nursery."""

    async def shutdown(self) -> None:
        """Unmounting: whatever this tree holds that S3 has not got yet is saved or kept locally."""

    # ---- names and attributes

    async def lookup(self, parent: Node, name: str) -> Node | None:
        """The node of name in directory parent (which may be the root of another tree), or None."""
        raise NotImplementedError

    async def getattr(self, node: Node) -> Node | None:
        """node with attributes fresh enough to answer (None: it is gone)."""
        return node

    def ttl(self, node: Node, attr_ttl: float) -> float:
        """How long the kernel may trust node's attributes."""
        return attr_ttl if node.info.is_dir else max(0.0, attr_ttl - node.info.age())

    async def setattr(self, node: Node, changes: AttrChanges, opened: OpenedFile | None) -> Node:
        raise self.refuse("setattr", node)

    async def readlink(self, node: Node) -> bytes:
        raise FsError(errno.EINVAL, "NotASymlink", f"{node.path!r} is no symlink")

    def link_count(self, node: Node) -> int:
        """st_nlink: 1 for a file, and for a directory whose subdirectories are not counted (what
        ``find`` takes for "unknown"; 2 would tell it there are none)."""
        return 1

    def unreferenced(self, node: Node) -> None:
        """A node made for a directory entry the kernel did not take."""

    def surplus(self) -> list[tuple[int, str]]:
        """Past --inode-limit: (parent inode, name) of the entries the kernel should forget."""
        return []

    @property
    def full(self) -> bool:
        """Whether the kernel holds as many inodes of this tree as --inode-limit allows."""
        return False

    # ---- directories and files

    async def opendir(self, node: Node) -> DirEntries:
        raise NotImplementedError

    def entry_node(self, path: str, info: EntryInfo) -> Node:
        """The node of a directory entry a listing of this tree found."""
        raise NotImplementedError

    async def open(self, node: Node, flags: int) -> Opened:
        raise NotImplementedError

    # ---- changes

    async def create(self, parent: Node, name: str, info: EntryInfo, flags: int) -> tuple[Opened, Node]:
        raise self.refuse("create", parent)

    async def mkdir(self, parent: Node, name: str, info: EntryInfo) -> Node:
        raise self.refuse("mkdir", parent)

    async def symlink(self, parent: Node, name: str, target: bytes, info: EntryInfo) -> Node:
        raise self.refuse("symlink", parent)

    async def mknod(self, parent: Node, name: str, info: EntryInfo) -> Node:
        """A FIFO, socket or device node (info.kind says which)."""
        raise self.refuse("mknod", parent)

    async def unlink(self, node: Node) -> None:
        raise self.refuse("unlink", node)

    async def rmdir(self, node: Node) -> None:
        raise self.refuse("rmdir", node)

    async def rename(self, node: Node, new_parent: Node, new_name: str, target: Node | None) -> None:
        """Move node to new_parent/new_name (a directory of this tree), replacing target if there is one."""
        raise self.refuse("rename", node)

    def refuse_rename_into(self, node: Node) -> FsError:
        """A rename of another tree's node into this tree (which the node's own tree allows to leave):
        EXDEV, another file system, so that ``mv`` copies and then deletes, unless this tree refuses."""
        return refused(self.refusal or errno.EXDEV, "rename", node.path)

    # ---- extended attributes (names without the FUSE bytes)

    async def getxattr(self, node: Node, name: str) -> bytes:
        raise FsError(errno.ENODATA, "NoSuchAttribute", f"{node.path!r} has no attribute {name!r}")

    async def listxattr(self, node: Node) -> list[str]:
        return []

    async def setxattr(self, node: Node, name: str, value: bytes) -> None:
        raise self.refuse("setxattr", node)

    async def removexattr(self, node: Node, name: str) -> None:
        raise self.refuse("removexattr", node)


class NamespaceTree(Tree):
    """A tree whose nodes live in a bucket's inode table (the bucket, ``.s3/``, ``.versions/``)."""

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns

    def unreferenced(self, node: Node) -> None:
        if node.nlookup == 0:
            self.ns.drop(node)

    def entry_node(self, path: str, info: EntryInfo) -> Node:
        return self.ns.resolve(path, info)

    def link_count(self, node: Node) -> int:
        """0 for a file no name leads to any more (unlinked or replaced while open)."""
        return super().link_count(node) if self.ns.attached(node) else 0

    def surplus(self) -> list[tuple[int, str]]:
        out = []
        for node in self.ns.surplus():
            parent_path, name = split(node.path)
            parent = self.ns.node_at(parent_path)
            if parent is not None:
                out.append((parent.inode, name))
        return out

    @property
    def full(self) -> bool:
        return self.ns.full


class ObjectTree(NamespaceTree):
    """A tree whose files are objects, read through the mount's block cache (the bucket, its history)."""

    def __init__(self, s3: S3Client, opts: Config, ns: Namespace, blocks: BlockCache) -> None:
        super().__init__(ns)
        self.s3 = s3
        self.opts = opts
        self.blocks = blocks
        self.nursery: trio.Nursery | None = None  # where readers run their read-ahead

    def start(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery


class SpecialTree(NamespaceTree):
    """A tree reached by a reserved name of the bucket's root (see router.py)."""

    name: str  # the reserved name

    def root_entry(self) -> EntryInfo:
        """The entry of its root directory, as the bucket root's listing shows it."""
        raise NotImplementedError
