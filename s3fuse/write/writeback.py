"""Every file open for writing, and where its data goes: ``WriteBack``.

Owns the registry of ``OpenFile``s by inode (every writable handle of an inode
shares one), what the rest of the file system asks of them (attributes and headers
not saved yet, the files a listing must show before S3 has them, whether a change
must wait for a save), and the last close: it saves what is left, or keeps it in
lost+found. With ``--write-back``, close() instead makes the file's state durable in
the journal and its upload runs in the background (queue.py); the records of a
daemon that died are adopted by the next one, or by ``s3fuse recover``, and uploaded
the same way.

``WriteBack.create`` makes one: taking the journal's lock and adopting its records
are I/O, done there and not in ``__init__``. What it needs of the namespace it writes
into is ``Tree``; ``s3fuse recover`` passes none and gets ``Detached``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from typing import Any, Protocol

import trio
from cachetools import TTLCache

from ..blockcache import BlockCache
from ..errors import FsError
from ..inodes import Node
from ..metadata import EntryInfo
from ..metrics import METRICS
from ..names import at_or_below, split
from ..options import Config
from ..s3client import S3Client
from .journal import Journal, JournalInUse
from .lostfound import LostAndFound, report_leftovers
from .openfile import OpenFile
from .queue import UploadQueue
from .record import from_record, to_record
from .spill import REMOVER, SpillFile
from .upload import HeaderChanges, ObjectHeaders, UploadRegistry
from .zeros import ZeroObjects

log = logging.getLogger(__name__)


def connection_of(opts: Config) -> dict[str, Any]:
    """How to reach the bucket, for ``s3fuse recover`` (never credentials)."""
    return {name: getattr(opts.s3, name) for name in ("endpoint_url", "region", "profile", "addressing_style")}


class Tree(Protocol):
    """What the write path needs of the namespace it writes into (``namespace.Namespace``)."""

    def added(self, path: str, info: EntryInfo) -> Node:
        """A file now exists with these attributes (saved, or adopted from the journal); its node."""
        ...

    def writer_gone(self, node: Node) -> None:
        """One of ``node.writers`` (a writable handle, or a background upload) is done with it."""
        ...

    def writing(self, path: str) -> contextlib.AbstractContextManager[None]:
        """Around the requests of a save, which make a new version of path's object."""
        ...


class Detached:
    """The ``Tree`` of ``s3fuse recover``: a node for each file it uploads, and no caches or kernel to tell."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}

    def added(self, path: str, info: EntryInfo) -> Node:
        node = self.nodes.get(path)
        if node is None:
            node = self.nodes[path] = Node(len(self.nodes) + 1, path, info)
        node.info = info
        return node

    def writer_gone(self, node: Node) -> None:
        """Nothing to forget: no kernel holds the node."""

    def writing(self, path: str) -> contextlib.AbstractContextManager[None]:
        """No attribute index to keep."""
        return contextlib.nullcontext()


RECENT_SAVE = 2.0  # seconds: a save this recent is "moments ago", and its headers are known (no HEAD)


class WriteBack:
    """Every file open for writing, by inode, and the places their data may go. Made by ``create``."""

    def __init__(self, s3: S3Client, blocks: BlockCache, opts: Config, nursery: trio.Nursery, tree: Tree) -> None:
        self.s3 = s3
        self.blocks = blocks
        self.opts = opts
        self.nursery = nursery  # for streamed parts, reads of the old object and background uploads
        # key -> (ETag, headers) of what this mount saved moments ago
        self._recent: TTLCache[str, tuple[str, ObjectHeaders]] = TTLCache(maxsize=4096, ttl=RECENT_SAVE)
        self.tree = tree
        self.registry = UploadRegistry(opts.write.cache_dir, opts.mount.bucket_name)
        self.zeros = ZeroObjects(s3, self.registry)  # holes are copied from these
        self.write_back: bool = opts.write.write_back
        self.journal = Journal(opts.write.cache_dir, opts.mount.bucket_name)
        # Under --write-back spill files live in the journal, which records name them.
        self.spill_dir = (
            self.journal.directory if self.write_back else os.path.join(opts.write.cache_dir, "spill", str(os.getpid()))
        )
        self.lost = LostAndFound(opts.write.cache_dir)
        self.files: dict[int, OpenFile] = {}
        self.saving = 0  # saves running now
        self.queue = UploadQueue(
            self.files,
            nursery,
            opts.write.write_back_uploads,
            opts.write.write_back_limit,
            opts.write.cache_dir,
            self._upload_ended,
        )
        self.adopted: list[OpenFile] = []  # adopted from the journal, until start() queues them
        self.recovering: set[OpenFile] = set()  # adopted from the journal, not uploaded yet

    @classmethod
    async def create(
        cls,
        s3: S3Client,
        blocks: BlockCache,
        opts: Config,
        nursery: trio.Nursery,
        tree: Tree | None = None,
    ) -> WriteBack:
        """The write-back of a bucket (``opts``), its background work in ``nursery``.

        Takes the journal's lock (with ``--write-back``, or when the journal holds records
        of a daemon that died; JournalInUse if another process owns it under
        ``--write-back``) and adopts its records: their files are pending here, and
        ``start`` queues their uploads. ``tree``: the namespace files are added to;
        None for a write-back of its own (``Detached``).
        """
        wb = cls(s3, blocks, opts, nursery, tree if tree is not None else Detached())
        records = await trio.to_thread.run_sync(wb._open_journal)
        wb._adopt(records)
        METRICS.add_gauges(wb.gauges)
        return wb

    def gauges(self) -> dict[str, float]:
        return {
            "s3fuse_files_open_for_writing": sum(of.handles > 0 for of in self.files.values()),
            "s3fuse_dirty_files": sum(of.dirty for of in self.files.values()),
            "s3fuse_uploads_in_progress": self.saving,
            "s3fuse_files_waiting_for_upload": self.queue.count,
            "s3fuse_journal_bytes": self.queue.journaled_bytes(),
        }

    # ---- the journal (--write-back)

    def _open_journal(self) -> list[dict[str, Any]]:
        """Own the journal if there is a reason to; its records, if owned. Runs in a worker thread."""
        if self.write_back or self.journal.has_records():
            try:
                self.journal.acquire(connection_of(self.opts))
            except JournalInUse as exc:
                if self.write_back:
                    raise
                log.warning("%s; its records are left to that process", exc)
        report_leftovers(os.path.dirname(self.spill_dir))
        if not self.journal.owned:
            return []
        records = self.journal.records()
        self.lost.take_unacknowledged(self.journal, records)
        return records

    def _adopt(self, records: list[dict[str, Any]]) -> None:
        """The files an earlier process journaled and did not upload: pending here now."""
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
                of = from_record(self, key[len(prefix) :], record)
            except OSError as exc:
                log.error("write-back record %s of %r cannot be replayed: %s; removed", record["name"], key, exc)
                self.journal.remove(record["name"])
                continue
            self.files[of.node.inode] = of
            self.adopted.append(of)
        if self.adopted:
            log.warning(
                "resuming %d upload(s) that an earlier s3fuse process acknowledged and did not finish (journal %s)",
                len(self.adopted), self.journal.directory,
            )  # fmt: skip
        self.recovering = set(self.adopted)

    def start(self) -> None:
        """Background work can start: the adopted files' uploads are queued."""
        for of in self.adopted:
            self._upload_later(of)
        self.adopted = []

    async def replay(self) -> None:
        """s3fuse recover: upload every adopted file once; what fails stays in the journal."""
        self.queue.stopping.set()
        self.start()
        await self.shutdown()

    async def acknowledge(self, of: OpenFile) -> None:
        """close() under --write-back: once this returns, the file's state survives a crash."""
        while True:
            async with of.lock:
                if of.unlinked or not of.dirty:
                    return
                try:
                    record, fd = to_record(of), of.spill.fd if of.spill is not None else None
                    name = await trio.to_thread.run_sync(self.journal.write, record, fd)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC or not self.queue.others_queued(of):
                        raise FsError(exc.errno or errno.EIO, "Journal", f"journaling {of.key!r}: {exc}") from exc
                else:
                    of.replace_record(name)
                    break
            await self.queue.wait_for_space(of.key)
        await self.queue.hold_back(of)

    async def journal_renamed(self, of: OpenFile, new_key: str, replaces: str | None) -> None:
        """A journaled file that was never uploaded is about to be renamed to new_key, where it replaces
        the object ``replaces`` (an ETag; None: none): its record is journaled anew under that key
        first (the caller holds ``of.lock``), so a crash uploads it there or, before this returns,
        where it was; never at both."""
        record, fd = to_record(of), of.spill.fd if of.spill is not None else None
        # moved_from: a crash before the old record goes uploads it at one of the two names only
        record.update(key=new_key, moved_from=record["key"], replaces=replaces)
        try:
            name = await trio.to_thread.run_sync(self.journal.write, record, fd)
        except OSError as exc:
            raise FsError(exc.errno or errno.EIO, "Journal", f"journaling {new_key!r}: {exc}") from exc
        of.replaces = replaces
        of.replace_record(name)

    def _upload_later(self, of: OpenFile) -> None:
        if of.queued:
            return  # the upload running now sees the new state when its save ends
        of.node.writers += 1  # until S3 has it, the local attributes are the file's
        self.queue.add(of)

    def _upload_ended(self, of: OpenFile) -> None:
        if of.handles == 0 and of.record is None and self.files.get(of.node.inode) is of:
            of.close()
            del self.files[of.node.inode]
        self.tree.writer_gone(of.node)
        if not self.write_back and not any(other.record for other in self.files.values()):
            self.journal.release()  # held changes or adopted records only: another mount may take it now
        if of in self.recovering:
            self.recovering.discard(of)
            if of.record is None and not of.unlinked:
                log.info("recovered %r from the write-back journal", of.key)
            if not self.recovering:
                log.info("every upload resumed from the write-back journal has ended")

    def new_spill(self, base_size: int) -> SpillFile:
        # Under --write-back close() makes the spill file durable: no use holding it in memory.
        return SpillFile(self.spill_dir, base_size, in_memory=not self.write_back)

    def open(self, node: Node, exists: bool) -> OpenFile:
        """A writable handle on node: the inode's OpenFile, shared with its other handles."""
        of = self.files.get(node.inode)
        if of is None:
            of = self.files[node.inode] = OpenFile(self, node, exists)
        of.handles += 1
        of.node.writers += 1
        return of

    def remember_saved(self, key: str, etag: str, headers: ObjectHeaders) -> None:
        self._recent[key] = (etag, headers)

    def recently_saved(self, key: str, etag: str | None) -> ObjectHeaders | None:
        """The headers of the object version ``etag`` of key, if this mount saved it moments ago."""
        known = self._recent.get(key)
        return known[1] if known is not None and known[0] == etag else None

    async def hold(self, of: OpenFile) -> bool:
        """Journal an attribute change of a file this mount saved moments ago, instead of saving it now.

        rsync, cp -p and tar x close a file, then set its times, owner and mode, and rsync
        renames it: a save per call costs a CopyObject each (5 requests a file with the
        rename). Held, the changes wait in the journal (durable, as under --write-back: a
        crash leaves them to the next mount or 's3fuse recover') for the queue's START_DELAY:
        those that follow join them, a rename carries them in its copy (OpenFile.copy_to),
        and what is left is one CopyObject onto the object. PutObject, CopyObject and
        DeleteObject for rsync's file. False (the caller saves now): not such a change, or
        another process owns the journal. The caller releases ``of``, which queues it.
        Not xattrs (``setfattr``): none of those tools sets one after a close, and a program that
        does may be about to read the object's headers with another S3 client.
        """
        if (
            not of.only_attributes
            or of.header_changes != HeaderChanges()
            or self.recently_saved(of.key, of.base and of.base.etag) is None
        ):
            return False
        if not self.journal.owned:
            try:
                await trio.to_thread.run_sync(self.journal.acquire, connection_of(self.opts))
            except JournalInUse:
                return False
        await self.acknowledge(of)
        return True

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
        kept = self.lost.kept.get(node.path)
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
        if of is None or not of.waits_for_upload:
            return
        async with of.lock:
            if of.record is not None and of.spill is not None and not of.forked:
                await trio.to_thread.run_sync(of.fork_spill)

    async def settled(self, node: Node) -> None:
        """Wait for the save a last close started (release), or a journaled file's upload,
        so later changes apply after it."""
        of = self.files.get(node.inode)
        if of is not None:
            await self.queue.uploaded(of)
        of = self.files.get(node.inode)  # gone if its upload ended it
        if of is not None and of.handles == 0:
            async with of.lock:
                pass

    async def release(self, of: OpenFile) -> None:
        """One writable handle is gone; the last one saves what is left or keeps it locally."""
        of.handles -= 1
        if of.handles == 0 and of.record is None:
            await self.hold(of)  # a utimens that came before the kernel's release of rsync's file
        if of.waits_for_upload:
            self._upload_later(of)  # journaled (--write-back): uploaded in the background
        self.tree.writer_gone(of.node)
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
        self.queue.stopping.set()
        for of in list(self.files.values()):
            if of.record is None and not of.queued:
                await self._last_close(of, final=True)
        await self.queue.drain()
        left = [of for of in self.files.values() if of.record is not None]
        for of in left:
            of.close(keep_spill=True)
        if left:
            log.error(
                "%d file(s) could not be uploaded and stay in the write-back journal %s; the next mount "
                "with this cache dir, or 's3fuse recover %s', uploads them",
                len(left), self.journal.directory, self.opts.write.cache_dir,
            )  # fmt: skip
        await self.zeros.remove()
        self.journal.release()
        await trio.to_thread.run_sync(REMOVER.wait)  # the spill files of the last saves, removed apart
        if not self.write_back:
            with contextlib.suppress(OSError):  # only if empty: a kept file stays where it is
                os.rmdir(self.spill_dir)
