"""One file open for writing: its unsaved changes, its upload state, and ``save``.

Owns ``OpenFile`` (one per inode with writable handles, shared by all of them): the
spill file of unsaved bytes, pending attribute and header changes, the streamed
upload of a file written front to back (streaming.py), the name of its record in
the write-back journal, and ``save``, the upload behind close() and fsync(): a copy
onto itself when only attributes changed, the end of its stream, or the whole file
(save.py). ``UploadState`` names what its fields add up to, as s3.upload_state
shows it. A file whose save fails keeps its spill file; ``keep_locally`` moves it to
lost+found when nothing will save it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import logging
import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import trio

from ..errors import FsError
from ..inodes import Node
from ..metadata import META_MTIME, POSIX_FIELDS, POSIX_HEADERS, EntryInfo, from_head
from ..metrics import METRICS
from ..names import file_key
from ..reader import ObjectReader
from .conditions import UNGUARDED, Guard, refused
from .parts import check_file_size
from .save import save_spill
from .spill import SpillFile
from .streaming import StreamingUpload
from .upload import HeaderChanges, ObjectHeaders, copy_object, guess_content_type

if TYPE_CHECKING:
    from .writeback import WriteBack

log = logging.getLogger(__name__)


class UploadState(enum.Enum):
    """What an OpenFile's fields add up to, first match wins (``OpenFile.state``)."""

    SAVING = "saving"  # its lock is held: a save runs (or a write or truncate, which a save waits for)
    FAILED = "failed"  # its last save failed; the data stays here until one succeeds
    JOURNALED = "journaled"  # closed under --write-back: in the journal, its background upload not ended
    DIRTY = "dirty"  # changes S3 does not have, or open for writing
    CLEAN = "clean"  # S3 holds the file as it is here

    @property
    def shown(self) -> str:
        """Its word in s3.upload_state: an upload runs or is queued, both are "uploading"."""
        return "uploading" if self in (UploadState.SAVING, UploadState.JOURNALED) else self.value


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
        # Never saved, and renamed onto an object (--write-back, Mutations.rename_journaled): the ETag
        # that its first save replaces (else it expects no object there).
        self.replaces: str | None = None
        self.attributes_changed = False
        self.mtime_set = False  # utimens was called: x-amz-meta-mtime is written
        self.written: ObjectHeaders | None = None  # the headers of the last save (with_attributes)
        # What the save running now may replace (object_headers): the ETag it checked, None: no object.
        self.replacing: str | None = None
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

    # ---- its record in the write-back journal (the record format: record.py)

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

    @property
    def waits_for_upload(self) -> bool:
        """Closed and journaled (--write-back): its background upload saves it, not a close."""
        return self.handles == 0 and self.record is not None

    # ---- changes

    def _spill(self) -> SpillFile:
        if self.spill is None:
            self.spill = self.wb.new_spill(self.base.size if self.base else 0)
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
                    if exc.errno != errno.ENOSPC or not self.wb.queue.others_queued(self):
                        raise FsError(exc.errno or errno.EIO, "LocalDisk", f"writing {self.key!r}: {exc}") from exc
                else:
                    self._touch(spill.size)
                    if self.stream is not None:
                        self.stream.wrote(offset, offset + len(data), spill)
                    return
            await self.wb.queue.wait_for_space(self.key)  # a full cache dir blocks writers

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
        if (
            set(changes) == {"mtime_ns"}
            and self.spill is not None
            and changes["mtime_ns"] >= self.opened_ns - 10**9
            and changes["mtime_ns"] % 10**9  # a whole second is tar setting the archive's time
        ):
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
        """Before its object is deleted or replaced under open handles: copy the bytes only S3 holds into
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
                self.wb.nursery,
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
    def state(self) -> UploadState:
        if self.lock.locked():
            return UploadState.SAVING
        if self.failure is not None:
            return UploadState.FAILED
        if self.queued:
            return UploadState.JOURNALED
        # open for writing: the kernel may hold written pages s3fuse has not received yet
        return UploadState.DIRTY if self.dirty or self.handles else UploadState.CLEAN

    @property
    def upload_state(self) -> str:
        """The xattr s3.upload_state: clean, dirty, uploading, or failed: why."""
        state = self.state
        return f"failed: {self.failure}" if state is UploadState.FAILED else state.shown

    @property
    def only_emptied(self) -> bool:
        """Created or truncated to nothing, and not written or changed since.

        A shell's '> file' opens, duplicates the descriptor and closes the original
        before it writes: saving at that close would store an empty object first (an
        extra PUT, and an extra version in a versioned bucket). Such a file is saved at
        its last close instead (release), or at the close that follows its writes.
        """
        return not (self.wrote or self.attributes_changed) and self.node.info.size == 0

    @property
    def shared(self) -> bool:
        """Other writable handles are open: a close() leaves the save to the last one.

        Processes that open, write and close one file by turns would otherwise each save
        the whole file, one after the other under its lock: in a random load of 4
        processes on moto (tests/randomload.py), the writes to the file they shared took
        10 s each on average, a quarter of all the operations' time (249 s with
        this rule, 565 s without). fsync() still saves at once.
        """
        return self.handles > 1

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
                with self.wb.tree.writing(self.node.path):
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
        self.written = None  # set by with_attributes for the headers this save writes
        if self.spill is None and not self.never_saved:  # attributes only: copy onto itself
            assert self.base is not None
            headers = await self.object_headers(needs_base=True)
            etag = await copy_object(
                self.wb.s3, self.key, self.key, self.base.size, self.wb.registry, headers, if_match=self.base.etag
            )
            self._saved(etag, self.base.size)
            return
        spill = self._spill()
        size = spill.size
        headers = None  # the end of a usable stream: it has its own
        if self.stream is None or not self.stream.usable:
            await self._drop_stream()
            headers = await self.object_headers(needs_base=spill.needs_base(0, size))
        guard = Guard(self.wb.s3, self.replacing, self.wb.registry)
        try:
            etag = await self._upload(spill, headers, guard)
        except FsError as exc:
            if not (guard.sent and refused(exc)):
                raise
            self._lost_race()
            etag = await self._upload(spill, headers, UNGUARDED)
        self._saved(etag, size)

    async def _upload(self, spill: SpillFile, headers: ObjectHeaders | None, guard: Guard) -> str:
        """The stream's end (``headers`` None), or the whole file from its spill file."""
        if headers is None:
            assert self.stream is not None
            return await self.stream.finish(spill.size, guard)
        return await save_spill(
            self.wb.s3,
            self.wb.registry,
            self.wb.zeros,
            self.key,
            spill,
            headers,
            self.base,
            self._fetch_base,
            self.wb.opts.cache.block_size,
            guard,
        )

    def _lost_race(self) -> None:
        """A save's guard was refused: another writer created, replaced or deleted the object since this
        save checked it. ESTALE (EEXIST for a name created here) under --on-conflict fail, and the
        data stays here (lost+found at the last close); else this save replaces it, reported."""
        METRICS.count("s3fuse_write_conflicts_total")
        created = self.replacing is None
        change = "created" if created else "replaced or deleted"
        what = f"{self.key!r} was {change} in S3 by another writer during this save"
        if self.wb.opts.write.on_conflict == "fail":
            raise FsError(errno.EEXIST if created else errno.ESTALE, "Conflict", f"{what} (--on-conflict fail)")
        log.warning("%s; overwriting it (--on-conflict overwrite)", what)

    async def object_headers(self, needs_base: bool) -> ObjectHeaders:
        """Headers for the new object: the current object's, with this file's POSIX attributes.

        Asking S3 for them (HeadObject) also detects a conflict: the object changed
        since it was opened here.
        """
        headers = ObjectHeaders(guess_content_type(self.key))
        self.replacing = self.base.etag if self.base is not None else self.replaces
        if self.base is not None and self.base.etag is not None:
            if self.wb.opts.write.on_conflict != "fail":
                known = self.wb.recently_saved(self.key, self.base.etag)
                if known is not None:  # saved here a moment ago: its headers are known, no HEAD
                    return self.with_attributes(known)
            try:
                current = await self.wb.s3.call("head_object", Key=self.key)
            except FsError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                current = None
            if current is None or current.get("ETag") != self.base.etag:
                self._conflict(needs_base)
                self.replacing = None if current is None else current["ETag"]  # decided: overwrite that one
            if current is not None:
                headers = ObjectHeaders.from_head(current)
                self._adopt_stored_attributes(current)
        return self.with_attributes(headers)

    def _adopt_stored_attributes(self, head: dict[str, Any]) -> None:
        """Attributes the object's headers hold and nobody changed here are kept as they are."""
        if self.node.info.from_head:
            return
        stored = from_head(head)
        fields = set(POSIX_FIELDS) - ({"mtime_ns"} if self.spill is not None else set())
        keep = {f: getattr(stored, f) for f in fields - self.changed if getattr(stored, f) is not None}
        self.node.info = dataclasses.replace(self.node.info, **keep, from_head=True)

    def with_attributes(self, headers: ObjectHeaders) -> ObjectHeaders:
        """headers with this file's current POSIX attributes written over them."""
        # a stored mtime is rewritten only when it changed: set here, or the bytes changed
        rewrite_mtime = self.mtime_set or (META_MTIME in headers.metadata and self.spill is not None)
        posix = self.node.info.posix_headers(with_mtime=rewrite_mtime)
        final = self.header_changes.applied_to(dataclasses.replace(headers, metadata={**headers.metadata, **posix}))
        self.written = final
        return final

    @property
    def written_headers(self) -> dict[str, str] | None:
        """What the last save's headers say of the file's attributes: the attribute index records it."""
        if self.written is None:
            return None
        return {name: self.written.metadata[name] for name in POSIX_HEADERS if name in self.written.metadata}

    def _conflict(self, needs_base: bool) -> None:
        what = f"{self.key!r} changed in S3 since it was opened here"
        if needs_base:
            raise FsError(errno.ESTALE, "Conflict", f"{what}; its unchanged bytes can no longer be copied")
        if self.wb.opts.write.on_conflict == "fail":
            raise FsError(errno.ESTALE, "Conflict", f"{what} (--on-conflict fail)")
        log.warning("%s; overwriting it (--on-conflict overwrite)", what)

    def _saved(self, etag: str, size: int) -> None:
        # Namespace.added stamps it with the time of the save.
        info = dataclasses.replace(
            self.node.info, size=size, etag=etag, last_modified_ns=None, from_head=True, headers=self.written_headers
        )
        self._forget_record()  # before its spill file goes: a record never names a missing file
        if self.spill is not None:
            self.spill.close()
        self.spill, self.stream, self.base = None, None, info
        self.never_saved = False
        self._attributes_saved()
        if self.written is not None:
            self.wb.remember_saved(self.key, etag, self.written)
        self.node.kernel_etag = etag  # the kernel's pages hold exactly what was written
        self.wb.lost.kept.pop(self.node.path, None)
        self.wb.tree.added(self.node.path, info)

    def _attributes_saved(self) -> None:
        if self.attribute_edits == self._edits_saved:
            self.attributes_changed = False
            self.changed.clear()
            self.header_changes = HeaderChanges()

    @property
    def only_attributes(self) -> bool:
        """Saved before, and changed since only in attributes (chmod, chown, utimens, setfattr);
        perhaps journaled so (``WriteBack.hold``, or a close under --write-back with no write)."""
        return (
            self.attributes_changed
            and self.spill is None
            and self.stream is None
            and not self.never_saved
            and not self.unlinked
            and self.base is not None
        )

    async def copy_to(self, new_key: str) -> str | None:
        """Renaming a file whose only unsaved changes are attributes (rsync's temporary file, whose
        changes ``WriteBack.hold`` journaled): one CopyObject to the new name carries them, instead of
        a copy onto itself first. Returns the new object's ETag; None if the file is no longer such
        a file. Its record goes before the caller deletes the old name: a crash between the two
        leaves the file at both names, never the changes lost."""
        async with self.lock:
            if not self.only_attributes:
                return None
            assert self.base is not None
            self._edits_saved = self.attribute_edits
            headers = await self.object_headers(needs_base=True)
            etag = await copy_object(
                self.wb.s3, self.key, new_key, self.base.size, self.wb.registry, headers, if_match=self.base.etag
            )
            self._attributes_saved()
            if not self.dirty:
                self._forget_record()
            self.node.info = dataclasses.replace(
                self.node.info, etag=etag, last_modified_ns=None, headers=self.written_headers
            )
            self.base = self.node.info
            self.wb.remember_saved(new_key, etag, headers)
            return etag

    async def _drop_stream(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            await stream.abort()

    # ---- giving up

    def keep_locally(self, reason: str) -> None:
        """The last handle closed with data S3 does not have: keep it for a human."""
        if self.spill is None or self.unlinked:
            log.error("could not save %r (%s); its attribute changes are lost", self.key, reason)
            self.wb.lost.kept[self.node.path] = f"{reason}; attribute changes lost"
            self._forget_record()
            return
        path = self.spill.keep(lambda spill_path: self.wb.lost.move(spill_path, quote(self.key, safe="")))
        self._forget_record()  # after the move: a crash between them keeps the data twice, never zero times
        METRICS.count("s3fuse_files_kept_total")
        self.wb.lost.kept[self.node.path] = f"{reason}; data kept at {path}"
        partial = "" if self.spill.base_limit == 0 else " (only the ranges written here; the rest is the old object)"
        log.error("could not save %r to S3 (%s); its data is kept at %s%s", self.key, reason, path, partial)
        self.spill = None

    def close(self, keep_spill: bool = False) -> None:
        """Done with it; ``keep_spill``: its spill file stays for the journal's record."""
        if self.spill is not None:
            self.spill.close(remove=not keep_spill)
            self.spill = None
