"""Inode numbers for the paths the kernel currently knows.

Owns the two-way map inode <-> path and the kernel's lookup counts: an inode lives
from the first lookup (or readdirplus entry) until the kernel forgets it, so memory
follows what the kernel caches, not the size of the bucket.
"""

from __future__ import annotations

import pyfuse3

from .metadata import EntryInfo


class Node:
    """One inode: its path, the kernel's lookup count and its last known attributes."""

    __slots__ = ("info", "inode", "kernel_etag", "nlookup", "path")

    def __init__(self, inode: int, path: str, info: EntryInfo) -> None:
        self.inode = inode
        self.path = path
        self.nlookup = 0
        self.info = info
        # The ETag whose bytes the kernel page cache may hold for this inode.
        self.kernel_etag: str | None = None


class InodeTable:
    """inode <-> Node, path -> Node."""

    def __init__(self, root_info: EntryInfo) -> None:
        self._by_inode: dict[int, Node] = {}
        self._by_path: dict[str, Node] = {}
        self._next = pyfuse3.ROOT_INODE + 1
        root = Node(pyfuse3.ROOT_INODE, "", root_info)
        root.nlookup = 1  # the root is never forgotten
        self._by_inode[root.inode] = root
        self._by_path[""] = root

    def get(self, inode: int) -> Node | None:
        return self._by_inode.get(inode)

    def by_path(self, path: str) -> Node | None:
        return self._by_path.get(path)

    def resolve(self, path: str, info: EntryInfo) -> Node:
        """The node for a path with fresh attributes; a new inode if it is new or changed kind."""
        node = self._by_path.get(path)
        if node is not None and node.info.is_dir == info.is_dir:
            node.info = info
            return node
        node = Node(self._next, path, info)
        self._next += 1
        self._by_inode[node.inode] = node
        self._by_path[path] = node  # an old node of another kind lives on until forgotten
        return node

    def forget(self, inode: int, count: int) -> None:
        node = self._by_inode.get(inode)
        if node is None or inode == pyfuse3.ROOT_INODE:
            return
        node.nlookup -= count
        if node.nlookup <= 0:
            self.drop(node)

    def drop(self, node: Node) -> None:
        """Remove a node the kernel holds no reference to."""
        del self._by_inode[node.inode]
        if self._by_path.get(node.path) is node:
            del self._by_path[node.path]
