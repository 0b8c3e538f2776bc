"""Streamed uploads: the multipart upload of a file written front to back, fed while it is written.

Owns ``StreamingUpload``: a part goes to S3 as soon as the writer has passed its end,
so a file written sequentially is mostly in S3 by the time it is closed, and close()
waits only for the tail. The rules it keeps (DEVELOPMENT.md, "The write path's rules"):
parts in flight as far as the mount's transfer budget allows (transfer.py: each part
takes its size from it while it is sent, and an upload gets its fair share of it),
the upload created once (``starting``), each part holding its spill file open from
when it is scheduled until it is sent, and a write or truncate below ``sent_end``
breaking the stream, whose parts are then aborted at the next save, which uploads the
file whole (save.py). A write that leaves a hole behind it (far past the end) breaks
it too: a sparse file is saved by a plan that copies its holes; a hole in the tail (a
growing truncate) is copied from an all-zero object (zeros.py) at ``finish``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from typing import TYPE_CHECKING

import trio

from ..errors import FsError
from .conditions import COMPLETE, Guard, probe_soon
from .parts import MAX_ZERO_PART, SINGLE_PUT_LIMIT, streamed_part_size
from .spill import SpillFile
from .upload import FileRange, MultipartUpload, ObjectHeaders, copy_object

if TYPE_CHECKING:
    from .openfile import OpenFile

log = logging.getLogger(__name__)


class StreamingUpload:
    """A multipart upload fed while its file is still being written front to back.

    Each part is sent as soon as the writer has reached its end, several at a time
    (within the transfer budget), read back from the spill file. A write or truncate that reaches into
    bytes already sent makes the stream unusable; the file is then uploaded whole
    when saved.
    """

    def __init__(self, of: OpenFile, nursery: trio.Nursery) -> None:
        self.of = of
        self.nursery = nursery
        self.upload: MultipartUpload | None = None
        self.headers: ObjectHeaders | None = None
        self.sent_end = 0  # parts cover [0, sent_end)
        self.parts = 0
        self.broken = False
        self.error: FsError | None = None
        self.in_flight = 0
        self.idle = trio.Event()
        self.idle.set()
        self.starting = trio.Lock()

    @property
    def usable(self) -> bool:
        return self.parts > 0 and not self.broken and self.error is None

    def wrote(self, start: int, end: int, spill: SpillFile) -> None:
        if start < self.sent_end:
            self.broken = True
        if self.broken or spill.base_limit > 0:
            return  # changes to an existing object: uploaded as a plan when saved
        # A part goes as soon as the writer reaches its end, so a file that ends on a part
        # boundary has nothing left to send at close; up to SINGLE_PUT_LIMIT it is one PutObject.
        while end >= self.sent_end + streamed_part_size(self.parts) and end > SINGLE_PUT_LIMIT:
            part_end = self.sent_end + streamed_part_size(self.parts)
            if not spill.written.covers(self.sent_end, part_end):
                # The writer left a hole behind (a write far past the end): a sparse file, saved
                # by a plan that copies its holes (zeros.py) instead of streaming them as zeros.
                self.broken = True
                return
            self._send_next(part_end, spill)

    def _send_next(self, end: int, spill: SpillFile) -> None:
        """Send [sent_end, end) as the next part, in the background.

        The part holds its spill file open from now until it is sent: the file may be
        closed meanwhile (--write-back forks it when the file is reopened for writing),
        and a part must never read a descriptor number that another file has taken.
        """
        self.parts += 1
        self.in_flight += 1
        self.idle = trio.Event() if self.in_flight == 1 else self.idle
        held = contextlib.ExitStack()
        held.enter_context(spill.in_use())
        # Only the tail (finish) can be all hole: after a growing truncate.
        zero = end - self.sent_end <= MAX_ZERO_PART and not spill.written.intersects(self.sent_end, end)
        self.nursery.start_soon(self._send, self.parts, self.sent_end, end, spill, held, zero)
        self.sent_end = end

    def truncated(self, size: int) -> None:
        if size < self.sent_end:
            self.broken = True

    async def _send(
        self, number: int, start: int, end: int, spill: SpillFile, held: contextlib.ExitStack, zero: bool
    ) -> None:
        budget = self.of.wb.s3.transfer
        try:
            # Parts in flight are what a sequential write's speed takes over a network with latency:
            # on an S3-like one (20 ms, 100 MiB/s per connection) one part of 8 MiB takes 100 ms.
            try:
                await budget.take(self, end - start)
            except BaseException:  # cancelled while waiting: no longer a user that wants bytes
                budget.leave(self)
                raise
            try:
                if self.broken or self.error is not None:
                    return
                await self._start()
                assert self.upload is not None
                if zero:
                    await self.of.wb.zeros.copy_part(self.upload, number, end - start)
                else:
                    await self.upload.send_part(number, FileRange(spill.fd, start, end))
            finally:
                budget.give_back(self, end - start)
        except FsError as exc:
            self.error = self.error or exc
        except Exception as exc:  # a background task: anything uncaught would end the daemon
            if self.broken:  # a truncate cut the part's bytes: the stream was given up anyway
                log.debug("part %d of %r abandoned: %s", number, self.of.key, exc)
            else:
                log.exception("sending part %d of %r failed", number, self.of.key)
            self.error = self.error or FsError(errno.EIO, type(exc).__name__, str(exc))
        finally:
            held.close()
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()

    async def _start(self) -> None:
        async with self.starting:
            if self.upload is None:
                self.headers = await self.of.object_headers(needs_base=False)
                upload = MultipartUpload(self.of.wb.s3, self.of.key, self.headers, self.of.wb.registry)
                await upload.start()
                self.upload = upload
                # The completion will ask whether the server honours its conditions: found out
                # beside the parts, not after them (the probe is 4 requests in a row, once a mount).
                probe_soon(self.of.wb.s3, COMPLETE, self.of.wb.registry, self.of.wb.nursery)

    async def finish(self, size: int, guard: Guard) -> str:
        """Send the tail alongside the parts still in flight, complete the upload (``guard``: what it may
        replace); returns the new ETag. Refused on its guard, it may be called again."""
        assert self.of.spill is not None
        while self.sent_end < size:  # the tail: usually less than one part
            self._send_next(min(size, self.sent_end + streamed_part_size(self.parts)), self.of.spill)
        await self.idle.wait()
        if self.error is not None:
            raise self.error
        assert self.upload is not None and self.headers is not None
        etag = await self.upload.complete(await guard.params(COMPLETE))
        final = self.of.with_attributes(self.headers)
        if final.metadata != self.headers.metadata:
            # attributes changed after the upload began (tar sets mtime last): one copy onto itself
            etag = await copy_object(self.of.wb.s3, self.of.key, self.of.key, size, self.of.wb.registry, final)
        return etag

    async def abort(self) -> None:
        self.broken = True
        await self.idle.wait()
        if self.upload is not None:
            await self.upload.abort()
