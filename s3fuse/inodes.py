"""Inode numbers for the paths the kernel currently knows.

Owns the two-way map inode <-> path and the kernel's lookup counts: an inode lives
from the first lookup (or readdirplus entry) until the kernel forgets it, so memory
follows what the kernel caches, not the size of the bucket.
"""

from __future__ import annotations

import pyfuse3

from .metadata import EntryInfo
from .metrics import METRICS
from .names import at_or_below


class Node:
    """One inode: its path, the kernel's lookup count and its last known attributes."""

    __slots__ = ("info", "inode", "kernel_etag", "nlookup", "path", "writers")

    def __init__(self, inode: int, path: str, info: EntryInfo) -> None:
        self.inode = inode
        self.path = path
        self.nlookup = 0
        self.info = info
        # The ETag whose bytes the kernel page cache may hold for this inode.
        self.kernel_etag: str | None = None
        # Handles open for writing: while any is, the local attributes win over S3's.
        self.writers = 0


class InodeTable:
    """inode <-> Node, path -> Node."""

    def __init__(self, root_info: EntryInfo, root_inode: int = pyfuse3.ROOT_INODE) -> None:
        """New inodes are numbered up from root_inode (an all-buckets mount gives each bucket a range)."""
        self._by_inode: dict[int, Node] = {}
        self._by_path: dict[str, Node] = {}
        self.root_inode = root_inode
        self._next = root_inode + 1
        root = Node(root_inode, "", root_info)
        root.nlookup = 1  # the root is never forgotten
        self._by_inode[root.inode] = root
        self._by_path[""] = root
        METRICS.add_gauges(self.gauges)

    def gauges(self) -> dict[str, float]:
        return {"s3fuse_inodes": len(self._by_inode)}

    def get(self, inode: int) -> Node | None:
        return self._by_inode.get(inode)

    def by_path(self, path: str) -> Node | None:
        return self._by_path.get(path)

    def resolve(self, path: str, info: EntryInfo, new_inode: bool = False) -> Node:
        """The node for a path with fresh attributes; a new inode if it is new, changed kind or ``new_inode``."""
        node = self._by_path.get(path)
        if node is not None and node.info.kind == info.kind and not new_inode:
            node.info = info
            return node
        node = Node(self._next, path, info)
        self._next += 1
        self._by_inode[node.inode] = node
        self._by_path[path] = node  # an old node of another kind lives on until forgotten
        return node

    def detach(self, path: str, tree: bool) -> None:
        """Unlink path (and with ``tree`` what is below it) from its nodes.

        The kernel may still hold the nodes; they live on under their inode until forgotten.
        """
        for node in self._nodes(path, tree):
            del self._by_path[node.path]

    def move(self, old: str, new: str, tree: bool) -> None:
        """Rename: the nodes at (and with ``tree`` below) ``old`` keep their inodes under ``new``."""
        for node in self._nodes(old, tree):
            del self._by_path[node.path]
            node.path = new + node.path[len(old) :]
            self._by_path[node.path] = node

    def _nodes(self, path: str, tree: bool) -> list[Node]:
        if not tree:
            node = self._by_path.get(path)
            return [node] if node is not None else []
        return [node for p, node in self._by_path.items() if at_or_below(p, path)]

    def forget(self, inode: int, count: int) -> None:
        node = self._by_inode.get(inode)
        if node is None or inode == self.root_inode:
            return
        node.nlookup -= count
        if node.nlookup <= 0 and not node.writers:  # a file waiting for its upload keeps its name
            self.drop(node)

    def writer_gone(self, node: Node) -> None:
        """A file's last writer (a handle, or its background upload) is done with it."""
        node.writers -= 1
        if node.writers == 0 and node.nlookup <= 0 and node.inode != self.root_inode:
            self.drop(node)

    def drop(self, node: Node) -> None:
        """Remove a node the kernel holds no reference to."""
        self._by_inode.pop(node.inode, None)
        if self._by_path.get(node.path) is node:
            del self._by_path[node.path]
