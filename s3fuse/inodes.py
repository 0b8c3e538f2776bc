"""Inode numbers for the paths the kernel currently knows.

Owns the two-way map inode <-> path and the kernel's lookup counts: an inode lives
from the first lookup (or readdirplus entry) until the kernel forgets it, so memory
follows what the kernel caches, not the size of the bucket. The kernel forgets only
under memory pressure, so after ``ls -l`` of a million keys it would hold a million
inodes; past ``limit``, the least recently looked-up files are the ones the mount
asks it to forget (``surplus``).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import OrderedDict

import pyfuse3
import trio

from .metadata import EntryInfo
from .metrics import METRICS
from .names import at_or_below

log = logging.getLogger(__name__)


class KernelPageCache:
    """The kernel's page cache of the mount's files: dropped when S3 has another version, and
    filled with bytes the daemon has (``ObjectReader``: an object a random reader fetched whole).

    Both notifications run in worker threads of ``nursery``: they are sent while a request
    may hold the kernel's inode lock, or a page lock while it waits for a read's reply, so
    inline they would wait for the request that waits for them.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery

    def drop(self, inode: int) -> None:
        """Drop the inode's cached pages, soon."""
        self.nursery.start_soon(trio.to_thread.run_sync, self._drop, inode)

    @staticmethod
    def _drop(inode: int) -> None:
        with contextlib.suppress(OSError):  # the kernel forgot the inode meanwhile: nothing cached
            pyfuse3.invalidate_inode(inode)

    async def store(self, inode: int, offset: int, data: bytes | memoryview) -> bool:
        """Put bytes into the inode's cached pages; False if the kernel would not (it forgot the inode)."""
        try:
            await trio.to_thread.run_sync(pyfuse3.notify_store, inode, offset, data)
        except OSError as exc:
            log.debug("storing pages of inode %d: %s", inode, exc)
            return False
        METRICS.count("s3fuse_page_cache_filled_bytes_total", len(data))
        return True


class KernelForgetting:
    """Threads that tell the kernel directory entries are invalid, so it forgets them.

    The kernel takes the directory's lock for each notification, and a listing holds
    it (shared) while it reads each page: few notifications get through per page, and
    one thread (pyfuse3's invalidate_entry_async) falls far behind a listing.
    """

    THREADS = 32

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[int, bytes] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def forget(self, parent_inode: int, name: bytes) -> None:
        if not self._threads:
            self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.THREADS)]
            for thread in self._threads:
                thread.start()
        self._queue.put((parent_inode, name))

    def _run(self) -> None:
        while (entry := self._queue.get()) is not None:
            try:
                pyfuse3.invalidate_entry(*entry)
            except OSError as exc:  # the kernel forgot it already (ENOENT), or the mount is gone
                log.debug("invalidating entry %r of inode %d: %s", entry[1], entry[0], exc)

    def stop(self) -> None:
        """Unmounting: drop what is queued and wait for the threads (a notification sent after
        pyfuse3 closed its session would go to a freed one). Blocks up to a few seconds."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=10)  # one waiting for a directory's lock is freed by the unmount


class Node:
    """One inode: its path, the kernel's lookup count and its last known attributes."""

    __slots__ = ("filling", "info", "inode", "kernel_etag", "nlookup", "opened", "path", "writers")

    def __init__(self, inode: int, path: str, info: EntryInfo) -> None:
        self.inode = inode
        self.path = path
        self.nlookup = 0
        self.info = info
        # The ETag whose bytes the kernel page cache may hold for this inode.
        self.kernel_etag: str | None = None
        # Handles open for writing: while any is, the local attributes win over S3's.
        self.writers = 0
        self.opened = 0  # open handles of any kind: the kernel is not asked to forget such a file
        self.filling = 0  # stores into its kernel page cache in flight (Namespace.page_filler)


class InodeTable:
    """inode <-> Node, path -> Node."""

    def __init__(self, root: Node, limit: int = 0) -> None:
        """New inodes are numbered up from the root's (an all-buckets mount gives each bucket a range);
        ``limit``: how many inodes the kernel should hold at most (0: no limit). The root is
        never forgotten here: one that can be (a bucket's directory) is counted by its owner."""
        self._by_inode: dict[int, Node] = {}
        self._by_path: dict[str, Node] = {}
        self.root_inode = root.inode
        self._next = root.inode + 1
        self.limit = limit
        # Files, least recently looked up first: the ones the kernel is asked to forget.
        self._recent: OrderedDict[int, Node] = OrderedDict()
        self._released: set[int] = set()  # asked to forget, not forgotten yet: not counted
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
        if node is None or node.info.kind != info.kind or new_inode:
            node = Node(self._next, path, info)
            self._next += 1
            self._by_inode[node.inode] = node
            self._by_path[path] = node  # an old node of another kind lives on until forgotten
        node.info = info
        if not info.is_dir:
            self._recent[node.inode] = node
            self._recent.move_to_end(node.inode)
            self._released.discard(node.inode)
        return node

    @property
    def full(self) -> bool:
        """The kernel holds ``limit`` inodes, counting those it was asked to forget and has not yet."""
        return 0 < self.limit <= len(self._by_inode)

    def surplus(self) -> list[Node]:
        """Files the kernel should forget to hold ``limit`` inodes again: down to 90% of it, the
        least recently looked up first. Never a directory (a shell's working directory would
        turn into '(deleted)'), an open file or one waiting for its upload."""
        held = len(self._by_inode) - len(self._released)
        if not self.limit or held <= self.limit:
            return []
        excess = held - self.limit * 9 // 10
        victims: list[Node] = []
        for _ in range(len(self._recent)):
            if len(victims) >= excess:
                break
            inode, node = self._recent.popitem(last=False)
            if self._by_inode.get(inode) is not node or node.nlookup <= 0 or self._by_path.get(node.path) is not node:
                continue  # forgotten, never the kernel's, or its name is another's now
            if node.opened or node.writers:
                self._recent[inode] = node  # in use: after the others
                continue
            victims.append(node)
            self._released.add(inode)
        return victims

    def detach(self, path: str, tree: bool) -> None:
        """Unlink path (and with ``tree`` what is below it) from its nodes.

        The kernel may still hold the nodes; they live on under their inode until forgotten.
        """
        for node in self._nodes(path, tree):
            del self._by_path[node.path]

    def attached(self, node: Node) -> bool:
        """Whether a name still leads to node (not unlinked, replaced or renamed over)."""
        return self._by_path.get(node.path) is node

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
        if self._recent.get(node.inode) is node:
            del self._recent[node.inode]
        self._released.discard(node.inode)
        if self._by_path.get(node.path) is node:
            del self._by_path[node.path]
