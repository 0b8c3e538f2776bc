"""Names to entries: lookup, attribute revalidation and directory listing.

Owns the policy of when S3 is asked: a lookup is answered from the metadata cache,
else by one LIST window starting at the name (which also tells file from directory
and caches the neighbours), and a file's attributes are revalidated with HeadObject
once they are older than the attribute TTL. Readdir streams ListObjectsV2 pages
through a ``DirHandle`` and hands out inodes as entries are accepted by the kernel.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import time
from collections.abc import Callable, Sequence

import trio
from cachetools import LRUCache, TTLCache

from .errors import FsError
from .inodes import InodeTable, Node
from .listing import DirectoryStream, lookup_window
from .metadata import NEGATIVE, EntryInfo, MetadataCache, directory, from_head
from .names import dir_prefix, file_key, invalid_reason, join, split
from .reader import ObjectReader
from .s3client import S3Client
from .siblings import SiblingTracker

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LookupWindowSeen:
    start_after: str  # the window listed the keys after this one
    last_key: str | None  # up to this one; None: to the end of the directory
    listed: frozenset[str]  # the names it found
    asked_at: float


class Namespace:
    def __init__(
        self,
        s3: S3Client,
        opts: argparse.Namespace,
        invalidate: Callable[[int], None],
        root_inode: int,
    ) -> None:
        self.s3 = s3
        self.opts = opts
        self.root_prefix: str = opts.prefix
        self.inodes = InodeTable(directory(), root_inode, opts.inode_limit)
        self.meta = MetadataCache(opts.attr_ttl, opts.negative_ttl, opts.dir_ttl, opts.metadata_cache_entries)
        self._invalidate = invalidate  # drops an inode's kernel page cache, asynchronously
        self.nursery: trio.Nursery | None = None  # for listing pages asked for ahead; set by the mount loop
        self.siblings = SiblingTracker(opts.prefetch_files, ObjectReader.SMALL_OBJECT)
        # directory -> when this mount last changed it: what S3 answered about the directory
        # to a request sent before then may predate the change, and must not be cached
        self._changed: LRUCache[str, float] = LRUCache(maxsize=10_000)
        # directory -> the last lookup window's key range and the names it listed: a name in
        # that range that it did not list is missing too, for --negative-ttl. So 'mv a b'
        # costs one LIST (the window that found 'a' also shows 'b' is free), not two.
        self._windows: TTLCache[str, LookupWindowSeen] = TTLCache(
            maxsize=256, ttl=max(opts.negative_ttl, 1e-3), timer=time.monotonic
        )

    def changed_since(self, directory_path: str, since: float) -> bool:
        return self._changed.get(directory_path, float("-inf")) >= since

    # ---- entries

    def resolve(self, path: str, info: EntryInfo) -> Node:
        """The inode for path with the freshest attributes known.

        Attributes older than the node's are ignored (a cached listing must not undo
        a newer HEAD), and so is anything S3 says about a file with unsaved local
        changes; headers known for the same write of the object are kept, since a
        listing does not carry them; a changed object gets a new inode.
        """
        info = self.meta.with_headers(path, info)
        node = self.inodes.by_path(path)
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
                    self._invalidate(node.inode)  # free the old version's pages
                return self.inodes.resolve(path, info, new_inode=True)
        return self.inodes.resolve(path, info)

    def mark_stale(self, node: Node) -> None:
        """The object changed under an open file: the next open must ask S3 again."""
        node.info = dataclasses.replace(node.info, fetched_at=float("-inf"))  # cached copies stay intact
        self.meta.forget(node.path)
        self.meta.forget_listing(split(node.path)[0])  # or a cached listing would bring the old entry back

    async def lookup(self, parent: Node, name: str) -> Node | None:
        if invalid_reason(name) is not None:
            # Listings skip such keys; a lookup must too. Without this, a lookup window
            # that ends before 'name/' probes that prefix and turns a name of more than
            # 255 bytes into a directory through which the skipped keys could be read.
            return None
        path = join(parent.path, name)
        node = self.inodes.by_path(path)
        if node is not None and node.writers:  # written here, perhaps not in S3 yet
            return node
        cached = self.meta.get(path)
        if cached is NEGATIVE:
            return None
        if isinstance(cached, EntryInfo):
            return self.resolve(path, cached)
        listing = self.meta.get_listing(parent.path)
        if listing is not None:  # a complete listing answers for absent names too
            known = listing.get(name)
            return None if known is None else self.resolve(path, known)
        if self._window_says_missing(parent.path, name):
            return None
        asked_at = time.monotonic()
        info = await self._fetch(parent.path, name, asked_at)
        if self.changed_since(parent.path, asked_at):
            # The directory changed here while S3 answered: this mount's own word wins.
            cached = self.meta.get(path)
            if cached is NEGATIVE:
                return None
            if isinstance(cached, EntryInfo):
                return self.resolve(path, cached)
            return None if info is None else self.resolve(path, info)  # S3's answer, not cached
        if info is None:
            self.meta.put_negative(path)
            return None
        self.meta.put(path, info)  # only fresh answers: a store restarts the cache's TTL
        return self.resolve(path, info)

    async def _fetch(self, parent_path: str, name: str, asked_at: float) -> EntryInfo | None:
        """Ask S3 whether parent/name exists, caching the siblings the answer carries."""
        prefix = dir_prefix(self.root_prefix, parent_path)
        key = prefix + name
        window = await lookup_window(self.s3, prefix, name, self.opts.lookup_window)
        found = next((info for sibling, info in window.entries + window.uncertain if sibling == name), None)
        current = not self.changed_since(parent_path, asked_at)  # else S3 may predate a change made here
        for sibling, info in window.entries if current else ():
            if sibling != name and (info.is_dir or not self.opts.posix_metadata):
                self.meta.put(join(parent_path, sibling), info)
        self.siblings.remember_order(parent_path, window.entries)
        if current and self.opts.negative_ttl > 0:
            listed = frozenset(sibling for sibling, _ in window.entries + window.uncertain)
            end = None if window.complete else window.last_key
            self._windows[parent_path] = LookupWindowSeen(window.start_after, end, listed, asked_at)
        covered = window.complete or (window.last_key is not None and window.last_key >= key + "/")
        if not covered:
            # The window ended before 'name/' could appear: ask for that prefix directly.
            probe = await self.s3.list_page(Prefix=key + "/", MaxKeys=1)
            if probe.get("KeyCount", 0) or probe.get("Contents"):
                return directory()
        if found is not None and not found.is_dir and self.opts.posix_metadata:
            return await self.head(key)
        return found

    def _window_says_missing(self, parent_path: str, name: str) -> bool:
        """Whether a recent lookup window of the directory covered the name, as a file and as a
        directory ('name/'), without listing it, and nothing changed there since."""
        seen = self._windows.get(parent_path)
        if seen is None or name in seen.listed or self.changed_since(parent_path, seen.asked_at):
            return False
        key = dir_prefix(self.root_prefix, parent_path) + name
        return seen.start_after < key and (seen.last_key is None or seen.last_key >= key + "/")

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
        if node.info.is_dir or node.writers or node.info.age() < self.opts.attr_ttl or not self.inodes.attached(node):
            return node
        info = await self.head(file_key(self.root_prefix, node.path))
        if info is None:
            self.meta.forget(node.path)  # not negative: it may have become a directory
            return None
        if not self.changed_since(split(node.path)[0], info.fetched_at):  # else S3 may predate a change made here
            self.meta.put(node.path, info)
            self.meta.remember_headers(node.path, info)
        return self.resolve(node.path, info)

    # ---- changes made through this mount

    def added(self, path: str, info: EntryInfo) -> Node:
        """path now exists with these attributes (created, written or renamed here)."""
        # As fresh as the change: any answer S3 gave to a request sent before it is older,
        # even one that arrives later (a HEAD of the name a rename just replaced).
        info = dataclasses.replace(info, fetched_at=time.monotonic())
        self.meta.put(path, info)
        self.meta.remember_headers(path, info)
        self._update_listing(path, info)
        return self.inodes.resolve(path, info)

    def writer_gone(self, node: Node) -> None:
        """One of the file's writers (a writable handle, or its background upload) is done with it."""
        self.inodes.writer_gone(node)

    def removed(self, path: str, is_dir: bool) -> None:
        """path no longer exists; open handles keep their inode."""
        self.inodes.detach(path, tree=is_dir)
        self._forget_name(path, is_dir)

    def moved(self, old: str, new: str, info: EntryInfo) -> Node:
        """An entry (and, for a directory, everything below it) now lives at ``new``."""
        self.meta.forget(new, tree=info.is_dir)
        self.inodes.detach(new, tree=info.is_dir)  # what the rename replaced
        self.inodes.move(old, new, tree=info.is_dir)
        self._forget_name(old, info.is_dir)
        return self.added(new, info)

    def unsure(self, path: str) -> None:
        """What is at and below path is not known any more (a rename of it failed half-way):
        the next lookups and listings ask S3."""
        self.meta.forget(path, tree=True)
        parent = split(path)[0]
        self.meta.forget_listing(parent)
        self._changed[parent] = time.monotonic()

    def _forget_name(self, path: str, is_dir: bool) -> None:
        """The caches learn that nothing is at path any more."""
        self.meta.forget(path, tree=is_dir)
        self.meta.put_negative(path)
        self._update_listing(path, None)

    def _update_listing(self, path: str, info: EntryInfo | None) -> None:
        """Keep a cached listing of the parent true to a change made here.

        Storing it again restarts its TTL: while a directory is being written through
        this mount, lookups of new names are answered without a LIST.
        """
        if not path:
            return  # the root: no parent lists it (touch or chmod of the mount point)
        parent, name = split(path)
        self._changed[parent] = time.monotonic()
        listing = self.meta.get_listing(parent)
        if listing is None:
            return
        if info is None:
            listing.pop(name, None)
        else:
            listing[name] = info
        self.meta.put_listing(parent, listing)

    # ---- directories

    def open_dir(
        self,
        node: Node,
        reserved: Sequence[tuple[str, EntryInfo | None]] = (),
        local: Sequence[tuple[str, EntryInfo]] = (),
    ) -> DirHandle:
        """A handle on node's listing; ``reserved`` names are the mount's own (listed when info is
        given); ``local`` entries exist here and perhaps not in S3 yet (files being written)."""
        return DirHandle(self, node.path, reserved, local)


class DirHandle:
    """One open directory: a window of streamed entries addressed by their index.

    The kernel asks for entries from an offset (the index after the last one it
    accepted); entries before it are dropped, so memory is one page, not the
    directory. Seeking back (rewinddir) restarts the listing.
    """

    def __init__(
        self,
        ns: Namespace,
        path: str,
        reserved: Sequence[tuple[str, EntryInfo | None]] = (),
        local: Sequence[tuple[str, EntryInfo]] = (),
    ) -> None:
        self.ns = ns
        self.path = path
        # Names of the mount's control directories: keys of the same name are hidden.
        self.shown = [(name, info) for name, info in reserved if info is not None] + list(local)
        self.hidden = {name for name, _ in reserved}
        self.local = {name for name, _ in local}  # listed already, whatever S3 says of them
        self._restart()

    def _restart(self) -> None:
        cached = self.ns.meta.get_listing(self.path)
        listed = [entry for entry in cached.items() if entry[0] not in self.local] if cached is not None else []
        self.entries: list[tuple[str, EntryInfo]] = self.shown + listed
        self.base = 0  # index of entries[0]
        self.stream = None if cached is not None else self._new_stream()
        self.started = time.monotonic()
        # Small directories are kept whole for the dir TTL; None once too large.
        self.collected: list[tuple[str, EntryInfo]] | None = (
            [entry for entry in self.shown if entry[0] in self.local] if self.stream else None
        )

    def _new_stream(self) -> DirectoryStream:
        return DirectoryStream(self.ns.s3, dir_prefix(self.ns.root_prefix, self.path), nursery=self.ns.nursery)

    async def entry(self, index: int) -> tuple[str, EntryInfo] | None:
        """Entry number ``index`` of the directory, or None past its end."""
        if index < self.base:
            self._restart()
        while index >= self.base + len(self.entries):
            if self.stream is None or self.stream.done:
                return None
            batch = self._without_hidden(await self.stream.next_batch())
            if self.ns.opts.posix_metadata:
                batch = await self._with_metadata(batch)
            self._remember(batch)
            # Drop what the kernel has consumed; keep the unconsumed tail.
            consumed = min(index - self.base, len(self.entries))
            self.entries = self.entries[consumed:] + batch
            self.base += consumed
        return self.entries[index - self.base]

    def _without_hidden(self, batch: list[tuple[str, EntryInfo]]) -> list[tuple[str, EntryInfo]]:
        """The batch without keys named like the mount's control directories, each logged.

        Such a key cannot be reached (the name leads to the control directory), so it
        is reported like the keys whose names cannot be file names.
        """
        out = []
        for name, info in batch:
            if name in self.local:
                continue
            if name in self.hidden:
                key = dir_prefix(self.ns.root_prefix, self.path) + name + ("/" if info.is_dir else "")
                log.warning("skipping key %r: the mount's %s/ directory hides it", key, name)
            else:
                out.append((name, info))
        return out

    def changed_since_listed(self) -> bool:
        """Whether this mount changed the directory since the listing began (then S3's pages
        may predate the change, and ``gone`` tells the names removed meanwhile)."""
        return self.ns.changed_since(self.path, self.started)

    def gone(self, name: str) -> bool:
        """Whether a listed name was removed here after the listing began (not to be shown)."""
        return self.ns.meta.get(join(self.path, name)) is NEGATIVE

    def _remember(self, batch: list[tuple[str, EntryInfo]]) -> None:
        if self.changed_since_listed():
            self.collected = None  # S3 listed the directory as it was before a change made here
            return
        for name, info in batch:
            self.ns.meta.put(join(self.path, name), info)
        if self.collected is not None:
            self.collected.extend(batch)
            if not self.ns.meta.listing_fits(len(self.collected)):
                self.collected = None
        if self.stream is not None and self.stream.done and self.collected is not None:
            self.ns.meta.put_listing(self.path, dict(self.collected))
            self.ns.siblings.remember_order(self.path, self.collected)
            self.collected = None

    async def _with_metadata(self, batch: list[tuple[str, EntryInfo]]) -> list[tuple[str, EntryInfo]]:
        """--posix-metadata: HEAD every file of the batch, in parallel.

        A failed HEAD keeps the listing's attributes (and logs why) rather than
        failing a page whose continuation token is already spent.
        """
        out = list(batch)

        async def head(i: int, name: str) -> None:
            key = file_key(self.ns.root_prefix, join(self.path, name))
            try:
                info = await self.ns.head(key)
            except FsError as exc:
                log.warning("HEAD %r failed (%s); listing it without its metadata", key, exc)
                return
            if info is not None:
                out[i] = (name, info)

        async with trio.open_nursery() as nursery:
            for i, (name, info) in enumerate(batch):
                if not info.is_dir:
                    nursery.start_soon(head, i, name)
        return out
