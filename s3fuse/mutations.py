"""Changes to the tree: mkdir, rmdir, unlink, rename, symlink, mknod.

Owns how each maps to S3 requests (a directory is a ``dir/`` marker object, a
rename is copies then deletes, a symlink is an object holding its target with an
S_IFLNK mode, a FIFO, socket or device node an empty object with its mode, as
s3fs-fuse writes them) and keeps the namespace caches true to
every change, so what was just done is seen without asking S3 again.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import stat
import time
from typing import Any

import trio

from .blockcache import BlockCache
from .errors import FsError
from .inodes import Node
from .metadata import EntryInfo
from .names import dir_prefix, file_key
from .namespace import Namespace
from .options import Config
from .pager import Pager
from .renamelog import RenameLog
from .s3client import S3Client
from .write import OpenFile, WriteBack
from .write.conditions import PUT, Guard, refused
from .write.upload import (
    PARALLEL_COPIES,
    ObjectHeaders,
    copy_object,
    delete_keys,
    gather,
    guess_content_type,
    put_object,
    put_object_answer,
)

log = logging.getLogger(__name__)

DIRECTORY_CONTENT_TYPE = "application/x-directory"  # what s3fs-fuse gives its markers
# A renamed directory's objects are deleted in a few batches while its copies go on, not
# all after them: SeaweedFS spends 0.4 ms of CPU per key of a DeleteObjects (40 ms for 100
# keys), which then overlaps the copies. mv of 100 keys on SeaweedFS, 14 rounds alternating
# with the single DeleteObjects after the copies: median 0.169 s against 0.178 s.
DELETE_BATCHES_PER_PAGE = 4
MIN_DELETE_BATCH = 25


def refuse(code: int, message: str, *args: Any) -> FsError:
    """An error that is the file system's answer, not a failed request."""
    return FsError(code, errno.errorcode.get(code, "Error"), message % args)


class Mutations:
    def __init__(self, s3: S3Client, ns: Namespace, wb: WriteBack, blocks: BlockCache, opts: Config) -> None:
        self.s3 = s3
        self.ns = ns
        self.wb = wb
        self.blocks = blocks
        self.prefix: str = opts.mount.prefix
        self.exclusive = opts.write.on_conflict == "fail"  # creates are exclusive across mounts
        self.renames = RenameLog(opts.write.cache_dir, opts.mount.bucket_name)

    def _marker_key(self, path: str) -> str:
        return dir_prefix(self.prefix, path)

    # ---- creating

    async def mkdir(self, path: str, info: EntryInfo) -> Node:
        # The marker and the new directory's empty index go out together: one round trip, not
        # two (fsbench, S3-like network: tar x's 50 directories took 57 ms each, a PutObject 30).
        # A failure of the index's write is logged, not mkdir's; a failed marker fails mkdir
        # and may leave that empty index behind, which only makes a listing HEAD the entries
        # of a directory made there later by another tool.
        await gather([lambda: self._put_marker(path, info), lambda: self.ns.index.create(path)], 2)
        node = self.ns.added(path, info)
        self.ns.known_empty(path)  # new, so known to be empty
        return node

    async def symlink(self, path: str, target: bytes, info: EntryInfo) -> Node:
        return await self._put_entry(path, target, info)

    async def mknod(self, path: str, info: EntryInfo) -> Node:
        """A FIFO, socket or device node: an empty object whose headers say what it is."""
        return await self._put_entry(path, b"", info)

    async def claim(self, path: str, info: EntryInfo) -> Node:
        """An O_EXCL create under --on-conflict fail: the new file's empty object, put now with
        If-None-Match: *, so that of two mounts creating one name only one succeeds (EEXIST for
        the other). Other creates reach S3 at the file's first save, with one PutObject."""
        return await self._put_entry(path, b"", info, guess_content_type(path))

    async def _put_entry(
        self, path: str, content: bytes, info: EntryInfo, content_type: str = "application/octet-stream"
    ) -> Node:
        """An object that is all its headers say (and, for a symlink, its target); under
        --on-conflict fail put only if the name is free in S3 (EEXIST if it is not)."""
        headers = ObjectHeaders(content_type, info.posix_headers(with_mtime=True))
        key = file_key(self.prefix, path)
        guard = Guard(self.s3 if self.exclusive else None, None)
        with self.ns.writing(path):
            try:
                answer = await put_object_answer(self.s3, key, content, headers, await guard.params(PUT))
            except FsError as exc:
                if not (guard.sent and refused(exc)):
                    raise
                self.ns.unsure(path)
                raise refuse(errno.EEXIST, "%r was created in S3 by another writer", key) from exc
        info.etag = answer["ETag"]
        info.headers = dict(headers.metadata)  # what the attribute index records of it
        if content:
            self.blocks.put((key, info.etag, 0), content)  # readlink needs no GET
        return self.ns.added(path, info)

    async def _put_marker(self, path: str, info: EntryInfo) -> None:
        headers = ObjectHeaders(DIRECTORY_CONTENT_TYPE, info.posix_headers(with_mtime=True))
        await put_object(self.s3, self._marker_key(path), b"", headers)

    # ---- removing

    async def unlink(self, node: Node) -> None:
        of = self.wb.files.get(node.inode)
        if of is not None:
            await _let_go(of)
        if of is None or not of.never_saved:  # a file created here and not saved yet is not in S3
            await self.s3.call("delete_object", Key=file_key(self.prefix, node.path))
        self.ns.removed(node.path, is_dir=False)

    async def rmdir(self, node: Node) -> None:
        await self._ensure_empty(node.path)
        marker = self._marker_key(node.path)
        index = self.ns.index.keys_below([marker])
        if index:
            await delete_keys(self.s3, [marker, *index])
        else:
            await self.s3.call("delete_object", Key=marker)
        self.ns.removed(node.path, is_dir=True)

    async def _ensure_empty(self, path: str) -> None:
        marker = self._marker_key(path)
        page = await self.s3.list_page(Prefix=marker, MaxKeys=2)
        if any(obj["Key"] != marker for obj in page.get("Contents", ())) or any(
            of.never_saved for of in self.wb.under(path)
        ):
            raise refuse(errno.ENOTEMPTY, "directory %r is not empty", path)

    # ---- renaming

    async def rename(self, node: Node, new_path: str, target: Node | None) -> None:
        """Move node to new_path, replacing target (already checked to be compatible)."""
        old_path = node.path
        await self._replacing(target)
        if node.info.is_dir:
            try:
                await self._rename_dir(old_path, new_path)
            except BaseException:
                # Some keys may be moved already: what the caches say of either tree is unsure.
                self.ns.unsure(old_path)
                self.ns.unsure(new_path)
                raise
            info = node.info
        else:
            etag = await self._rename_file(node, new_path)
            # a copy is a new write: its LastModified is learnt from the next listing
            info = dataclasses.replace(node.info, etag=etag, last_modified_ns=None)
        self.ns.moved(old_path, new_path, info)

    async def _replacing(self, target: Node | None) -> None:
        if target is not None:
            if target.info.is_dir:
                await self._ensure_empty(target.path)
            for of in self.wb.under(target.path):
                await _let_go(of)  # replaced: its pending data must not reach the new object

    async def rename_journaled(self, node: Node, new_path: str, target: Node | None) -> bool:
        """--write-back: a file journaled and never in S3 yet is renamed without a request (rsync's
        temporary file): its record is journaled anew under the new name, where its upload then goes.
        False (nothing done) for any other file."""
        of = self.wb.files.get(node.inode)
        if of is None or node.info.is_dir or not (of.waits_for_upload and of.never_saved):
            return False
        async with of.lock:  # its upload holds it while it saves
            if not (of.waits_for_upload and of.never_saved and of.dirty and not of.unlinked):
                return False
            await self._replacing(target)
            replaces = target.info.etag if target is not None else None
            await self.wb.journal_renamed(of, file_key(self.prefix, new_path), replaces)
            self.ns.moved(node.path, new_path, node.info)
        return True

    async def _rename_file(self, node: Node, new_path: str) -> str:
        of = self.wb.files.get(node.inode)
        old_key, new_key = file_key(self.prefix, node.path), file_key(self.prefix, new_path)
        with self.ns.writing(new_path):
            # attribute changes alone (rsync's pattern) go with the copy; else it carries what was saved
            etag = await of.copy_to(new_key) if of is not None else None
            if etag is None:
                if of is not None:
                    await of.save()  # the copy must carry the bytes written so far
                etag = await copy_object(
                    self.s3, old_key, new_key, node.info.size, self.wb.registry, if_match=node.info.etag
                )
        await self.s3.call("delete_object", Key=old_key)
        return etag

    async def _rename_dir(self, old_path: str, new_path: str) -> None:
        """The move of a directory's keys, its intent in the rename log while it runs: a crash
        leaves it to the next mount (``finish_renames``); an error leaves it to the caller."""
        for of in self.wb.under(old_path):
            await of.save()
        old, new = self._marker_key(old_path), self._marker_key(new_path)
        intent = await trio.to_thread.run_sync(self.renames.begin, old, new)
        try:
            await self._move_dir(old_path, new_path)
        finally:
            self.renames.end(intent)

    async def finish_renames(self) -> None:
        """Report and finish the directory renames that a dead daemon with this cache dir began
        (before the mount serves a request): what is still under the old name is moved."""
        for intent, record in self.renames.cut_short():
            old, new = record["old"], record["new"]
            if not (old.startswith(self.prefix) and new.startswith(self.prefix)):
                continue  # another --prefix's: its own mount finishes it
            old_path, new_path = old[len(self.prefix) :].rstrip("/"), new[len(self.prefix) :].rstrip("/")
            log.warning("the rename of %r to %r was cut short (s3fuse process %s died); finishing it",
                        old_path, new_path, record["pid"])  # fmt: skip
            try:
                await self._move_dir(old_path, new_path)
            except FsError as exc:
                log.error("could not finish the rename of %r to %r (%s): the next mount tries again",
                          old_path, new_path, exc)  # fmt: skip
                continue
            self.renames.end(intent)

    async def _move_dir(self, old_path: str, new_path: str) -> None:
        """Parallel copies, the sources deleted in batches as they finish, one listing page (1000
        keys) at a time; the directory markers last, deepest first."""
        old, new = self._marker_key(old_path), self._marker_key(new_path)
        pages = Pager(self.s3, "list_objects_v2", {"Prefix": old, "MaxKeys": 1000})
        moved = 0
        started = time.monotonic()
        directories: set[str] = set()  # every directory below old, as a marker key
        while not pages.done:
            objects = (await pages.next_page()).get("Contents", [])
            found = {old}
            for obj in objects:
                if obj["Key"].endswith("/"):
                    found.add(obj["Key"])
                parent = obj["Key"].rstrip("/").rpartition("/")[0]
                while len(parent) >= len(old):
                    found.add(parent + "/")
                    parent = parent.rpartition("/")[0]
            await self._index_new_directories(sorted(found - directories), old, new)
            directories |= found
            await self._move_page(objects, old, new)
            moved += len(objects)
            if not pages.done:  # the mv waiting on it shows nothing: the log says how far it got
                log.info("renaming %r to %r: %d objects moved so far (%.0f s)", old_path, new_path, moved,
                         time.monotonic() - started)  # fmt: skip
        # Servers that keep directories as such (SeaweedFS) do not list every marker
        # and keep emptied directories: delete them all, deepest first (on S3 the
        # markers not listed do not exist, and deleting them is a no-op).
        # Their attribute indexes move with them (after the copies: they date the copies).
        await self.ns.index.move_tree([(key, new + key[len(old) :]) for key in directories])
        await delete_keys(
            self.s3,
            sorted(directories, key=lambda key: -key.count("/")) + self.ns.index.keys_below(sorted(directories)),
        )
        log.info("renamed %r to %r: %d objects in %.1f s", old_path, new_path, moved, time.monotonic() - started)

    async def _index_new_directories(self, keys: list[str], old: str, new: str) -> None:
        """An attribute index object in each destination directory before anything is copied there:
        the moved entries reach it seconds after the rename (``move_tree`` queues them), and if the
        daemon dies before, the next mount then HEADs them instead of showing the mount defaults (a
        symlink as a file, a chmod undone)."""
        paths = [(new + key[len(old) :])[len(self.prefix) :].rstrip("/") for key in keys]
        await gather((lambda path=path: self.ns.index.create(path) for path in paths), PARALLEL_COPIES)  # type: ignore[misc]

    async def _move_page(self, objects: list[dict[str, Any]], old: str, new: str) -> None:
        """Copy one listing page's objects from under ``old`` to under ``new``; the sources
        are deleted in a few batches as their copies finish, markers excepted."""
        copied: list[str] = []
        batch = max(MIN_DELETE_BATCH, len(objects) // DELETE_BATCHES_PER_PAGE)

        async def move(obj: dict[str, Any]) -> None:
            await self._copy_key(obj, new + obj["Key"][len(old) :])
            if obj["Key"].endswith("/"):
                return  # a marker goes with the other directories, after what is in them
            copied.append(obj["Key"])
            if len(copied) >= batch:
                done = copied[:]
                copied.clear()
                await delete_keys(self.s3, done)

        await gather((lambda obj=obj: move(obj) for obj in objects), PARALLEL_COPIES)  # type: ignore[misc]
        await delete_keys(self.s3, copied)

    async def _copy_key(self, obj: dict[str, Any], new_key: str) -> None:
        if obj["Key"].endswith("/"):
            # A marker is written anew: servers that keep directories as such
            # (SeaweedFS) cannot copy one.
            head = await self.s3.call("head_object", Key=obj["Key"])
            await put_object(self.s3, new_key, b"", ObjectHeaders.from_head(head))
            return
        await copy_object(self.s3, obj["Key"], new_key, int(obj.get("Size", 0)), self.wb.registry)


def new_entry(kind: int, mode: int, uid: int, gid: int, size: int = 0, rdev: int | None = None) -> EntryInfo:
    """Attributes of an entry created through the mount (rdev: a device node's number)."""
    return EntryInfo(
        is_dir=kind == stat.S_IFDIR,
        size=size,
        mtime_ns=time.time_ns(),
        mode=kind | stat.S_IMODE(mode),
        uid=uid,
        gid=gid,
        rdev=rdev,
        from_head=True,
    )


async def _let_go(of: OpenFile) -> None:
    """A file's name goes (unlink, or a rename over it): its open handles keep its bytes, and a save
    in flight (a held chmod's copy onto itself, say) ends before the caller deletes or replaces the
    object, so it cannot re-create the one or carry its headers onto the other afterwards."""
    async with of.lock:
        await of.keep_content()
        of.unlink()
