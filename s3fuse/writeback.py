"""Files open for writing: their unsaved changes, and how those reach S3.

Owns ``OpenFile`` (one per inode with writable handles, shared by all of them):
the spill file of unsaved bytes, pending attribute changes, the multipart upload
that streams a file written front to back while it is being written, and
``save``, the upload that makes close() and fsync() durable. A file written
sequentially is mostly in S3 by the time it is closed; a changed existing object
is rebuilt from unchanged ranges copied inside S3 (UploadPartCopy) and changed
ranges uploaded; a small file is one PutObject. A file whose upload fails keeps
its spill file, which is moved to CACHE_DIR/lost+found when the file is closed.

With ``--write-back``, close() instead makes the file's state durable in the
journal (journal.py) and its upload runs in the background, a bounded number at a
time, retried until it succeeds; fsync() still waits for S3. The journal's records
of a daemon that died are adopted by the next one (or ``s3fuse recover``) and
uploaded the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import time
from typing import Any
from urllib.parse import quote

import trio
from cachetools import LRUCache

from .blockcache import BlockCache
from .errors import FsError
from .extents import Extents
from .inodes import Node
from .journal import Journal, JournalInUse
from .metadata import META_MTIME, EntryInfo, from_head
from .metrics import METRICS
from .names import at_or_below, file_key, split
from .namespace import Namespace
from .options import Config
from .reader import ObjectReader
from .s3client import S3Client
from .spill import SpillFile
from .upload import (
    SINGLE_PUT_LIMIT,
    FileRange,
    HeaderChanges,
    MultipartUpload,
    ObjectHeaders,
    UploadRegistry,
    check_file_size,
    copy_object,
    gather,
    guess_content_type,
    process_alive,
    put_object,
    rebuild_plan,
    streamed_part_size,
)

log = logging.getLogger(__name__)

PARTS_IN_FLIGHT = 4  # per file; parts are read from the spill file as they are sent, so this bounds connections
RETRY_DELAY_MAX = 60.0  # seconds between attempts of a journaled file's upload, at most
# Failures that no retry mends: the file goes to lost+found instead of being retried.
FINAL_ERRORS = {errno.ESTALE, errno.EACCES, errno.EPERM, errno.EINVAL, errno.EFBIG, errno.ENAMETOOLONG, errno.EROFS}


def connection_of(opts: Config) -> dict[str, Any]:
    """How to reach the bucket, for ``s3fuse recover`` (never credentials)."""
    return {name: getattr(opts.s3, name) for name in ("endpoint_url", "region", "profile", "addressing_style")}


class WriteBack:
    """Every file open for writing, by inode, and the places their data may go."""

    def __init__(self, s3: S3Client, ns: Namespace, blocks: BlockCache, opts: Config) -> None:
        self.s3 = s3
        self.ns = ns
        self.blocks = blocks
        self.opts = opts
        self.registry = UploadRegistry(opts.write.cache_dir, opts.mount.bucket_name)
        self.write_back: bool = opts.write.write_back
        self.journal = Journal(opts.write.cache_dir, opts.mount.bucket_name)
        if self.write_back or self.journal.has_records():
            self._own_journal()
        # Under --write-back spill files live in the journal, which records name them.
        self.spill_dir = (
            self.journal.directory if self.write_back else os.path.join(opts.write.cache_dir, "spill", str(os.getpid()))
        )
        self.kept_dir = os.path.join(opts.write.cache_dir, "lost+found")
        self.files: dict[int, OpenFile] = {}
        self.nursery: trio.Nursery | None = None  # for streaming parts and background uploads
        self.saving = 0  # saves running now
        # path -> why its last save failed and where its data went, until it is saved again
        self.kept: LRUCache[str, str] = LRUCache(maxsize=1000)
        self.uploads = trio.CapacityLimiter(opts.write.write_back_uploads)
        self.queued = 0  # journaled files whose background upload has not ended
        self.upload_ended = trio.Event()  # set, and replaced, each time one ends
        self.stopping = trio.Event()  # unmounting: failed uploads stay in the journal
        self.recovering: set[OpenFile] = set()  # adopted from the journal, not uploaded yet
        self._report_leftovers()
        self.adopted = self._adopt() if self.journal.owned else []
        METRICS.add_gauges(self.gauges)

    def gauges(self) -> dict[str, float]:
        return {
            "s3fuse_files_open_for_writing": sum(of.handles > 0 for of in self.files.values()),
            "s3fuse_dirty_files": sum(of.dirty for of in self.files.values()),
            "s3fuse_uploads_in_progress": self.saving,
            "s3fuse_files_waiting_for_upload": self.queued,
            "s3fuse_journal_bytes": self.journaled_bytes(),
        }

    # ---- the journal (--write-back)

    def _own_journal(self) -> None:
        try:
            self.journal.acquire(connection_of(self.opts))
        except JournalInUse as exc:
            if self.write_back:
                raise
            log.warning("%s; its records are left to that process", exc)

    def _adopt(self) -> list[OpenFile]:
        """The files an earlier process journaled and did not upload: pending here now."""
        records = self.journal.records()
        for path in self.journal.unreferenced_spill_files(records):
            kept = self.move_to_lost_and_found(path, os.path.basename(path))
            log.warning("%s holds writes no close() acknowledged (s3fuse died first); moved to %s", path, kept)
        adopted = []
        prefix = self.opts.mount.prefix
        for record in records:
            key = record["key"]
            if not key.startswith(prefix) or key == prefix:
                log.warning(
                    "the write-back journal holds %r, outside s3://%s/%s: after unmounting, 's3fuse recover %s' "
                    "uploads it", key, self.opts.mount.bucket_name, prefix, self.opts.write.cache_dir,
                )  # fmt: skip
                continue
            try:
                adopted.append(OpenFile.from_record(self, key[len(prefix) :], record))
            except OSError as exc:
                log.error("write-back record %s of %r cannot be replayed: %s; removed", record["name"], key, exc)
                self.journal.remove(record["name"])
        if adopted:
            log.warning(
                "resuming %d upload(s) that an earlier s3fuse process acknowledged and did not finish (journal %s)",
                len(adopted), self.journal.directory,
            )  # fmt: skip
        self.recovering = set(adopted)
        return adopted

    def start(self, nursery: trio.Nursery) -> None:
        """The mount loop runs: background work can start, the adopted uploads first."""
        self.nursery = nursery
        for of in self.adopted:
            self._upload_later(of)
        self.adopted = []

    async def replay(self) -> None:
        """s3fuse recover: upload every adopted file once; what fails stays in the journal."""
        self.stopping.set()
        async with trio.open_nursery() as nursery:
            self.start(nursery)
            await self.shutdown()

    def journaled_bytes(self, besides: OpenFile | None = None) -> int:
        """Bytes of the journal's spill files (of files other than ``besides``)."""
        return sum(of.spill.written_bytes for of in self.files.values() if of.record and of.spill and of is not besides)

    async def acknowledge(self, of: OpenFile) -> None:
        """close() under --write-back: once this returns, the file's state survives a crash."""
        while True:
            async with of.lock:
                if of.unlinked or not of.dirty:
                    return
                try:
                    record, fd = of.to_record(), of.spill.fd if of.spill is not None else None
                    name = await trio.to_thread.run_sync(self.journal.write, record, fd)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC or not self.others_queued(of):
                        raise FsError(exc.errno or errno.EIO, "Journal", f"journaling {of.key!r}: {exc}") from exc
                else:
                    of.replace_record(name)
                    break
            await self.wait_for_space(of.key)
        # Backpressure: the writer waits while the journal holds too much of other files.
        while self.journaled_bytes() > self.opts.write.write_back_limit and self.journaled_bytes(besides=of):
            await self.upload_ended.wait()

    def others_queued(self, of: OpenFile) -> bool:
        return any(other.queued and other is not of for other in self.files.values())

    async def wait_for_space(self, key: str) -> None:
        """The cache dir is full: wait for a background upload to end and free some."""
        log.warning(
            "the cache dir %s is full: writing %r waits for uploads to free space", self.opts.write.cache_dir, key
        )
        await self.upload_ended.wait()

    def _upload_later(self, of: OpenFile) -> None:
        if of.queued:
            return  # the upload running now sees the new state when its save ends
        of.queued = True
        of.node.writers += 1  # until S3 has it, the local attributes are the file's
        self.queued += 1
        assert self.nursery is not None
        self.nursery.start_soon(self._upload_in_background, of)

    async def _upload_in_background(self, of: OpenFile) -> None:
        try:
            async with self.uploads:
                await self._upload_until_saved(of)
        except Exception:  # a background task: anything uncaught would end the daemon
            log.exception("uploading %r from the write-back journal failed; it stays in the journal", of.key)
        finally:
            of.queued = False
            self.queued -= 1
            if of.handles == 0 and of.record is None and self.files.get(of.node.inode) is of:
                of.close()
                del self.files[of.node.inode]
            self.ns.writer_gone(of.node)
            self.upload_ended.set()
            self.upload_ended = trio.Event()
            if of in self.recovering:
                self.recovering.discard(of)
                if of.record is None and not of.unlinked:
                    log.info("recovered %r from the write-back journal", of.key)
                if not self.recovering:
                    log.info("every upload resumed from the write-back journal has ended")

    async def _upload_until_saved(self, of: OpenFile) -> None:
        """Save a journaled file, retrying (with backoff) failures that may pass."""
        delay = 1.0
        while of.handles == 0 and of.record is not None:
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

    def new_spill(self, base_size: int) -> SpillFile:
        # Under --write-back close() makes the spill file durable: no use holding it in memory.
        return SpillFile(self.spill_dir, base_size, in_memory=not self.write_back)

    def move_to_lost_and_found(self, path: str, name: str) -> str:
        """Move a file into lost+found under a name no other kept file has; returns its new path."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        os.makedirs(self.kept_dir, exist_ok=True)
        target, serial = os.path.join(self.kept_dir, f"{stamp}-{name}"[:255]), 1
        # A rename replaces a file of the same name: another version of this file kept in
        # the same second (a write, its failed save, a rewrite and its failed save) would be lost.
        while os.path.lexists(target):
            serial += 1
            target = os.path.join(self.kept_dir, f"{stamp}.{serial}-{name}"[:255])
        os.rename(path, target)
        return target

    def _report_leftovers(self) -> None:
        """Spill files of daemons that died: data acknowledged to no one, but worth a look."""
        base = os.path.dirname(self.spill_dir)
        with contextlib.suppress(OSError):
            for pid in os.listdir(base):
                path = os.path.join(base, pid)
                if pid.isdigit() and not process_alive(pid) and os.listdir(path):
                    log.warning(
                        "%s holds the unsaved writes of s3fuse process %s, which did not exit cleanly; "
                        "nothing uploads them automatically",
                        path,
                        pid,
                    )

    def open(self, node: Node, exists: bool) -> OpenFile:
        """A writable handle on node: the inode's OpenFile, shared with its other handles."""
        of = self.files.get(node.inode)
        if of is None:
            of = self.files[node.inode] = OpenFile(self, node, exists)
        of.handles += 1
        of.node.writers += 1
        return of

    def local_entries(self, directory: str) -> list[tuple[str, EntryInfo]]:
        """The files of a directory that were created here and are not in S3 yet."""
        return [
            (split(of.node.path)[1], of.node.info)
            for of in self.files.values()
            if of.never_saved and not of.unlinked and split(of.node.path)[0] == directory
        ]

    def upload_state(self, node: Node) -> str:
        """What a file's bytes are to S3: clean, dirty, uploading, or failed: why (xattr s3.upload_state)."""
        of = self.files.get(node.inode)
        if of is not None:
            return of.upload_state
        kept = self.kept.get(node.path)
        return f"failed: {kept}" if kept is not None else "clean"

    def pending_headers(self, node: Node) -> HeaderChanges | None:
        """Headers set on an open file that its next upload will carry."""
        of = self.files.get(node.inode)
        return of.header_changes if of is not None else None

    async def before_change(self, node: Node) -> None:
        """A file whose journal record waits for its upload (--write-back) is about to be
        written or truncated: it goes on in a copy of its spill file, so that the record
        keeps naming the bytes as they were closed. An upload in flight ends first."""
        of = self.files.get(node.inode)
        if of is None or of.record is None or of.handles:
            return
        async with of.lock:
            if of.record is not None and of.spill is not None and not of.forked:
                await trio.to_thread.run_sync(of.fork_spill)

    async def uploaded(self, node: Node) -> None:
        """Wait for the background upload of a journaled file (--write-back) to end.

        If the upload keeps failing, FsError (EIO) rather than an endless wait.
        """
        of = self.files.get(node.inode)
        while of is not None and of.queued and not of.handles:
            if of.failure is not None:
                raise FsError(errno.EIO, "NotUploaded", f"{of.key!r} is not in S3 yet: {of.failure}")
            await self.upload_ended.wait()

    async def settled(self, node: Node) -> None:
        """Wait for the save a last close started (release), or a journaled file's upload,
        so later changes apply after it."""
        await self.uploaded(node)
        of = self.files.get(node.inode)
        if of is not None and of.handles == 0:
            async with of.lock:
                pass

    async def release(self, of: OpenFile) -> None:
        """One writable handle is gone; the last one saves what is left or keeps it locally."""
        of.handles -= 1
        if of.handles == 0 and of.record is not None:
            self._upload_later(of)  # journaled (--write-back): uploaded in the background
        self.ns.writer_gone(of.node)
        if of.handles == 0 and of.record is None:
            await self._last_close(of)

    async def _last_close(self, of: OpenFile, final: bool = False) -> None:
        """Save what is left, or keep it locally; then the OpenFile is gone.

        Unless the file was opened again while the save ran (open() found this OpenFile
        and shares it): then its unsaved bytes stay with the new handle, whose last close
        saves or keeps them. ``final`` (unmounting): no handle counts any more.
        """

        def reopened() -> bool:
            return of.handles > 0 and not final

        try:
            await of.save()
            while of.dirty and not of.unlinked and not reopened():  # attributes changed while it was saved
                await of.save()
        except FsError as exc:
            if not reopened():
                of.keep_locally(str(exc))
        finally:
            if not reopened():
                of.close()
                self.files.pop(of.node.inode, None)

    def under(self, path: str) -> list[OpenFile]:
        """Open files at or below a path."""
        return [of for of in self.files.values() if at_or_below(of.node.path, path)]

    async def shutdown(self) -> None:
        """Unmounting: every file still open is saved, or kept in lost+found; every
        journaled file is uploaded, or stays in the journal for the next mount."""
        self.stopping.set()
        for of in list(self.files.values()):
            if of.record is None and not of.queued:
                await self._last_close(of, final=True)
        while self.queued:
            await self.upload_ended.wait()
        left = [of for of in self.files.values() if of.record is not None]
        for of in left:
            of.close(keep_spill=True)
        if left:
            log.error(
                "%d file(s) could not be uploaded and stay in the write-back journal %s; the next mount "
                "with this cache dir, or 's3fuse recover %s', uploads them",
                len(left), self.journal.directory, self.opts.write.cache_dir,
            )  # fmt: skip
        self.journal.release()
        if not self.write_back:
            with contextlib.suppress(OSError):  # only if empty: a kept file stays where it is
                os.rmdir(self.spill_dir)


class OpenFile:
    """One inode open for writing: its unsaved bytes and attributes, and how to save them."""

    def __init__(self, wb: WriteBack, node: Node, exists: bool) -> None:
        self.wb = wb
        self.node = node
        self.handles = 0
        # The object as it is in S3 (None: not there yet), which unwritten bytes come from.
        self.base: EntryInfo | None = node.info if exists else None
        self.spill: SpillFile | None = None
        self.never_saved = not exists  # created here: must reach S3 even if left empty
        self.attributes_changed = False
        self.mtime_set = False  # utimens was called: x-amz-meta-mtime is written
        self.changed: set[str] = set()  # attributes set here since the last save
        self.header_changes = HeaderChanges()  # xattrs set here since the last save
        self.wrote = False  # write() was called since it was opened
        # Counts attribute changes: one made while a save runs (chmod right after close(),
        # while the release saves) must not be cleared by that save.
        self.attribute_edits = 0
        self._edits_saved = 0
        self.unlinked = False
        self.stream: StreamingUpload | None = None
        self.lock = trio.Lock()  # one save at a time, and no write while one runs
        self.failure: str | None = None  # why the last save failed, until one succeeds
        self.opened_ns = time.time_ns()
        self._base_reader: ObjectReader | None = None
        self.record: str | None = None  # its record in the write-back journal
        self.queued = False  # journaled, and its background upload has not ended
        # Spill files that only the current record still names (see fork_spill).
        self.retired: list[str] = []

    # ---- the journal's record of it

    def to_record(self) -> dict[str, Any]:
        """What the journal keeps of this file: enough to upload it after a crash."""
        info, spill, base = self.node.info, self.spill, self.base
        return {
            "key": self.key,
            "size": info.size,
            "mode": info.mode,
            "uid": info.uid,
            "gid": info.gid,
            "mtime_ns": info.mtime_ns,
            "spill": os.path.basename(spill.path) if spill is not None else None,
            "written": spill.written.ranges() if spill is not None else [],
            "base": None
            if base is None
            else {"etag": base.etag, "size": base.size, "limit": spill.base_limit if spill else base.size},
            "never_saved": self.never_saved,
            "attributes_changed": self.attributes_changed,
            "mtime_set": self.mtime_set,
            "changed": sorted(self.changed),
            "header_changes": dataclasses.asdict(self.header_changes),
            "journaled_at": time.time(),
        }

    @classmethod
    def from_record(cls, wb: WriteBack, path: str, record: dict[str, Any]) -> OpenFile:
        """A file an earlier process journaled, pending here as if just closed."""
        fields = {name: record[name] for name in ("size", "mode", "uid", "gid", "mtime_ns")}
        base = record["base"]
        spill = None
        if record["spill"]:
            limit = base["limit"] if base else 0
            written = Extents.of(record["written"])
            path_on_disk = os.path.join(wb.journal.directory, record["spill"])
            spill = SpillFile.reopen(path_on_disk, record["size"], limit, written)
        node = wb.ns.added(path, EntryInfo(is_dir=False, etag=base and base["etag"], from_head=True, **fields))
        of = cls(wb, node, exists=base is not None)
        if base is not None:
            of.base = dataclasses.replace(node.info, size=base["size"])
        of.spill = spill
        of.never_saved = record["never_saved"]
        of.attributes_changed = record["attributes_changed"]
        of.mtime_set = record["mtime_set"]
        of.changed = set(record["changed"])
        of.header_changes = HeaderChanges(**record["header_changes"])
        of.record = record["name"]
        wb.files[node.inode] = of
        return of

    @property
    def forked(self) -> bool:
        return bool(self.retired)

    def fork_spill(self) -> None:
        """Go on in a copy of the spill file; the journal's record keeps naming the original."""
        assert self.spill is not None
        original, self.spill = self.spill, self.spill.copy(self.wb.spill_dir)
        original.close(remove=False)
        self.retired.append(original.path)

    def replace_record(self, name: str) -> None:
        """A new record (just made durable) describes this file; the older one goes."""
        old, self.record = self.record, name
        if old is not None:
            self.wb.journal.remove(old)
        self._drop_retired()

    def _forget_record(self) -> None:
        if self.record is not None:
            self.wb.journal.remove(self.record)
            self.record = None
        self._drop_retired()

    def _drop_retired(self) -> None:
        for path in self.retired:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.retired.clear()

    @property
    def key(self) -> str:
        return file_key(self.wb.opts.mount.prefix, self.node.path)

    @property
    def dirty(self) -> bool:
        return self.never_saved or self.spill is not None or self.attributes_changed

    # ---- changes

    def _spill(self) -> SpillFile:
        if self.spill is None:
            self.spill = self.wb.new_spill(self.base.size if self.base else 0)
            if self.wb.nursery is not None:
                self.stream = StreamingUpload(self, self.wb.nursery)
        return self.spill

    async def write(self, offset: int, data: bytes) -> None:
        check_file_size(offset + len(data))
        self.wrote = True
        while True:
            async with self.lock:
                try:
                    spill = self._spill()
                    spill.write(offset, data)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC or not self.wb.others_queued(self):
                        raise FsError(exc.errno or errno.EIO, "LocalDisk", f"writing {self.key!r}: {exc}") from exc
                else:
                    self._touch(spill.size)
                    if self.stream is not None:
                        self.stream.wrote(offset, offset + len(data), spill)
                    return
            await self.wb.wait_for_space(self.key)  # a full cache dir blocks writers

    async def truncate(self, size: int) -> None:
        check_file_size(size)
        async with self.lock:
            spill = self._spill()
            try:
                spill.truncate(size)
            except OSError as exc:  # the cache dir's file system: EFBIG, ENOSPC, EIO
                raise FsError(exc.errno or errno.EIO, "LocalDisk", f"truncating {self.key!r}: {exc}") from exc
            self._touch(size)
            if self.stream is not None:
                self.stream.truncated(size)

    def _touch(self, size: int) -> None:
        now = time.time_ns()
        self.node.info = dataclasses.replace(self.node.info, size=size, mtime_ns=now, fetched_at=time.monotonic())

    def set_attributes(self, **changes: int) -> None:
        """chmod/chown/utimens on an open file: folded into its next upload."""
        self.node.info = dataclasses.replace(self.node.info, **changes)
        if set(changes) == {"mtime_ns"} and self.spill is not None and changes["mtime_ns"] >= self.opened_ns - 10**9:
            # The kernel stamping the time of writes it sends (writeback cache), not a
            # chosen time: the upload's LastModified says as much, no header needed.
            return
        self.attributes_changed = True
        self.attribute_edits += 1
        self.changed.update(changes)
        if "mtime_ns" in changes:
            self.mtime_set = True

    def set_headers(self, changes: HeaderChanges) -> None:
        """setxattr of user metadata, content type or storage class: folded into the next upload."""
        self.header_changes.update(changes)
        self.attributes_changed = True
        self.attribute_edits += 1

    def unlink(self) -> None:
        """The name is gone: nothing of this file may reach S3 any more."""
        self.unlinked = True
        self._forget_record()

    async def keep_content(self) -> None:
        """Before its object is deleted under open handles: copy the bytes only S3 holds into
        the spill file, so reads and truncates through the handles keep working, as POSIX
        keeps an unlinked open file. If that fails, those bytes read as EIO later."""
        if self.base is None or not self.handles:
            return
        if self.spill is None:
            self.spill = self.wb.new_spill(self.base.size)  # no stream: it is never uploaded
        try:
            await self.spill.fill(0, self.spill.base_limit, self._fetch_base, self.wb.opts.cache.block_size)
        except (FsError, OSError) as exc:
            log.warning("%r was removed while open; its bytes not written here are lost to it: %s", self.key, exc)

    async def read(self, offset: int, size: int) -> bytes | None:
        """Bytes of the file with its unsaved changes (the caller saw ``spill`` set).

        Not under the lock: a read must not wait for an upload. A save that ends while
        this awaits S3 closes the spill file only after this read (SpillFile.in_use), but
        it replaces the object the read fetches unwritten bytes from: its GET (If-Match)
        then fails with 412. None says so: the caller reads the file as it is now.
        """
        spill, base = self.spill, self.base
        assert spill is not None
        try:
            return await spill.read(offset, offset + size, self._fetch_base)
        except FsError as exc:
            if exc.errno != errno.ESTALE:
                raise
            # S3 may answer the GET (412) before the save's own answer is handled here:
            # wait for a save that runs to end before telling whether it replaced the object.
            async with self.lock:
                pass
            if self.base is not base:
                return None
            raise

    async def _fetch_base(self, start: int, end: int) -> bytes:
        assert self.base is not None
        if self._base_reader is None or self._base_reader.etag != self.base.etag:
            self._base_reader = ObjectReader(
                self.wb.s3,
                self.wb.blocks,
                self.wb.nursery,  # type: ignore[arg-type]
                self.key,
                self.base.size,
                self.base.etag,
                self.wb.opts.cache.block_size,
                0,
                on_changed=lambda: None,
            )
        return await self._base_reader.fetch_range(start, end)

    # ---- saving

    @property
    def upload_state(self) -> str:
        if self.lock.locked():
            return "uploading"
        if self.failure is not None:
            return f"failed: {self.failure}"
        if self.queued:
            return "uploading"  # journaled, waiting for its turn
        # open for writing: the kernel may hold written pages s3fuse has not received yet
        return "dirty" if self.dirty or self.handles else "clean"

    @property
    def only_emptied(self) -> bool:
        """Created or truncated to nothing, and not written or changed since.

        A shell's '> file' opens, duplicates the descriptor and closes the original
        before it writes: saving at that close would store an empty object first (an
        extra PUT, and an extra version in a versioned bucket). Such a file is saved at
        its last close instead (release), or at the close that follows its writes.
        """
        return not (self.wrote or self.attributes_changed) and self.node.info.size == 0

    async def save(self) -> None:
        """Make S3 hold this file as it is now; FsError if that failed (the data stays here)."""
        async with self.lock:
            if self.unlinked:
                await self._drop_stream()
                return
            if not self.dirty:
                return
            self._edits_saved = self.attribute_edits
            self.wb.saving += 1
            try:
                await self._save()
            except FsError as exc:
                await self._drop_stream()
                log.warning("saving %r to S3 failed: %s", self.key, exc)
                self.failure = str(exc)
                raise
            finally:
                self.wb.saving -= 1
            self.failure = None

    async def _save(self) -> None:
        if self.spill is None and not self.never_saved:  # attributes only: copy onto itself
            assert self.base is not None
            headers = await self._headers(needs_base=True)
            etag = await copy_object(
                self.wb.s3, self.key, self.key, self.base.size, self.wb.registry, headers, if_match=self.base.etag
            )
            self._saved(etag, self.base.size)
            return
        spill = self._spill()
        size = spill.size
        if self.stream is not None and self.stream.usable:
            etag = await self.stream.finish(size)
        else:
            await self._drop_stream()
            headers = await self._headers(needs_base=spill.needs_base(0, size))
            if size <= SINGLE_PUT_LIMIT:
                data = await spill.read(0, size, self._fetch_base)
                # Not kept in the block cache: the kernel's page cache holds what was written
                # (its pages stay valid, see kernel_etag), and the daemon's memory stays small.
                etag = await put_object(self.wb.s3, self.key, data, headers)
            else:
                etag = await self._rebuild(spill, headers)
        self._saved(etag, size)

    async def _headers(self, needs_base: bool) -> ObjectHeaders:
        """Headers for the new object: the current object's, with this file's POSIX attributes.

        Asking S3 for them (HeadObject) also detects a conflict: the object changed
        since it was opened here.
        """
        headers = ObjectHeaders(guess_content_type(self.key))
        if self.base is not None and self.base.etag is not None:
            try:
                current = await self.wb.s3.call("head_object", Key=self.key)
            except FsError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                current = None
            if current is None or current.get("ETag") != self.base.etag:
                self._conflict(needs_base)
            if current is not None:
                headers = ObjectHeaders.from_head(current)
                self._adopt_stored_attributes(current)
        return self.with_attributes(headers)

    def _adopt_stored_attributes(self, head: dict[str, Any]) -> None:
        """Attributes the object's headers hold and nobody changed here are kept as they are."""
        if self.node.info.from_head:
            return
        stored = from_head(head)
        fields = {"mode", "uid", "gid"} if self.spill is not None else {"mode", "uid", "gid", "mtime_ns"}
        keep = {f: getattr(stored, f) for f in fields - self.changed if getattr(stored, f) is not None}
        self.node.info = dataclasses.replace(self.node.info, **keep, from_head=True)

    def with_attributes(self, headers: ObjectHeaders) -> ObjectHeaders:
        """headers with this file's current POSIX attributes written over them."""
        # a stored mtime is rewritten only when it changed: set here, or the bytes changed
        rewrite_mtime = self.mtime_set or (META_MTIME in headers.metadata and self.spill is not None)
        posix = self.node.info.posix_headers(with_mtime=rewrite_mtime)
        return self.header_changes.applied_to(dataclasses.replace(headers, metadata={**headers.metadata, **posix}))

    def _conflict(self, needs_base: bool) -> None:
        what = f"{self.key!r} changed in S3 since it was opened here"
        if needs_base:
            raise FsError(errno.ESTALE, "Conflict", f"{what}; its unchanged bytes can no longer be copied")
        if self.wb.opts.write.on_conflict == "fail":
            raise FsError(errno.ESTALE, "Conflict", f"{what} (--on-conflict fail)")
        log.warning("%s; overwriting it (--on-conflict overwrite)", what)

    async def _rebuild(self, spill: SpillFile, headers: ObjectHeaders) -> str:
        """A multipart upload of a large file: unchanged ranges copied, changed ranges sent."""
        base = self.base
        plan = rebuild_plan(spill.size, spill.base_limit if base is not None else 0, spill.written)
        upload = MultipartUpload(self.wb.s3, self.key, headers, self.wb.registry)
        await upload.start()

        async def send(number: int, start: int, end: int) -> None:
            # From the spill file, never whole in memory: a part of a large file is up to
            # 525 MiB, and one of a sparse file is mostly a hole (zeros the file reads as).
            await spill.fill(start, end, self._fetch_base, self.wb.opts.cache.block_size)
            with spill.in_use():
                await upload.send_part(number, FileRange(spill.fd, start, end))

        jobs = [
            (
                (lambda n=n, s=s, e=e: upload.copy_part(n, self.key, s, e, base.etag))  # type: ignore[union-attr]
                if copy
                else (lambda n=n, s=s, e=e: send(n, s, e))
            )
            for n, (s, e, copy) in enumerate(plan, 1)
        ]
        try:
            await gather(jobs, PARTS_IN_FLIGHT)
            return await upload.complete()
        except BaseException:
            await upload.abort()
            raise

    def _saved(self, etag: str, size: int) -> None:
        # Namespace.added stamps it with the time of the save.
        info = dataclasses.replace(self.node.info, size=size, etag=etag, last_modified_ns=None, from_head=True)
        self._forget_record()  # before its spill file goes: a record never names a missing file
        if self.spill is not None:
            self.spill.close()
        self.spill, self.stream, self.base = None, None, info
        self.never_saved = False
        if self.attribute_edits == self._edits_saved:
            self.attributes_changed = False
            self.changed.clear()
            self.header_changes = HeaderChanges()
        self.node.kernel_etag = etag  # the kernel's pages hold exactly what was written
        self.wb.kept.pop(self.node.path, None)
        self.wb.ns.added(self.node.path, info)

    async def _drop_stream(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            await stream.abort()

    # ---- giving up

    def keep_locally(self, reason: str) -> None:
        """The last handle closed with data S3 does not have: keep it for a human."""
        if self.spill is None or self.unlinked:
            log.error("could not save %r (%s); its attribute changes are lost", self.key, reason)
            self.wb.kept[self.node.path] = f"{reason}; attribute changes lost"
            self._forget_record()
            return
        path = self.spill.keep(lambda spill_path: self.wb.move_to_lost_and_found(spill_path, quote(self.key, safe="")))
        self._forget_record()  # after the move: a crash between them keeps the data twice, never zero times
        METRICS.count("s3fuse_files_kept_total")
        self.wb.kept[self.node.path] = f"{reason}; data kept at {path}"
        partial = "" if self.spill.base_limit == 0 else " (only the ranges written here; the rest is the old object)"
        log.error("could not save %r to S3 (%s); its data is kept at %s%s", self.key, reason, path, partial)
        self.spill = None

    def close(self, keep_spill: bool = False) -> None:
        """Done with it; ``keep_spill``: its spill file stays for the journal's record."""
        if self.spill is not None:
            self.spill.close(remove=not keep_spill)
            self.spill = None


class StreamingUpload:
    """A multipart upload fed while its file is still being written front to back.

    Each part is sent as soon as the writer has reached its end, PARTS_IN_FLIGHT at
    a time, read back from the spill file. A write or truncate that reaches into
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
        self.slots = trio.Semaphore(PARTS_IN_FLIGHT)
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
            self._send_next(self.sent_end + streamed_part_size(self.parts), spill)

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
        self.nursery.start_soon(self._send, self.parts, self.sent_end, end, spill, held)
        self.sent_end = end

    def truncated(self, size: int) -> None:
        if size < self.sent_end:
            self.broken = True

    async def _send(self, number: int, start: int, end: int, spill: SpillFile, held: contextlib.ExitStack) -> None:
        try:
            async with self.slots:
                if self.broken or self.error is not None:
                    return
                await self._start()
                assert self.upload is not None
                await self.upload.send_part(number, FileRange(spill.fd, start, end))
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
                self.headers = await self.of._headers(needs_base=False)
                upload = MultipartUpload(self.of.wb.s3, self.of.key, self.headers, self.of.wb.registry)
                await upload.start()
                self.upload = upload

    async def finish(self, size: int) -> str:
        """Send the tail alongside the parts still in flight, complete the upload; returns the new ETag."""
        assert self.of.spill is not None
        while self.sent_end < size:  # the tail: usually less than one part
            self._send_next(min(size, self.sent_end + streamed_part_size(self.parts)), self.of.spill)
        await self.idle.wait()
        if self.error is not None:
            raise self.error
        assert self.upload is not None and self.headers is not None
        etag = await self.upload.complete()
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
