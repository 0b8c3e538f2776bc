"""Reading one open object: ranged GETs pinned to the ETag seen at open.

Owns the access-pattern detection of one file handle. Sequential reads of objects
over 1 MiB are served by streams (stream.py): parallel GETs of consecutive segments
of ``SEGMENT`` bytes (``NEAR_SEGMENTS`` times that where one connection carries much:
transfer.ConnectionRate), each served chunk by chunk as it arrives and let go of once
read. How many run at once (the window) starts at ``INITIAL_STREAMS`` and doubles
while the throughput the reader gets grows with it, up to ``max_readahead`` and the
reader's share of the mount's transfer budget; as many again behind them are on standby
(GET sent, body not read) until the reader passes a segment and admits the first of them.
Sequential reads of small objects, and what the streams
cannot serve, come from whole blocks in the shared block cache, with a read-ahead
window of parallel GETs that doubles up to ``max_readahead``; random reads fetch
just the bytes asked for. Every GET carries If-Match, so a replaced object fails
the read (EIO) instead of mixing two versions. A reader given a ``version_id``
reads that version of the object (GetObject VersionId, for ``.versions/``).

With a disk cache (diskcache.py), an object that fits in it is read by blocks only,
never by streams, so every byte read is kept on disk: sequential reads with the
read-ahead window, and a random read fetches its blocks and starts fetching the rest
of the object in the background (as s3fs-fuse does), after which reads run at local
disk speed. Once all of it is there, it is put in the kernel's page cache too
(``fill``), from which the kernel then serves every read of it without asking the
daemon: fio's random 4 KiB reads of a 128 MiB object went from 700 a second, each a
FUSE request the daemon answered from disk in 1.4 ms of CPU, to the page cache's speed.
Without a disk cache, objects up to ``random_fetch_max`` read at random are fetched whole
the same way, into the page cache only. When the kernel lets those pages go (fio drops
them before each pass), the next read that reaches the daemon puts them all back
(``_start_fetching_rest``). fsbench, S3-like network, 128 MiB, fio's random 4 KiB reads
over 10 s: 4,000 a second before with a disk cache, 79,000 after; without one 3,300
before, 46,000 after (s3fs-fuse 32,000), at 64 GETs of 2 MiB per pass of fio.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable

import trio

from .blockcache import BlockCache
from .errors import FsError, S3Error
from .s3client import S3Client
from .stream import BodyStream

log = logging.getLogger(__name__)


class _Rest(enum.Enum):
    IDLE = "idle"
    FETCHING = "fetching"
    FILLED = "filled"
    DONE = "done"


_meminfo: tuple[float, int] = (-1.0, 0)  # (when read, MemAvailable bytes): /proc/meminfo at most once a second


def _memory_allows(size: int) -> bool:
    """Whether the machine has ``size`` bytes of memory available (MemAvailable); True where unknown."""
    global _meminfo
    now = time.monotonic()
    if now - _meminfo[0] >= 1.0:
        available = -1
        with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
        _meminfo = (now, available)
    return _meminfo[1] < 0 or _meminfo[1] >= size


class ObjectReader:
    # Blocks fetched ahead once reads are sequential (from the second one on); the window
    # doubles from here.
    INITIAL_READAHEAD_BLOCKS = 2
    SMALL_OBJECT = 1 << 20
    STREAMING_FIRST_READ = 256 << 10
    SEQUENTIAL_SLACK = 4 << 20
    # Streamed segments: one GET each, read whole ahead of the reader (so the GETs after the
    # one it reads from run at full speed rather than stall), then let go of. On an S3-like
    # network (20 ms to the first byte, 100 MiB/s per connection) one GET of 8 MiB takes
    # 100 ms, so 8 of them at once carry about 640 MiB/s, what raw boto3 gets with 8 threads.
    SEGMENT = 8 << 20
    # Streams at first (and the default --read-ahead's 8 at most). fsbench, S3-like network, cold
    # read of 128 MiB, two runs: 4 at first took 0.47-0.48 s (1.7-1.8x raw boto3's 8 threads),
    # 8 took 0.37-0.39 s (1.4-1.5x): the first round is the slowest, and a round of 4 only then
    # doubled. A reader that stops after its first reads (head) closes its streams, which ends
    # their GETs: it wastes what arrived meanwhile, not 64 MiB.
    INITIAL_STREAMS = 8
    # A round is a window's worth of segments read. The window doubles after a round in which
    # the reader waited for bytes (the GETs, not the reader, were the bottleneck); when the round
    # after a doubling was not this much faster, it goes back and stays. On 127.0.0.1 with two
    # cores, 8 GETs at once are no faster than 4 (the server's CPU is the limit) and cost it CPU.
    GROWTH = 1.25
    # Segments whose GETs wait on standby behind the window, in windows: when the reader passes a
    # segment, the one admitted in its place has its headers, and bytes in the connection's
    # buffers, already. fsbench, S3-like network, cold read of 128 MiB, five runs each with the
    # code before as a target beside it: 0.365-0.40 s against 0.385-0.445 s (raw 0.29-0.32 s).
    STANDBY = 1
    # Segments this many times SEGMENT long where transfer.ConnectionRate says near (a server that
    # answers within 10 ms, or one connection carrying 384 MiB/s or more: on the same machine or
    # network): then a GET's fixed cost, not the connection, is the limit. On 127.0.0.1 (fsbench's
    # moto; one mount, four cold reads of 256 MiB with dd, three rounds side by side): 8 MiB
    # segments 0.44-0.59 s a read, 32 MiB ones 0.31-0.41 s, the code before the parallel segments
    # (two GETs at once, of 16 MiB doubling) 0.27-0.44 s. Each stream still reads at most SEGMENT
    # ahead of the reader, so the budget is the same.
    NEAR_SEGMENTS = 4
    # Blocks fetched at once in the background fetch of a randomly read object kept on disk.
    REST_WORKERS = 2
    # Without a disk cache, the object read at random is fetched in ranges of MEMORY_PIECE, this
    # many at a time: each GET's body is in memory whole until it is in the page cache. fsbench
    # (20 ms a request, 100 MiB/s a connection, 128 MiB, fio's random reads): 2 blocks of 8 MiB
    # at a time 26,000 reads/s (s3fs-fuse 32,000); 4 at a time 48,000 (s3fs-fuse 41,000) but a
    # daemon peak RSS of 183 MiB; 8 ranges of 2 MiB hold half of that.
    MEMORY_PIECE = 2 << 20
    MEMORY_WORKERS = 8
    # Bytes a store into the kernel's page cache carries: a writer waits for at most one (fills_done).
    FILL_PIECE = 1 << 20
    # The kernel dropped pages it was given (a read of them reached the daemon): given again only while
    # the machine has this many times the object's size available, so a kernel short of memory is not
    # made to evict what it just chose to keep.
    REFILL_MEMORY_FACTOR = 4

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
        fill: Callable[[int, memoryview], Awaitable[bool]] | None = None,
        random_fetch_max: int = 0,
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
        self.fill = fill  # puts bytes in the kernel's page cache of the file; False once it may not
        self.random_fetch_max = random_fetch_max  # objects up to this size read at random are fetched whole
        self._expected_offset = 0
        self._sequential_reads = 0
        self._contiguous_reads = 0  # each starting where the one before ended: streams start on these
        self._readahead_blocks = self.INITIAL_READAHEAD_BLOCKS
        self._kept_from = 0  # on disk: the first block a sequential reader may still want from memory
        # Segments streamed ahead of a sequential reader, as many as the window
        self._streams: deque[BodyStream] = deque()
        self.max_streams = max(1, max_readahead // self.SEGMENT)
        self._window = min(self.INITIAL_STREAMS, self.max_streams)
        self._growing = True  # until a larger window brought no more throughput
        self._grown_from = 0  # the window before the last doubling (0: none since the last round)
        self._round = _Round(0.0, self._window)  # started again when streams start
        self._last_rate = 0.0  # bytes/s of the last round
        self._stream_failed = False  # after a failed stream, ranged GETs only (they retry and report)
        self._refused = False  # the last read wanted streams and got none (no room in the budget)
        # Read by blocks, each kept on disk; never without an ETag, which is what tells versions apart there.
        disk = cache.disk
        self.on_disk = disk is not None and bool(etag) and disk.holds(size)
        # The background fetch of the whole object: IDLE (not started, or failed), FETCHING, FILLED (all of
        # it went into the kernel's page cache), or DONE (no page cache to fill, or a store was refused).
        self._rest = _Rest.IDLE
        self._closed = False

    def close(self) -> None:
        """The handle is closed: stop streaming (and fetching the rest of the object)."""
        self._closed = True
        self._close_streams()

    def prefetch_small_object(self) -> None:
        """Start fetching an object of one small block now, before the kernel asks.

        Called at open: the GET then overlaps the open reply and the first read
        request. Limited to small objects, so opening without reading costs little.
        Not without an ETag: a file written here and not in S3 yet (rsync's temporary file
        under --write-back, opened again before its upload) has no object to fetch; its
        prefetch was a 404 per file of ``rsync -a``.
        """
        if self.etag and 0 < self.size <= self.SMALL_OBJECT and self._cache_key(0) not in self.cache:
            self.nursery.start_soon(self._prefetch, 0)

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        if offset >= self.size or size <= 0:
            return b""
        size = min(size, self.size - offset)
        # The kernel's own read-ahead may deliver sequential requests slightly out of
        # order, so 'sequential' allows a few of its reads of slack around the expected offset.
        sequential = offset == 0 or abs(offset - self._expected_offset) <= self.SEQUENTIAL_SLACK
        contiguous = offset == self._expected_offset
        self._contiguous_reads = self._contiguous_reads + 1 if contiguous else 0
        self._expected_offset = offset + size
        try:
            if self.on_disk:
                # A random read; or any read once all of it was filled: the kernel let pages go, all again from disk.
                if not sequential or self._rest is _Rest.FILLED:
                    self._start_fetching_rest()
                if sequential:
                    self._sequential_reads += 1
                    return await self._read_blocks(offset, size)
                self._sequential_reads = 0
                return await self._read_random_on_disk(offset, size)
            # A small read near the last one but not next to it, in an object of many blocks,
            # is likely a random one: it gets just its bytes, not a block.
            if sequential and (contiguous or size >= self.STREAMING_FIRST_READ or self.size <= self.block_size):
                self._sequential_reads += 1
                streamed = await self._read_stream(offset, size)
                if streamed is not None:
                    return streamed
                # A read just behind the streams, or one the transfer budget had no room for now:
                # just its bytes (no block read-ahead beside the streams, no memory beyond the budget).
                if self._streams or self._refused:
                    return await self._read_range(offset, size)
                return await self._read_blocks(offset, size)
            self._sequential_reads = 0
            self._close_streams()
            self._readahead_blocks = self.INITIAL_READAHEAD_BLOCKS
            if self.fill is not None and self.size <= self.random_fetch_max:
                self._start_fetching_rest()  # the kernel's page cache then serves the reads that follow
            return await self._read_range(offset, size)
        except FsError as exc:
            raise self._read_error(exc)  # noqa: B904 (a new error has exc as its context; or it is exc)

    async def _read_stream(self, offset: int, size: int) -> bytes | memoryview | None:
        """The bytes from the reader's streams (started here when reads become a stream), or None."""
        streams = self._streams
        self._refused = False
        # Streams a chunk behind the read are done (the slack: kernel reads overtake each other).
        while streams and streams[0].end + streams[0].chunk <= offset:
            self._passed(streams.popleft())
        if streams and not streams[0].start <= offset < streams[-1].end:
            self._close_streams()  # the reader went on elsewhere in the file
        if not streams:
            # The first read of a streaming reader is large; a small one may be 'head -c' or 'file',
            # and small reads near each other may be random ones.
            streaming = self._contiguous_reads > 1 or size >= self.STREAMING_FIRST_READ
            if not streaming or self._stream_failed or self.size - offset <= self.SMALL_OBJECT:
                return None
            self._round = _Round(trio.current_time(), self._window)
        self._stream_ahead(offset)
        self._refused = not streams  # no room in the transfer budget (or for a stream) now
        if self._refused:
            return None
        pieces = []
        position, end = offset, min(offset + size, self.size)
        while position < end:  # more than one piece only when a read spans two segments
            stream = next((s for s in streams if s.start <= position < s.end), None)
            data = await stream.read(position, end - position) if stream is not None else None
            if data is None:  # a read behind the streams; or one broke off (or went idle) and they start again
                if stream is not None and stream.broke_off:
                    self._stream_failed = stream.failed  # then ranged GETs only: they retry and report errors
                    self._close_streams()
                return None
            pieces.append(data)
            position += len(data)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _stream_ahead(self, offset: int) -> None:
        """Keep the window's worth of segments streaming (as far as the transfer budget and the
        mount's stream limit let), admitting those on standby first, and as many after them on standby."""
        streams = self._streams
        reading = 0  # the admitted streams from the read's on
        behind = 0  # streams the read is past, kept for the slack
        for stream in streams:
            if stream.end <= offset:
                behind += 1
                continue
            if reading == self._window or not stream.admit():
                break
            reading += 1
        start = streams[-1].end if streams else offset
        # Standby GETs only once the first segment's bytes flow: sent beside the window's first
        # GETs, they slowed them down (the server served 16 requests where 8 were needed first).
        flowing = bool(streams) and streams[0].flowing
        while len(streams) - behind < self._window * (1 + self.STANDBY) and start < self.size:
            standby = (bool(streams) and not streams[-1].admitted) or reading == self._window
            if standby and not flowing:
                return
            end = min(start + self._segment_length(), self.size)
            stream = BodyStream.open(
                self.nursery,
                self.s3,
                self.key,
                start,
                end,
                self.SEGMENT,
                owner=self,
                standby=standby,
                **self._get_params(),
            )
            if stream is None:
                return
            reading += not standby
            streams.append(stream)
            start = end

    def _segment_length(self) -> int:
        """The bytes of the next segment: long ones where one connection carries more than a reader needs."""
        return self.SEGMENT * (self.NEAR_SEGMENTS if self.s3.connection_rate.near else 1)

    def _passed(self, stream: BodyStream) -> None:
        """The reader is past this stream's segment: let it go; at the end of a round, double the
        window if the GETs were the bottleneck and got faster, or take back a doubling that did not help."""
        stream.close()
        done = self._round
        done.segments += 1
        done.bytes += stream.end - stream.start
        done.waited = done.waited or stream.waits > 0
        if done.segments < done.length:
            return
        now = trio.current_time()
        rate = done.bytes / max(now - done.started, 1e-6)
        gained = rate >= self._last_rate * self.GROWTH
        if self._grown_from and not gained:  # more GETs at once brought no more: back, and stay
            self._window, self._growing = self._grown_from, False
        self._grown_from = 0
        if self._growing and done.waited and gained and self._window < self.max_streams:
            self._grown_from, self._window = self._window, min(2 * self._window, self.max_streams)
        self._last_rate = rate
        self._round = _Round(now, self._window)

    def _close_streams(self) -> None:
        while self._streams:
            self._streams.popleft().close()
        self.s3.transfer.leave(self)

    async def _read_blocks(self, offset: int, size: int) -> bytes | memoryview:
        bs = self.block_size
        first, last = offset // bs, (offset + size - 1) // bs
        # One small read is no pattern ('head -c 1' fetches one block), but the kernel's
        # first read for a streaming reader (dd, cp, cat) is already large.
        if self._sequential_reads > 1 or size >= self.STREAMING_FIRST_READ:
            self._schedule_readahead(last)
        parts = [await self._block(i) for i in range(first, last + 1)]
        if self.on_disk:
            self._drop_behind(offset)
        start = offset - first * bs
        if len(parts) == 1:  # the common case: a view into the cached block, no copy
            return memoryview(parts[0])[start : start + size]
        return b"".join(parts)[start : start + size]

    def _drop_behind(self, offset: int) -> None:
        """Blocks on disk that a sequential reader is past (by more than the kernel's slack) leave
        memory: the block cache would otherwise fill with them beside the read-ahead in flight, and
        evict a block read ahead before it is read. fsbench, S3-like network, a disk-cache mount's cold
        read of 128 MiB (two runs, side by side): 9 GETs (one block fetched twice) and 0.77-0.78 s before,
        8 GETs and 0.52-0.54 s after; peak RSS of the read and fio after it 180-181 MiB before, 160-161 after."""
        behind = max(0, offset - self.SEQUENTIAL_SLACK) // self.block_size
        for index in range(self._kept_from, behind):
            self.cache.discard(self._cache_key(index))
        self._kept_from = behind  # a read that went back keeps the blocks from there until passed again

    def _schedule_readahead(self, last: int) -> None:
        """Fetch the blocks after ``last`` in the background, up to the read-ahead window. Each holds
        its bytes of the mount's transfer budget until it is in the block cache, as a stream's segment
        does, so the read-ahead of all files together stays within the budget: a mount with a disk
        cache reads big objects this way, each reader up to --read-ahead at once."""
        bs = self.block_size
        nblocks = (self.size + bs - 1) // bs
        end = min(nblocks, last + 1 + min(self._readahead_blocks, self.max_readahead_blocks))
        for index in range(last + 1, end):
            if self._cache_key(index) in self.cache:
                continue
            nbytes = min(bs, self.size - index * bs)
            if not self.s3.transfer.try_take(self, nbytes):
                break  # the next read asks again
            self.nursery.start_soon(self._prefetch, index, nbytes)
        self._readahead_blocks = min(self._readahead_blocks * 2, self.max_readahead_blocks)

    async def _prefetch(self, index: int, budgeted: int = 0) -> None:
        """Fetch a block into the cache; then give back the ``budgeted`` bytes of the transfer budget."""
        try:
            await self._block(index)
        except FsError as exc:  # the reader that needs this block will see the error itself
            log.debug("read-ahead of %r block %d failed: %s", self.key, index, exc)
        except Exception:  # a background task: anything uncaught would end the daemon
            log.exception("read-ahead of %r block %d failed", self.key, index)
        finally:
            if budgeted:
                self.s3.transfer.give_back(self, budgeted)

    async def _read_random_on_disk(self, offset: int, size: int) -> bytes | memoryview:
        """A random read of an object kept on disk: from memory, else just its chunks from the disk
        cache (not the whole block into memory), else its whole blocks fetched (and kept)."""
        disk = self.cache.disk
        assert disk is not None
        pieces: list[bytes | memoryview] = []
        position, end = offset, offset + size
        while position < end:
            index = position // self.block_size
            base = index * self.block_size
            stop = min(base + self.block_size, end)
            key = self._cache_key(index)
            cached = self.cache.peek(key)
            piece = memoryview(cached)[position - base : stop - base] if cached is not None else None
            if piece is None and key not in self.cache:  # not being fetched either
                piece = await disk.read_range(self._disk_name(index), position - base, stop - base)
            if piece is None:
                piece = memoryview(await self._block(index))[position - base : stop - base]
            pieces.append(piece)
            position = stop
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _start_fetching_rest(self) -> None:
        """On a random read: fetch the whole object in the background, unless that is under way or done.

        Once all of it is in the kernel's page cache, a read that still reaches the daemon means the
        kernel let pages go: fio drops the file's pages (POSIX_FADV_DONTNEED) before each pass over
        it, and then ran at 50 reads a second (a ranged GET each) for the rest of its 10 s, after a
        first pass at 11,000. So it starts again, from the disk cache if there is one, else from S3
        (the object's size more of transfer each time), while memory allows (``_memory_allows``)."""
        if self._rest is _Rest.FETCHING or self._rest is _Rest.DONE:
            return
        if self._rest is _Rest.FILLED and not _memory_allows(self.REFILL_MEMORY_FACTOR * self.size):
            return
        self._rest = _Rest.FETCHING
        self.nursery.start_soon(self._fetch_rest)

    async def _fetch_rest(self) -> None:
        """Fetch all of the object, a few pieces at a time, each with bytes of the mount's transfer
        budget (as a streamed segment takes), until all are or the handle closes, and put it in the
        kernel's page cache (``fill``) piece by piece as they come. With a disk cache the pieces are
        blocks, kept on disk; those the caches hold already cost no GET, and with no page cache to
        fill, those on disk are skipped. Without one, ``MEMORY_PIECE``s by ``MEMORY_WORKERS``."""
        budget = self.s3.transfer
        disk = self.cache.disk if self.on_disk else None
        piece = self.block_size if disk is not None else self.MEMORY_PIECE
        count = (self.size + piece - 1) // piece
        pieces = iter(range(count))
        refused = False  # a store into the page cache was refused: the file changed, or is written
        filled = 0  # pieces put in the page cache

        async def fill(start: int, data: bytes) -> bool:
            nonlocal refused
            refused = not await self._fill_at(start, data)
            return not refused

        async def from_disk(index: int) -> bool:
            """Fill the page cache with a block the disk cache holds, ``FILL_PIECE`` at a time (not the
            whole block into memory, nor into the block cache, whose other blocks it would push out);
            with no page cache to fill, only whether it is there. False if it is not (or is damaged)."""
            nonlocal filled
            assert disk is not None
            name = self._disk_name(index)
            if self.fill is None:
                return await trio.to_thread.run_sync(disk.has, name)
            start, end = self._span(index)
            for offset in range(0, end - start, self.FILL_PIECE):
                data = await disk.read_range(name, offset, min(offset + self.FILL_PIECE, end - start))
                if data is None:
                    return False
                if not await fill(start + offset, data):
                    return True
            filled += 1
            return True

        async def worker(user: object) -> None:
            nonlocal filled
            try:
                for index in pieces:
                    if self._closed or refused:
                        return
                    data = self.cache.peek(self._cache_key(index)) if disk is not None else None
                    if data is None and disk is not None and await from_disk(index):
                        continue
                    if data is None:
                        await budget.take(user, piece)
                        try:
                            if self._closed:  # while it waited for bytes
                                return
                            start, end = index * piece, min((index + 1) * piece, self.size)
                            # without a disk cache, to the page cache only: not to the block cache as well
                            data = await self._block(index) if disk is not None else await self._get(start, end)
                        finally:
                            budget.give_back(user, piece)
                    if self.fill is not None and await fill(index * piece, data):
                        filled += 1
            except FsError as exc:  # a read of those bytes will see the error itself
                log.debug("background fetch of %r failed: %s", self.key, exc)
            except Exception:  # a background task: anything uncaught would end the daemon
                log.exception("background fetch of %r failed", self.key)
            finally:
                budget.leave(user)

        async with trio.open_nursery() as workers:
            for _ in range(self.REST_WORKERS if disk is not None else self.MEMORY_WORKERS):
                workers.start_soon(worker, object())  # each its own user of the budget: one piece, one share
        if refused or self.fill is None:
            self._rest = _Rest.DONE
        elif filled == count:
            self._rest = _Rest.FILLED
        else:
            self._rest = _Rest.IDLE  # closed, or a GET failed: a later random read tries again

    async def _fill_at(self, start: int, data: bytes) -> bool:
        """Put bytes at ``start`` in the kernel's page cache, ``FILL_PIECE`` at a time; False if some may not be."""
        assert self.fill is not None
        view = memoryview(data)
        for offset in range(0, len(view), self.FILL_PIECE):
            if self._closed or not await self.fill(start + offset, view[offset : offset + self.FILL_PIECE]):
                return False
        return True

    def _cache_key(self, index: int) -> Hashable:
        if self.version_id is None:
            return (self.key, self.etag, index)  # the form writeback.py and mutations.py fill in too
        # Apart from the current object's blocks: without ETags, two versions would share them.
        return (self.key, self.etag, index, self.version_id)

    def _span(self, index: int) -> tuple[int, int]:
        """The byte range of block ``index``."""
        start = index * self.block_size
        return start, min(start + self.block_size, self.size)

    async def _block(self, index: int) -> bytes:
        start, end = self._span(index)
        disk_name = self._disk_name(index) if self.on_disk else None
        return await self.cache.get(self._cache_key(index), lambda: self._get(start, end), disk_name)

    def _disk_name(self, index: int) -> Hashable:
        """The block's identity in the disk cache: its byte range, so mounts of other block sizes never meet."""
        return (self.s3.bucket, self.key, self.etag, self.version_id, *self._span(index))

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

    def _get_params(self) -> dict[str, str]:
        params = {}
        if self.etag:
            params["IfMatch"] = self.etag  # with a VersionId too: the 'null' version can be overwritten
        if self.version_id is not None:
            params["VersionId"] = self.version_id
        return params

    async def _get(self, start: int, end: int) -> bytes:
        _, data = await self.s3.get_bytes(self.key, Range=f"bytes={start}-{end - 1}", **self._get_params())
        if len(data) != end - start:
            raise S3Error(errno.EIO, "ShortRead", f"got {len(data)} of {end - start} bytes at offset {start}")
        return data

    def _read_error(self, exc: FsError) -> FsError:
        """What a read that failed with exc returns (logged here, where the key is known)."""
        if exc.errno in (errno.ESTALE, errno.ENOENT):
            self.on_changed()
            log.warning("%r changed or vanished in S3 while open (%s); reopen the file to read it again", self.key, exc)
            return FsError(errno.EIO, "ChangedWhileOpen", str(exc), logged=True)
        if exc.code == "InvalidObjectState":
            log.warning(
                "%r is archived (GLACIER or DEEP_ARCHIVE) and not restored; restore a copy first, e.g. "
                "'setfattr -n s3.restore -v 7 FILE' for 7 days, and read it once 'getfattr -n s3.restore FILE' "
                'shows ongoing-request="false"',
                self.key,
            )
        else:
            log.warning("reading %r failed: %s", self.key, exc)
        exc.logged = True
        return exc


class _Round:
    """One round of a reader's streams: ``length`` segments read, and how."""

    __slots__ = ("bytes", "length", "segments", "started", "waited")

    def __init__(self, started: float, length: int) -> None:
        self.started = started
        self.length = length
        self.segments = 0
        self.bytes = 0
        self.waited = False  # the reader waited for bytes: the GETs were slower than it
