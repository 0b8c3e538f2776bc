"""Reading one open object: ranged GETs pinned to the ETag seen at open.

Owns the access-pattern detection of one file handle. Sequential reads are served
from whole blocks in the shared block cache, with a read-ahead window of parallel
GETs that doubles up to ``max_readahead``; random reads fetch just the bytes asked
for. Every GET carries If-Match, so a replaced object fails the read (EIO) instead
of mixing two versions. A reader given a ``version_id`` reads that version of the
object (GetObject VersionId, for ``.versions/``).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Hashable

import pyfuse3
import trio

from .blockcache import BlockCache
from .s3client import S3Client, S3Error

log = logging.getLogger(__name__)


class ObjectReader:
    # Blocks fetched ahead once reads are sequential (from the second one on); the window
    # doubles from here.
    INITIAL_READAHEAD_BLOCKS = 2
    SMALL_OBJECT = 1 << 20
    STREAMING_FIRST_READ = 256 << 10

    def __init__(
        self,
        s3: S3Client,
        cache: BlockCache,
        nursery: trio.Nursery,
        key: str,
        size: int,
        etag: str | None,
        block_size: int,
        max_readahead: int,
        on_changed: Callable[[], None],
        version_id: str | None = None,
    ) -> None:
        self.s3 = s3
        self.cache = cache
        self.nursery = nursery
        self.key = key
        self.size = size
        self.etag = etag
        self.version_id = version_id
        self.block_size = block_size
        self.max_readahead_blocks = max(0, max_readahead // block_size)
        self.on_changed = on_changed  # called when S3 says the object is not the one opened
        self._expected_offset = 0
        self._sequential_reads = 0
        self._readahead_blocks = self.INITIAL_READAHEAD_BLOCKS

    def prefetch_small_object(self) -> None:
        """Start fetching an object of one small block now, before the kernel asks.

        Called at open: the GET then overlaps the open reply and the first read
        request. Limited to small objects, so opening without reading costs little.
        """
        if 0 < self.size <= self.SMALL_OBJECT and self._cache_key(0) not in self.cache:
            self.nursery.start_soon(self._prefetch, 0)

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        if offset >= self.size or size <= 0:
            return b""
        size = min(size, self.size - offset)
        # The kernel's own read-ahead may deliver sequential requests slightly out of
        # order, so 'sequential' allows one block of slack around the expected offset.
        sequential = offset == 0 or abs(offset - self._expected_offset) <= self.block_size
        self._expected_offset = offset + size
        try:
            if sequential:
                self._sequential_reads += 1
                return await self._read_blocks(offset, size)
            self._sequential_reads = 0
            self._readahead_blocks = self.INITIAL_READAHEAD_BLOCKS
            return await self._read_range(offset, size)
        except S3Error as exc:
            raise self._fuse_error(exc) from exc

    async def _read_blocks(self, offset: int, size: int) -> bytes | memoryview:
        bs = self.block_size
        first, last = offset // bs, (offset + size - 1) // bs
        # One small read is no pattern ('head -c 1' fetches one block), but the kernel's
        # first read for a streaming reader (dd, cp, cat) is already large.
        if self._sequential_reads > 1 or size >= self.STREAMING_FIRST_READ:
            self._schedule_readahead(last)
        parts = [await self._block(i) for i in range(first, last + 1)]
        start = offset - first * bs
        if len(parts) == 1:  # the common case: a view into the cached block, no copy
            return memoryview(parts[0])[start : start + size]
        return b"".join(parts)[start : start + size]

    def _schedule_readahead(self, last: int) -> None:
        nblocks = (self.size + self.block_size - 1) // self.block_size
        end = min(nblocks, last + 1 + min(self._readahead_blocks, self.max_readahead_blocks))
        for index in range(last + 1, end):
            if self._cache_key(index) not in self.cache:
                self.nursery.start_soon(self._prefetch, index)
        self._readahead_blocks = min(self._readahead_blocks * 2, self.max_readahead_blocks)

    async def _prefetch(self, index: int) -> None:
        try:
            await self._block(index)
        except S3Error as exc:  # the reader that needs this block will see the error itself
            log.debug("read-ahead of %r block %d failed: %s", self.key, index, exc)

    def _cache_key(self, index: int) -> Hashable:
        if self.version_id is None:
            return (self.key, self.etag, index)  # the form writeback.py and mutations.py fill in too
        # Apart from the current object's blocks: without ETags, two versions would share them.
        return (self.key, self.etag, index, self.version_id)

    async def _block(self, index: int) -> bytes:
        start = index * self.block_size
        end = min(start + self.block_size, self.size)
        return await self.cache.get(self._cache_key(index), lambda: self._get(start, end))

    async def _read_range(self, offset: int, size: int) -> bytes | memoryview:
        cached = self._cached_slice(offset, size)
        return cached if cached is not None else await self._get(offset, offset + size)

    def _cached_slice(self, offset: int, size: int) -> memoryview | None:
        """The bytes from a cached block, if one block holds them all."""
        cached = self.cache.peek(self._cache_key(offset // self.block_size))
        start = offset % self.block_size
        if cached is None or start + size > len(cached):
            return None
        return memoryview(cached)[start : start + size]

    async def fetch_range(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of this version of the object, cached block or one ranged GET."""
        cached = self._cached_slice(start, end - start)
        return bytes(cached) if cached is not None else await self._get(start, end)

    async def _get(self, start: int, end: int) -> bytes:
        params = {"Range": f"bytes={start}-{end - 1}"}
        if self.etag:
            params["IfMatch"] = self.etag  # with a VersionId too: the 'null' version can be overwritten
        if self.version_id is not None:
            params["VersionId"] = self.version_id
        _, data = await self.s3.get_bytes(self.key, **params)
        if len(data) != end - start:
            raise S3Error(errno.EIO, "ShortRead", f"got {len(data)} of {end - start} bytes at offset {start}")
        return data

    def _fuse_error(self, exc: S3Error) -> pyfuse3.FUSEError:
        if exc.errno in (errno.ESTALE, errno.ENOENT):
            self.on_changed()
            log.warning("%r changed or vanished in S3 while open (%s); reopen the file to read it again", self.key, exc)
            return pyfuse3.FUSEError(errno.EIO)
        if exc.code == "InvalidObjectState":
            log.warning(
                "%r is archived (GLACIER or DEEP_ARCHIVE) and not restored; restore a copy first, e.g. "
                "'setfattr -n s3.restore -v 7 FILE' for 7 days, and read it once 'getfattr -n s3.restore FILE' "
                'shows ongoing-request="false"',
                self.key,
            )
            return pyfuse3.FUSEError(exc.errno)
        log.warning("reading %r failed: %s", self.key, exc)
        return pyfuse3.FUSEError(exc.errno)
