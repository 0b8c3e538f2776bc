"""One ranged GET that feeds a sequential reader as its bytes arrive.

Owns a GET of one segment of an object, the worker thread that reads its body in
chunks, and the chunks the thread has read and the reader not yet passed. A GET whose
body is read whole before its first byte is served makes the reader wait for all of
it, and holds all of it in memory until the block cache lets go; a stream's first
chunk is served as soon as it arrives, and each chunk is let go once the reader is
past it. So segments can be long (each GET costs botocore and the server about as
much CPU as a few MiB of body): the thread reads at most ``window`` bytes ahead of
the reader, and drops the GET, freeing its connection, when the reader has not asked
for more for ``IDLE_TIMEOUT`` seconds. A stream's window is reserved from the mount's
``TransferBudget`` (transfer.py) before its GET starts and given back when it is
closed, or when its reader has not asked for anything for ``IDLE_TIMEOUT`` seconds
(then its chunks go too), so streamed bytes in memory stay within the budget; and a
mount runs at most ``S3Client.streams`` streams at once (each holds a connection).

A stream may also start on standby (``standby=True``): its GET is sent and its
headers come back, but its thread reads none of the body (which waits in the
connection's buffers, not in the daemon's memory) until ``admit`` takes its window
from the budget and a stream slot. A reader keeps the GETs of its next segments on
standby, so the segment it admits when it passes one already has its first bytes
on the way instead of a request's latency ahead of it. Standby streams take slots of
their own (``S3Client.standby``), so they never keep another file's reader from
its streams.

A stream only ever serves what it has: a read outside its segment, behind its chunks,
or past where it failed is answered with ``None``, and the caller reads those bytes
with ranged GETs, which carry the retries and the error reporting.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Hashable
from typing import Any

import outcome
import trio

from .s3client import S3Client

log = logging.getLogger(__name__)


class BodyStream:
    # Most FUSE reads are 1 MiB (the kernel's largest) and fall inside one chunk: served
    # as a view of it, without a copy. Larger chunks wake the event loop less often.
    CHUNK = 4 << 20
    # The first chunk is one FUSE read's worth: the reader starts as soon as that arrived, not 4 MiB.
    FIRST_CHUNK = 1 << 20
    IDLE_TIMEOUT = 10.0
    MEASURED = 4 << 20  # segments from this long tell the connection's rate (transfer.ConnectionRate)

    def __init__(
        self,
        s3: S3Client,
        key: str,
        start: int,
        end: int,
        window: int,
        owner: Hashable | None,
        standby: bool,
        params: dict[str, Any],
    ) -> None:
        """Bytes [start, end) of ``key``, window's worth charged to ``owner`` in the transfer
        budget (by default the stream itself); params: GetObject's (IfMatch, VersionId) without Range."""
        self.s3 = s3
        self.owner = self if owner is None else owner
        self.key = key
        self.start = start
        self.end = end
        self._kwargs = s3.params("get_object", Key=key, Range=f"bytes={start}-{end - 1}", **params)
        self._chunks: deque[tuple[int, bytes]] = deque()
        self._received = start  # every byte below this has arrived
        self._arrival = trio.Event()
        # A window of at least 4 chunks: the chunk behind the reader that is kept, the one it
        # reads, one that read may reach into, and one arriving.
        self.chunk = max(64 << 10, min(self.CHUNK, window // 4))
        self._capacity = max(4, window // self.chunk)
        self.admitted = not standby  # its thread may read: it holds its window and a stream slot
        self._stood_by = standby
        self._reading = 0.0  # seconds the thread spent in the body's reads
        # chunks the thread may read ahead (none before it is admitted)
        self._free_chunks = threading.Semaphore(self._capacity if self.admitted else 0)
        self.reserved = min(end - start, self._capacity * self.chunk)  # of the transfer budget
        self._closed = False
        self._released = trio.Event()  # the chunks, the budget and the stream slot were let go of
        self._finished = trio.Event()  # the thread ended
        self._idle = False  # the reader stopped asking, so the GET and the chunks were dropped
        self._last_read = trio.current_time()
        self.ended = False  # no more chunks will come: the last arrived, or the GET failed or was closed
        self.waits = 0  # reads that waited for bytes to arrive: the reader is faster than this GET

    @classmethod
    def open(
        cls,
        nursery: trio.Nursery,
        s3: S3Client,
        key: str,
        start: int,
        end: int,
        window: int,
        owner: Hashable | None = None,
        standby: bool = False,
        **params: Any,
    ) -> BodyStream | None:
        """A running stream; None when the transfer budget has no room for its window (for
        ``owner``, by default the stream itself) or the mount's streams are all taken. On
        standby: None when the mount's standby slots are all taken."""
        stream = cls(s3, key, start, end, window, owner, standby, params)
        if standby:
            try:
                s3.standby.acquire_on_behalf_of_nowait(stream)
            except trio.WouldBlock:
                return None
        elif not stream._take_slot():
            return None
        try:
            s3.limiter.acquire_on_behalf_of_nowait(stream)  # for its thread, as every S3 call's
        except trio.WouldBlock:
            stream._let_go()
            return None
        # The thread starts here, not in a task: trio runs the tasks started together in any order,
        # and a reader's first segment then had its GET sent last of 8 (its first bytes 110 ms after
        # open instead of 60, on fsbench's S3-like network).
        token = trio.lowlevel.current_trio_token()
        pump, pumped = functools.partial(stream._pump, token), functools.partial(stream._pumped, token)
        trio.lowlevel.start_thread_soon(pump, pumped)
        nursery.start_soon(stream._watch)
        return stream

    def _take_slot(self) -> bool:
        """Take the window from the transfer budget and a stream slot, if both are there."""
        if not self.s3.transfer.try_take(self.owner, self.reserved):
            return False
        try:
            self.s3.streams.acquire_on_behalf_of_nowait(self)
        except trio.WouldBlock:
            self.s3.transfer.give_back(self.owner, self.reserved)
            return False
        return True

    def admit(self) -> bool:
        """Let a standby stream read its body, if the budget and a stream slot allow; whether it may."""
        if not self.admitted and not self._released.is_set() and self._take_slot():
            self.s3.standby.release_on_behalf_of(self)
            self.admitted = True
            self._free_chunks.release(self._capacity)
        return self.admitted

    @property
    def flowing(self) -> bool:
        """Its first bytes arrived."""
        return self._received > self.start

    @property
    def broke_off(self) -> bool:
        """It ended before its last byte, or let go of its chunks for an idle reader; and not
        because it was closed."""
        return self.ended and (self._received < self.end or self._idle) and not self._closed

    @property
    def failed(self) -> bool:
        """It broke off with an error (not for an idle reader)."""
        return self.broke_off and not self._idle

    def close(self) -> None:
        """Let go of the chunks; the thread drops the GET at its next chunk."""
        self._closed = True
        self._let_go()

    def _let_go(self) -> None:
        if not self._released.is_set():
            self._released.set()
            self._chunks.clear()
            self._free_chunks.release()  # wake the thread, if it waits for the reader
            if self.admitted:
                self.s3.streams.release_on_behalf_of(self)
                self.s3.transfer.give_back(self.owner, self.reserved)
            else:
                self.s3.standby.release_on_behalf_of(self)

    async def read(self, offset: int, size: int) -> bytes | memoryview | None:
        """Bytes [offset, offset + size) clipped to the segment, once they arrived; None if it cannot give them."""
        end = min(offset + size, self.end)
        if not self.start <= offset < self.end or not self.admitted:
            return None
        self._last_read = trio.current_time()
        # One chunk behind the read is kept: the kernel's read-ahead requests may overtake each other.
        self._drop_before(offset - self.chunk)
        held_from = self._chunks[0][0] if self._chunks else self._received
        if offset < held_from or end > held_from + self._capacity * self.chunk:
            return None
        if self._received < end:
            self.waits += 1
        while self._received < end:
            if self.ended:
                return None
            await self._arrival.wait()
        return self._slice(offset, end)

    def _drop_before(self, offset: int) -> None:
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= offset:
            self._chunks.popleft()
            self._free_chunks.release()

    def _slice(self, offset: int, end: int) -> bytes | memoryview | None:
        pieces = []
        for start, data in self._chunks:
            if start < end and offset < start + len(data):
                pieces.append(memoryview(data)[max(offset - start, 0) : end - start])
        if sum(map(len, pieces)) != end - offset:
            return None  # close() let go of them meanwhile
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _arrived(self, offset: int, data: bytes) -> None:
        if not self._released.is_set():
            self._chunks.append((offset, data))
            self._received = offset + len(data)
            self._wake()

    def _wake(self) -> None:
        self._arrival.set()
        self._arrival = trio.Event()

    def _pumped(self, token: trio.lowlevel.TrioToken, result: outcome.Outcome) -> None:
        """In the thread, as it ends: tell the event loop (unless it ended already)."""
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(self._end, result)

    def _end(self, result: outcome.Outcome) -> None:
        self.s3.limiter.release_on_behalf_of(self)
        # A segment read whole, by a thread that never waited on standby (whose bytes pile up in
        # the connection's buffers meanwhile), tells what one connection carries.
        if self._received == self.end and not self._stood_by and self.end - self.start >= self.MEASURED:
            self.s3.connection_rate.observe(self.end - self.start, self._reading)
        if isinstance(result, outcome.Error):  # whatever it was: ranged GETs read the rest, and report it
            log.debug("streaming %r from %d ended early: %r", self.key, self._received, result.error)
        self.ended = True
        self._wake()
        self._finished.set()

    async def _watch(self) -> None:
        """Once the thread has ended: let go of the chunks of a reader that stopped reading, and
        their budget (it may never read on)."""
        await self._finished.wait()
        while not self._released.is_set():
            last = self._last_read
            with trio.move_on_at(last + self.IDLE_TIMEOUT):
                await self._released.wait()
            if self._last_read == last and not self._released.is_set():
                self._idle = True
                self._let_go()

    def _pump(self, token: trio.lowlevel.TrioToken) -> None:
        began = time.monotonic()
        body = self.s3.direct.get_object(**self._kwargs)["Body"]
        self.s3.connection_rate.answered(time.monotonic() - began)
        try:
            offset = self.start
            while offset < self.end:
                if not self._free_chunks.acquire(timeout=self.IDLE_TIMEOUT):
                    self._idle = True
                    return
                if self._released.is_set():  # close() woke it, or closed it meanwhile
                    return
                chunk = self.chunk if offset > self.start else min(self.chunk, self.FIRST_CHUNK)
                began = time.monotonic()
                data = body.read(min(chunk, self.end - offset))
                self._reading += time.monotonic() - began
                if not data:
                    raise EOFError(f"the body ended at {offset} of {self.end}")
                token.run_sync_soon(self._arrived, offset, data)
                offset += len(data)
        finally:
            body.close()
