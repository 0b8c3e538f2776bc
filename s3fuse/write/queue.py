"""The background uploads of journaled files (``--write-back``), and the back-pressure on writers.

Owns the files closed under ``--write-back`` whose upload has not ended: at most
``--write-back-uploads`` upload at a time, each retried with backoff until it
succeeds; a failure no retry mends (``FINAL_ERRORS``) sends the file to lost+found,
and unmounting (``stopping``) leaves what failed in the journal for the next mount.
And what keeps the journal bounded: close() waits while the journal holds more than
``--write-back-limit`` bytes of other files (``hold_back``), and a write or a
journaling that finds the cache dir full (ENOSPC) waits for an upload to end and free
space, as long as another file's upload is queued to free it (``wait_for_space``).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ..errors import FsError

if TYPE_CHECKING:
    from .openfile import OpenFile

log = logging.getLogger(__name__)

RETRY_DELAY_MAX = 60.0  # seconds between attempts of a journaled file's upload, at most
# Failures that no retry mends: the file goes to lost+found instead of being retried.
FINAL_ERRORS = {
    errno.ESTALE,
    errno.EEXIST,
    errno.EACCES,
    errno.EPERM,
    errno.EINVAL,
    errno.EFBIG,
    errno.ENAMETOOLONG,
    errno.EROFS,
}


START_DELAY = 0.5  # seconds between a close and the start of its background upload


class UploadQueue:
    """Background uploads in a nursery; ``ended(of)`` is called as each one ends, however it ended."""

    def __init__(
        self,
        files: dict[int, OpenFile],
        nursery: trio.Nursery,
        uploads: int,
        limit: int,
        cache_dir: str,
        ended: Callable[[OpenFile], None],
    ) -> None:
        self.files = files  # every OpenFile, by inode (WriteBack.files)
        self.nursery = nursery
        self.slots = trio.CapacityLimiter(uploads)
        self.limit = limit
        self.cache_dir = cache_dir
        self.ended = ended
        self.count = 0  # journaled files whose background upload has not ended
        self.upload_ended = trio.Event()  # set, and replaced, each time one ends
        self.stopping = trio.Event()  # unmounting: failed uploads stay in the journal

    def journaled_bytes(self, besides: OpenFile | None = None) -> int:
        """Bytes of the journal's spill files (of files other than ``besides``)."""
        return sum(of.spill.written_bytes for of in self.files.values() if of.record and of.spill and of is not besides)

    def others_queued(self, of: OpenFile) -> bool:
        return any(other.queued and other is not of for other in self.files.values())

    async def wait_for_space(self, key: str) -> None:
        """The cache dir is full: wait for a background upload to end and free some."""
        log.warning("the cache dir %s is full: writing %r waits for uploads to free space", self.cache_dir, key)
        await self.upload_ended.wait()

    async def hold_back(self, of: OpenFile) -> None:
        """Backpressure: the writer waits while the journal holds too much of other files."""
        while self.journaled_bytes() > self.limit and self.journaled_bytes(besides=of):
            await self.upload_ended.wait()

    def add(self, of: OpenFile) -> None:
        """Upload a journaled, closed file in the background (it is not queued already)."""
        of.queued = True
        self.count += 1
        self.nursery.start_soon(self._upload, of)

    async def uploaded(self, of: OpenFile) -> None:
        """Wait for the background upload of a closed file to end; FsError (EIO) rather than
        an endless wait if it keeps failing."""
        while of.queued and not of.handles:
            if of.failure is not None:
                raise FsError(errno.EIO, "NotUploaded", f"{of.key!r} is not in S3 yet: {of.failure}")
            await self.upload_ended.wait()

    async def drain(self) -> None:
        """Wait for every background upload to end."""
        while self.count:
            await self.upload_ended.wait()

    async def _upload(self, of: OpenFile) -> None:
        try:
            # A moment for what follows a close: rsync's utimens, chown, chmod and the rename of its
            # temporary file join the upload (Mutations.rename_journaled), which then sends one PutObject.
            await trio.sleep(START_DELAY)
            async with self.slots:
                await self._until_saved(of)
        except Exception:  # a background task: anything uncaught would end the daemon
            log.exception("uploading %r from the write-back journal failed; it stays in the journal", of.key)
        finally:
            of.queued = False
            self.count -= 1
            self.ended(of)
            self.upload_ended.set()
            self.upload_ended = trio.Event()

    async def _until_saved(self, of: OpenFile) -> None:
        """Save a journaled file, retrying (with backoff) failures that may pass."""
        delay = 1.0
        while of.waits_for_upload:
            try:
                await of.save()
                continue
            except FsError as exc:
                if of.handles:
                    return  # opened again: its next close journals and queues it
                if exc.errno in FINAL_ERRORS:
                    of.keep_locally(str(exc))
                    return
                if self.stopping.is_set():
                    return  # stays in the journal for the next mount
                of.failure = f"{exc}; retrying, the data is safe in the journal"
                log.warning("uploading %r failed (%s); retrying in %.0f s", of.key, exc, delay)
            with trio.move_on_after(delay):
                await self.stopping.wait()
            delay = min(delay * 2, RETRY_DELAY_MAX)
