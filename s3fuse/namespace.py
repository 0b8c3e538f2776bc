"""Names to entries: the inode table, the metadata cache and when S3 is asked.

Owns the policy of when S3 is asked: a lookup is answered from the metadata cache,
else by one LIST window starting at the name (which also tells file from directory
and caches the neighbours: ``lookupwindow``), and a file's attributes are revalidated
with HeadObject once they are older than the attribute TTL. ``Namespace`` is the only
owner of its ``InodeTable`` and ``MetadataCache``: the adapter, the tree changes and
the directory handles (``dirhandle.DirHandle``, made by ``open_dir``) go through its
methods, so the caches stay true to every change made through the mount.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import pyfuse3
import trio
from cachetools import LRUCache

from .attrindex import INDEX_DIR, PARALLEL_HEADS, SELF, AttributeIndex
from .dirhandle import DirHandle
from .errors import FsError
from .inodes import InodeTable, KernelPageCache, Node
from .lookupwindow import LookupWindows, lookup_window
from .metadata import NEGATIVE, EntryInfo, MetadataCache, directory, from_head
from .names import dir_prefix, file_key, invalid_reason, join, split
from .options import Config
from .reader import ObjectReader
from .s3client import S3Client
from .siblings import SiblingTracker

log = logging.getLogger(__name__)


class Namespace:
    """The names of one bucket's tree (under the mount's prefix): its inodes, its caches, its lookups."""

    def __init__(
        self,
        s3: S3Client,
        opts: Config,
        page_cache: KernelPageCache,
        root: Node | None = None,
    ) -> None:
        """root: the root directory's node (else a new one, the mount's root inode)."""
        if root is None:
            root = Node(pyfuse3.ROOT_INODE, "", directory())
            root.nlookup = 1  # the mount's root is never forgotten
        self.s3 = s3
        self.opts = opts
        self.root_prefix: str = opts.mount.prefix
        self._inodes = InodeTable(root, opts.cache.inode_limit)
        self._meta = MetadataCache(
            opts.cache.attr_ttl, opts.cache.negative_ttl, opts.cache.dir_ttl, opts.cache.metadata_cache_entries
        )
        self._page_cache = page_cache
        self._fill_ended = trio.Event()  # set, and replaced, as each store into the page cache ends
        self.nursery: trio.Nursery | None = None  # for listing pages asked for ahead; set by the mount loop
        self.siblings = SiblingTracker(opts.cache.prefetch_files, ObjectReader.SMALL_OBJECT)
        # directory -> when this mount last changed it: what S3 answered about the directory
        # to a request sent before then may predate the change, and must not be cached
        self._changed: LRUCache[str, float] = LRUCache(maxsize=10_000)
        # directory -> the last lookup window's key range and the names it listed: a name in
        # that range that it did not list is missing too, for --negative-ttl. So 'mv a b'
        # costs one LIST (the window that found 'a' also shows 'b' is free), not two.
        self._windows = LookupWindows(opts.cache.negative_ttl, self.changed_since)
        # Exact attributes for what s3fuse wrote, without a HEAD per entry (attrindex.py). Not for
        # --at: the index says what the objects are now, not then.
        readable = opts.mount.attribute_index and opts.mount.at is None
        self._root_read = False
        self.index = AttributeIndex(
            s3, self.root_prefix, readable, not opts.mount.read_only, opts.cache.metadata_cache_entries
        )

    def internal_names(self, directory_path: str) -> frozenset[str]:
        """Names of the directory that are the mount's own keys, never shown: the bucket root's ``.s3fuse``."""
        return frozenset((INDEX_DIR,)) if directory_path == "" and self.root_prefix == "" else frozenset()

    def changed_since(self, directory_path: str, since: float) -> bool:
        """Whether this mount changed the directory at or after ``since`` (monotonic)."""
        return self._changed.get(directory_path, float("-inf")) >= since

    # ---- inodes

    def node(self, inode: int) -> Node | None:
        """The node of an inode the kernel holds (or a handle keeps), if any."""
        return self._inodes.get(inode)

    def node_at(self, path: str) -> Node | None:
        """The node a name leads to, if the kernel may know it."""
        return self._inodes.by_path(path)

    def own_entry(self, path: str, info: EntryInfo, new_inode: bool = False) -> Node:
        """The node of an entry of the mount's own trees (``.s3/``, ``.versions/``, a time view), with
        exactly these attributes: no cache is asked or told. A new inode if it is new, changed kind or
        ``new_inode``."""
        return self._inodes.resolve(path, info, new_inode=new_inode)

    def page_filler(self, node: Node, etag: str) -> Callable[[int, memoryview], Awaitable[bool]]:
        """What puts bytes of version ``etag`` of node's file in the kernel's page cache, while that is
        safe: the kernel's pages are of that version, a name leads to it and no handle writes to it.
        Its calls return False once it is not. A writer waits for the stores in flight
        (``fills_done``): one after a write would undo the write in the kernel's pages."""

        async def fill(offset: int, data: memoryview) -> bool:
            if node.writers or node.kernel_etag != etag or node.info.etag != etag or not self.attached(node):
                return False
            node.filling += 1
            try:
                return await self._page_cache.store(node.inode, offset, data)
            finally:
                node.filling -= 1
                self._fill_ended.set()
                self._fill_ended = trio.Event()

        return fill

    async def fills_done(self, node: Node) -> None:
        """Wait until no store into node's kernel pages is in flight; the caller then makes it a
        writer (``Node.writers``) before it awaits anything, so that none starts after."""
        while node.filling:
            await self._fill_ended.wait()

    def attached(self, node: Node) -> bool:
        """Whether a name still leads to node (not unlinked, replaced or renamed over)."""
        return self._inodes.attached(node)

    def detach(self, path: str, tree: bool) -> None:
        """Unlink path (and with ``tree`` what is below it) from its nodes, which live on until forgotten."""
        self._inodes.detach(path, tree)

    def forget(self, inode: int, count: int) -> None:
        """The kernel dropped ``count`` references to inode."""
        self._inodes.forget(inode, count)

    def drop(self, node: Node) -> None:
        """Remove a node the kernel holds no reference to."""
        self._inodes.drop(node)

    def writer_gone(self, node: Node) -> None:
        """A file's last writer (a handle, or its background upload) is done with it."""
        self._inodes.writer_gone(node)

    @property
    def full(self) -> bool:
        """The kernel holds ``--inode-limit`` inodes."""
        return self._inodes.full

    def surplus(self) -> list[Node]:
        """Files the kernel should be asked to forget, to hold ``--inode-limit`` inodes again."""
        return self._inodes.surplus()

    # ---- entries

    def resolve(self, path: str, info: EntryInfo) -> Node:
        """The inode for path with the freshest attributes known.

        Attributes older than the node's are ignored (a cached listing must not undo
        a newer HEAD), and so is anything S3 says about a file with unsaved local
        changes; headers known for the same write of the object are kept, since a
        listing does not carry them; a changed object gets a new inode.
        """
        info = self._meta.with_headers(path, info)
        if not info.from_head:
            info = self.index.vouch(*split(path), info) or info
        node = self._inodes.by_path(path)
        if node is not None and node.info.kind == info.kind:
            if node.writers or node.info.fetched_at > info.fetched_at:
                return node
            if (
                node.info.etag is not None
                and info.etag is not None
                and (info.etag != node.info.etag or info.size != node.info.size)
            ):
                # Another version of the object gets another inode: with the kernel's
                # writeback cache on, the kernel keeps its own size for a cached inode.
                # A size that changed under the same ETag is another version too: a server
                # that ignored CopySourceIfMatch (moto does) copied other bytes than expected.
                if node.kernel_etag is not None:
                    self._page_cache.drop(node.inode)  # free the old version's pages
                return self._inodes.resolve(path, info, new_inode=True)
        return self._inodes.resolve(path, info)

    def mark_stale(self, node: Node) -> None:
        """The object changed under an open file: the next open must ask S3 again."""
        node.info = dataclasses.replace(node.info, fetched_at=float("-inf"))  # cached copies stay intact
        self._meta.forget(node.path)
        self._meta.forget_listing(split(node.path)[0])  # or a cached listing would bring the old entry back

    async def lookup(
        self, parent: Node, name: str, listing_ahead: Callable[[], Awaitable[None]] | None = None
    ) -> Node | None:
        """The node at parent/name, or None. ``listing_ahead``: waits for a listing of parent on its
        way (dirprefetch.py), awaited only when the caches do not know the name."""
        if invalid_reason(name) is not None or name in self.internal_names(parent.path):
            # Listings skip such keys; a lookup must too. Without this, a lookup window
            # that ends before 'name/' probes that prefix and turns a name of more than
            # 255 bytes into a directory through which the skipped keys could be read.
            return None
        path = join(parent.path, name)
        node = self._inodes.by_path(path)
        if node is not None and node.writers:  # written here, perhaps not in S3 yet
            return node
        cached = self._meta.get(path)
        if cached is NEGATIVE:
            return None
        if isinstance(cached, EntryInfo):
            return self.resolve(path, cached)
        if listing_ahead is not None:
            await listing_ahead()
        listing = self._meta.get_listing(parent.path)
        if listing is not None:  # a complete listing answers for absent names too
            known = listing.get(name)
            return None if known is None else self.resolve(path, known)
        if self._windows.say_missing(parent.path, name, dir_prefix(self.root_prefix, parent.path) + name):
            return None
        asked_at = time.monotonic()
        info = await self._fetch(parent.path, name, asked_at)
        if self.changed_since(parent.path, asked_at):
            # The directory changed here while S3 answered: this mount's own word wins.
            cached = self._meta.get(path)
            if cached is NEGATIVE:
                return None
            if isinstance(cached, EntryInfo):
                return self.resolve(path, cached)
            return None if info is None else self.resolve(path, info)  # S3's answer, not cached
        if info is None:
            self._meta.put_negative(path)
            return None
        self._meta.put(path, info)  # only fresh answers: a store restarts the cache's TTL
        return self.resolve(path, info)

    async def _fetch(self, parent_path: str, name: str, asked_at: float) -> EntryInfo | None:
        """Ask S3 whether parent/name exists, caching the siblings the answer carries."""
        prefix = dir_prefix(self.root_prefix, parent_path)
        key = prefix + name
        self.index.start_reading(parent_path, self.nursery)  # beside the LIST
        window = await lookup_window(self.s3, prefix, name, self.opts.cache.lookup_window)
        await self.index.read(parent_path)  # done by now, usually
        found = next((info for sibling, info in window.entries + window.uncertain if sibling == name), None)
        current = not self.changed_since(parent_path, asked_at)  # else S3 may predate a change made here
        for sibling, info in window.entries if current else ():
            if sibling != name and sibling not in self.internal_names(parent_path):
                info = self.index.vouch(parent_path, sibling, info) or info
                if not self.needs_head(parent_path, info):
                    self._meta.put(join(parent_path, sibling), info)
        self.siblings.remember_order(parent_path, window.entries)
        if current:
            self._windows.remember(parent_path, window, asked_at)
        covered = window.complete or (window.last_key is not None and window.last_key >= key + "/")
        if not covered:
            # The window ended before 'name/' could appear: ask for that prefix directly.
            probe = await self.s3.list_page(Prefix=key + "/", MaxKeys=1)
            if probe.get("KeyCount", 0) or probe.get("Contents"):
                return directory()
        if found is not None:
            found = self.index.vouch(parent_path, name, found) or found
            if self.needs_head(parent_path, found):
                return await self._head_listed(parent_path, name)
        return found

    def needs_head(self, directory_path: str, info: EntryInfo) -> bool:
        """Whether a listed entry's attributes must come from a HEAD: a file the attribute index does
        not vouch for in a directory that has one, or any file with --posix-metadata."""
        return (
            not info.is_dir
            and not info.from_head
            and (self.opts.mount.posix_metadata or self.index.covers(directory_path))
        )

    async def _head_listed(self, directory_path: str, name: str) -> EntryInfo | None:
        """HEAD a listed file; what it says goes into the directory's attribute index if it has one."""
        info = await self.head(file_key(self.root_prefix, join(directory_path, name)))
        if info is not None and self.index.covers(directory_path):
            self.index.record(directory_path, name, info)
        return info

    async def complete(self, directory_path: str, batch: list[tuple[str, EntryInfo]]) -> list[tuple[str, EntryInfo]]:
        """A listing batch with each file's attributes as exact as known: from the attribute index,
        else (where ``needs_head``) a HEAD, in parallel. A failed HEAD keeps the listing's attributes
        (and logs why) rather than failing a page whose continuation token is already spent."""
        await self.index.read(directory_path)  # usually read already, beside the first page
        out = [(name, self.index.vouch(directory_path, name, info) or info) for name, info in batch]

        async def head(i: int, name: str, limiter: trio.CapacityLimiter) -> None:
            async with limiter:
                try:
                    info = await self._head_listed(directory_path, name)
                except FsError as exc:
                    log.warning("HEAD of %r failed (%s); listing it without its metadata", name, exc)
                    return
            if info is not None:
                out[i] = (name, info)

        limiter = trio.CapacityLimiter(PARALLEL_HEADS)
        async with trio.open_nursery() as nursery:
            for i, (name, info) in enumerate(out):
                if self.needs_head(directory_path, info):
                    nursery.start_soon(head, i, name, limiter)
        return out

    async def head(self, key: str) -> EntryInfo | None:
        """HeadObject as an entry; None if the object is gone."""
        try:
            asked_at = time.monotonic()
            return from_head(await self.s3.call("head_object", Key=key), asked_at)
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    async def revalidate(self, node: Node) -> Node | None:
        """Fresh attributes for a file whose cached ones outlived the TTL; None if it is gone.

        A file unlinked or replaced here keeps its last attributes: no name leads to it in
        S3 any more, and whatever now has its old name is another file."""
        if node.path == "" and not self._root_read:
            self._root_read = True  # the root has no parent to list it: its own index records it
            await self.index.read("")
            node.info = self.index.vouch("", SELF, node.info) or node.info
        if (
            node.info.is_dir
            or node.writers
            or node.info.age() < self.opts.cache.attr_ttl
            or not self._inodes.attached(node)
        ):
            return node
        info = await self.head(file_key(self.root_prefix, node.path))
        if info is None:
            self._meta.forget(node.path)  # not negative: it may have become a directory
            return None
        parent, name = split(node.path)
        if not self.changed_since(parent, info.fetched_at):  # else S3 may predate a change made here
            self._meta.put(node.path, info)
            self._meta.remember_headers(node.path, info)
            if self.index.covers(parent) and self.index.vouch(parent, name, info) is None:
                self.index.record(parent, name, info)  # changed elsewhere: the index learns it
        return self.resolve(node.path, info)

    # ---- changes made through this mount

    def added(self, path: str, info: EntryInfo) -> Node:
        """path now exists with these attributes (created, written or renamed here)."""
        # As fresh as the change: any answer S3 gave to a request sent before it is older,
        # even one that arrives later (a HEAD of the name a rename just replaced).
        info = dataclasses.replace(info, fetched_at=time.monotonic())
        self._meta.put(path, info)
        self._meta.remember_headers(path, info)
        self._update_listing(path, info)
        self.index.record(*split(path), info) if path else self.index.record("", SELF, info)
        return self._inodes.resolve(path, info)

    def writing(self, path: str) -> contextlib.AbstractContextManager[None]:
        """Around a request that writes a new version of path's object (see ``AttributeIndex.writing``)."""
        return self.index.writing(*split(path))

    def removed(self, path: str, is_dir: bool) -> None:
        """path no longer exists; open handles keep their inode."""
        self._inodes.detach(path, tree=is_dir)
        self._forget_name(path, is_dir)

    def moved(self, old: str, new: str, info: EntryInfo) -> Node:
        """An entry (and, for a directory, everything below it) now lives at ``new``."""
        self._meta.forget(new, tree=info.is_dir)
        self._inodes.detach(new, tree=info.is_dir)  # what the rename replaced
        self._inodes.move(old, new, tree=info.is_dir)
        self._forget_name(old, info.is_dir)
        if info.is_dir:
            self.index.forget_tree(old)
            self.index.forget_tree(new)
        return self.added(new, info)

    def unsure(self, path: str) -> None:
        """What is at and below path is not known any more (a rename of it failed half-way):
        the next lookups and listings ask S3."""
        self._meta.forget(path, tree=True)
        parent = split(path)[0]
        self._meta.forget_listing(parent)
        self._changed[parent] = time.monotonic()

    def _forget_name(self, path: str, is_dir: bool) -> None:
        """The caches learn that nothing is at path any more."""
        self._meta.forget(path, tree=is_dir)
        self._meta.put_negative(path)
        self._update_listing(path, None)
        if path:
            self.index.remove(*split(path))

    def _update_listing(self, path: str, info: EntryInfo | None) -> None:
        """Keep a cached listing of the parent true to a change made here.

        Storing it again restarts its TTL: while a directory is being written through
        this mount, lookups of new names are answered without a LIST.
        """
        if not path:
            return  # the root: no parent lists it (touch or chmod of the mount point)
        parent, name = split(path)
        self._changed[parent] = time.monotonic()
        listing = self._meta.get_listing(parent)
        if listing is None:
            return
        if info is None:
            listing.pop(name, None)
        else:
            listing[name] = info
        self._meta.put_listing(parent, listing)

    def known_empty(self, path: str) -> None:
        """The directory at path was just created here: its listing is known, and empty."""
        self._meta.put_listing(path, {})

    # ---- directories

    def cached_listing(self, path: str) -> dict[str, EntryInfo] | None:
        """A complete listing of the directory younger than ``--dir-ttl``, if one is cached."""
        return self._meta.get_listing(path)

    def subdirectories(self, path: str) -> int | None:
        """How many directories a cached complete listing of path holds (None: none is cached)."""
        return self._meta.subdirectories(path)

    def known_missing(self, path: str) -> bool:
        """Whether nothing is at path, as far as the caches know (removed here, or found missing)."""
        return self._meta.get(path) is NEGATIVE

    def listed(self, directory_path: str, entries: Sequence[tuple[str, EntryInfo]]) -> None:
        """Entries of a listing page of the directory (asked for after this mount's last change there)."""
        for name, info in entries:
            self._meta.put(join(directory_path, name), info)

    def listing_fits(self, count: int) -> bool:
        """Whether a listing of ``count`` entries is small enough to be cached whole."""
        return self._meta.listing_fits(count)

    def listed_whole(self, directory_path: str, entries: list[tuple[str, EntryInfo]]) -> None:
        """The directory's complete listing (which ``listing_fits``), for ``--dir-ttl``."""
        self._meta.put_listing(directory_path, dict(entries))
        self.siblings.remember_order(directory_path, entries)

    def open_dir(
        self,
        path: str,
        reserved: Sequence[tuple[str, EntryInfo | None]] = (),
        local: Sequence[tuple[str, EntryInfo]] = (),
        on_end: Callable[[], None] | None = None,
    ) -> DirHandle:
        """A handle on the listing at path; ``reserved`` names are the mount's own (listed when info is
        given); ``local`` entries exist here and perhaps not in S3 yet (files being written);
        ``on_end`` is called when a read first reaches the end."""
        return DirHandle(self, path, reserved, local, on_end)
