"""A byte-bounded LRU cache of object blocks, shared by all open files.

Owns the cached bytes and the fetches in flight: two readers that want the same
block wait for one GET. Blocks are keyed by (key, ETag, index), so a new version of
an object can never be served from an old version's blocks; the buckets of an
all-buckets mount share one cache through ``scoped`` views, whose keys never meet.
With a disk cache (diskcache.py), a block not in memory is looked for on disk
before it is fetched, and a fetched block is kept on disk too.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Hashable

import trio
from cachetools import LRUCache

from .diskcache import DiskCache
from .metrics import METRICS


class _Fetch:
    __slots__ = ("data", "done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None


class BlockCache:
    def __init__(self, max_bytes: int, disk: DiskCache | None = None) -> None:
        self.disk = disk
        self._lru: LRUCache[Hashable, bytes] = LRUCache(maxsize=max(1, max_bytes), getsizeof=len)
        self._inflight: dict[Hashable, _Fetch] = {}
        self._scope: Hashable = None
        METRICS.add_gauges(self.gauges)

    def gauges(self) -> dict[str, float]:
        return {"s3fuse_block_cache_bytes": self._lru.currsize}

    def scoped(self, scope: Hashable) -> BlockCache:
        """A view on the same memory whose keys are apart from every other scope's (one per bucket).

        ETags are not unique across buckets: some servers derive them from other than the content.
        """
        view = copy.copy(self)
        view._scope = scope
        return view

    def __contains__(self, key: Hashable) -> bool:
        return (self._scope, key) in self._lru or (self._scope, key) in self._inflight

    def peek(self, key: Hashable) -> bytes | None:
        return self._lru.get((self._scope, key))

    def put(self, key: Hashable, data: bytes) -> None:
        """Cache bytes known without a fetch (just uploaded)."""
        if len(data) <= self._lru.maxsize:
            self._lru[(self._scope, key)] = data

    def discard(self, key: Hashable) -> None:
        """Let the block go from memory (a fetch in flight still ends in the cache)."""
        self._lru.pop((self._scope, key), None)

    async def get(
        self, block: Hashable, fetch: Callable[[], Awaitable[bytes]], disk_name: Hashable | None = None
    ) -> bytes:
        """The block's bytes, from the cache, from a fetch already in flight, or fetched now.

        disk_name: the block's identity on disk (DiskCache.path_of), for a block that may be kept there.
        """
        key = (self._scope, block)
        data = self._lru.get(key)
        if data is not None:
            METRICS.lookup("block", True)
            return data
        pending = self._inflight.get(key)
        # joining a fetch in flight costs no request: a hit
        METRICS.lookup("block", pending is not None)
        if pending is None:
            pending = _Fetch()
            self._inflight[key] = pending
            disk = self.disk if disk_name is not None else None
            from_disk = False
            try:
                pending.data = await disk.read(disk_name) if disk is not None else None
                from_disk = pending.data is not None
                if pending.data is None:
                    pending.data = await fetch()
                if len(pending.data) <= self._lru.maxsize:
                    self._lru[key] = pending.data
            except BaseException as exc:
                pending.error = exc
                raise
            finally:
                del self._inflight[key]
                pending.done.set()
            if disk is not None and not from_disk:
                disk.keep(disk_name, pending.data)
            return pending.data
        await pending.done.wait()
        if isinstance(pending.error, trio.Cancelled):
            return await self.get(block, fetch)  # the fetching task was cancelled, not us
        if pending.error is not None:
            raise pending.error
        assert pending.data is not None
        return pending.data
