"""The attribute index: exact POSIX attributes at the cost of a listing.

A listing carries no object headers, so without help a mount either shows default
attributes for what it lists or sends a HeadObject per entry. This module owns the
small objects that make listings exact: one JSON object per directory s3fuse changed,
under the bucket's reserved prefix ``.s3fuse/index/`` (hidden from the mount), named by
a hash of the directory's key prefix (a flat name: SeaweedFS could not hold a file and a
directory of one name, which a path-shaped name would risk). For each entry written
through s3fuse it records the object version (ETag and size), the latest server time
that version can be dated (``until``), and the POSIX headers the version carries
(``x-amz-meta-mode`` and the others of ``metadata.POSIX_HEADERS``); for a directory, its
attributes (which live only here after ``mkdir``: rewriting a marker per ``chmod`` would
cost a PutObject each, and listings do not show markers' headers anyway).

The rules that keep the object's own headers the truth:

- An entry is used only while the listing agrees with it: same ETag, same size, and a
  LastModified no later than ``until``. A metadata-only rewrite by another tool keeps the
  ETag but dates the object later; an older index written over a newer one (a server
  without conditional writes) keeps older ``until`` stamps. Either way the entry is not
  used and the object's headers decide.
- An index object exists for a directory before s3fuse changes anything in it
  (``prepare``; ``mkdir`` writes the new directory's beside its marker). So an entry the
  index does not vouch for, in a directory that has one, is something written after the
  index last was (a crash before the batched write, another mount, another tool): the
  directory listing HEADs just those (``needs_head``) and records what it learnt. A
  directory with no index (written by other tools only) is listed as before: defaults
  until a HEAD, or ``--posix-metadata``.
- This mount's own changes vouch as the index will once they are written: those pending,
  and those of a write on its way (a listing then, as ``du -s`` right after ``tar x``,
  HEADed each of them).
- An entry is written into the index only once it is ``AGE`` old (or at unmount) and no
  write of its object is in flight (``writing``). So any later version of the object, whose own entry a crash
  may lose, is dated after the written entry's ``until``: two versions with the same ETag
  and size in one second cannot be taken for each other.
- Changes are batched per directory and written with ``If-Match``
  (``If-None-Match: *`` for a new one); a 412 means another mount wrote it meanwhile: read
  it again, apply this mount's changes to it, write again. Where the server ignores those
  headers (probed once per mount, on an object of our own), the write is plain and two
  mounts can lose each other's index entries, which then only cost HEADs (see above).
- Nothing of this can fail a file operation: a failed read of an index is no index; a
  failed write is retried, then dropped with a warning (the entries are then HEADed).

``until`` is a server time. For a version this mount wrote, the ``Date`` of an index
request's answer gives the offset of the server's clock to ours, rounded up (a Date is whole
seconds, stamped after the request was sent), so ``until`` is never earlier than the
LastModified of the version it describes. For a version learnt from S3 (a HEAD), it is that
version's own LastModified: another mount may rewrite the object a moment after the HEAD.
A metadata-only rewrite by another tool within that second goes unnoticed until a HEAD.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import errno
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import trio
from cachetools import LRUCache

from .errors import FsError
from .metadata import EntryInfo, apply_posix_metadata
from .names import dir_prefix
from .s3client import S3Client
from .write.conditions import PUT, Guard, refused
from .write.upload import ObjectHeaders, put_object_answer

log = logging.getLogger(__name__)

INDEX_DIR = ".s3fuse"  # the reserved name at the bucket's root
INDEX_PREFIX = INDEX_DIR + "/index/"
FORMAT = 1
# An entry is written this long after it was recorded, with the others of its directory then
# due (rsync or tar write a directory's entries within a few seconds, and each write of the index
# rewrites all of it). It must exceed the imprecision of ``until`` (1 s of Date rounding plus a
# round trip) by enough that a version written after the index write is dated after ``until``.
AGE = 2.5
FLUSH_INTERVAL = 1.0  # at most one write of a directory's index a second, however busy it is
SELF = "."  # the name under which a directory's index records the directory itself (the mount's root)
WRITE_ATTEMPTS = 5  # conditional writes that lost a race to another mount, then give up
FLUSH_FAILURES = 3  # failed flushes of one directory's changes before they are dropped
PARALLEL_HEADS = 16
PARALLEL_FLUSHES = 8
MAX_INDEX_ENTRIES = 100_000  # an index past this (about 15 MB) records no new names


def index_key(dir_key: str) -> str:
    """The index object of the directory whose keys start with ``dir_key`` ("" or ending in "/")."""
    return INDEX_PREFIX + hashlib.sha256(dir_key.encode()).hexdigest()[:40]


Entry = dict[str, Any]  # {"meta": {...}} plus {"dir": 1} or {"etag", "size", "until"}


@dataclass
class DirIndex:
    """One directory's index as last read or written; ``etag`` None: there is no index object."""

    entries: dict[str, Entry]
    etag: str | None

    @property
    def exists(self) -> bool:
        return self.etag is not None


def _valid_entry(entry: Any) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("meta"), dict):
        return False
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in entry["meta"].items()):
        return False
    if entry.get("dir") == 1:
        return True
    return (
        isinstance(entry.get("etag"), str)
        and isinstance(entry.get("size"), int)
        and isinstance(entry.get("until"), int)
    )


def parse_index(body: bytes, dir_key: str) -> dict[str, Entry]:
    """The entries of an index object; a corrupt or foreign one has none (its names are then HEADed)."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("dir") != dir_key:
        log.warning("the attribute index of %r is not one s3fuse can read; its entries are read with HEAD", dir_key)
        return {}
    entries = doc.get("entries")
    if not isinstance(entries, dict):
        return {}
    return {name: entry for name, entry in entries.items() if _valid_entry(entry)}


def render_index(entries: dict[str, Entry], dir_key: str) -> bytes:
    return json.dumps(
        {"format": FORMAT, "dir": dir_key, "entries": entries}, separators=(",", ":"), sort_keys=True
    ).encode()


class AttributeIndex:
    """The attribute index of one bucket's tree (under the mount's prefix)."""

    def __init__(self, s3: S3Client, root_prefix: str, readable: bool, writable: bool, max_entries: int) -> None:
        """readable: read indexes (off: --no-attribute-index, --at); writable: also keep them."""
        self.s3 = s3
        self.root_prefix = root_prefix
        self.readable = readable
        self.writable = writable and readable
        # directory path -> its index; sized by entries held
        self._read: LRUCache[str, DirIndex] = LRUCache(
            maxsize=max(1, max_entries), getsizeof=lambda index: 1 + len(index.entries)
        )
        self._reading: dict[str, trio.Event] = {}
        # directory path -> name -> (the entry to write (None: to remove), when recorded); kept until written
        self._pending: dict[str, dict[str, tuple[Entry | None, float]]] = {}
        self._writing: dict[tuple[str, str], int] = {}  # (directory, name) -> writes of its object in flight
        # directory path -> the changes of its index writes in flight: the index as read lacks them until
        # the write returns, and a listing meanwhile HEADed each of them (49 HEADs, 1.7 s, in a `du -s`
        # right after `tar x` on fsbench's S3-like network)
        self._flushing: dict[str, list[dict[str, Entry | None]]] = {}
        self._due: dict[str, float] = {}  # directory path -> when its changes are written (monotonic)
        self._failures: dict[str, int] = {}
        self._wake = trio.Event()
        self._offset: float | None = None  # the server's clock minus ours, rounded up
        self._full_logged = False

    # ---- reading

    def _dir_key(self, dir_path: str) -> str:
        return dir_prefix(self.root_prefix, dir_path)

    def start_reading(self, dir_path: str, nursery: trio.Nursery | None) -> None:
        """Read the directory's index in the background (beside its first listing page)."""
        if self.readable and nursery is not None and dir_path not in self._read:
            nursery.start_soon(self.read, dir_path)

    async def read(self, dir_path: str, again: bool = False) -> DirIndex | None:
        """The directory's index (read from S3 unless held, or ``again``); None: it could not be read."""
        if not self.readable:
            return None
        held = self._read.get(dir_path)
        if held is not None and not again:
            return held
        reading = self._reading.get(dir_path)
        if reading is not None:
            await reading.wait()
            return self._read.get(dir_path)
        reading = self._reading[dir_path] = trio.Event()
        try:
            index = await self._get(dir_path)
        except Exception as exc:  # any failure is no index: the listing goes on without it
            log.warning("the attribute index of %r could not be read (%s); its entries are listed without it",
                        dir_path or "/", exc)  # fmt: skip
            return None
        finally:
            del self._reading[dir_path]
            reading.set()
        self._read[dir_path] = index
        return index

    async def _get(self, dir_path: str) -> DirIndex:
        dir_key = self._dir_key(dir_path)
        sent = time.time()
        try:
            resp, body = await self.s3.get_bytes(index_key(dir_key))
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                return DirIndex({}, None)
            raise
        self._observe(resp, sent)
        return DirIndex(parse_index(body, dir_key), resp.get("ETag") or '""')

    def _observe(self, resp: dict[str, Any], sent: float) -> None:
        """Learn the server's clock from an answer's Date (whole seconds, at or after it was sent)."""
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        try:
            server = email.utils.parsedate_to_datetime(date).timestamp() if date else None
        except (TypeError, ValueError):
            server = None
        if server is not None:
            self._offset = server + 1 - sent

    def covers(self, dir_path: str) -> bool:
        """Whether the directory has an index (as read): what it does not vouch for needs a HEAD."""
        index = self._read.get(dir_path)
        return index is not None and index.exists

    def vouch(self, dir_path: str, name: str, info: EntryInfo) -> EntryInfo | None:
        """A listed entry completed with the attributes the index records for this very version; None
        if the index has none for it (absent, stale, or another version)."""
        known, entry = self._known(dir_path, name)
        if not known:
            index = self._read.get(dir_path)
            entry = None if index is None else index.entries.get(name)
        if entry is None or info.is_dir != (entry.get("dir") == 1):
            return None
        if not info.is_dir:
            if entry["etag"] != info.etag or entry["size"] != info.size:
                return None
            if info.last_modified_ns is None or info.last_modified_ns // 1_000_000_000 > entry["until"]:
                return None  # rewritten (with the same bytes) after the index was told of it
        return apply_posix_metadata(dataclasses.replace(info), entry["meta"])

    # ---- changes

    async def prepare(self, dir_path: str) -> None:
        """Before s3fuse changes the directory: make sure it has an index object (see the module's
        docstring), so the next mount knows to check what a crash kept out of it."""
        if not self.writable:
            return
        index = await self.read(dir_path)
        if index is None or index.exists:
            return
        await self.create(dir_path)

    async def create(self, dir_path: str) -> None:
        """Write an empty index for a directory that has none (one made by mkdir, or first changed here)."""
        if not self.writable:
            return
        try:
            await self._write(dir_path, {}, None)
        except FsError as exc:
            if not refused(exc):
                self._write_failed(dir_path, exc)
            return

    def record(self, dir_path: str, name: str, info: EntryInfo) -> None:
        """The entry ``name`` of the directory is now ``info`` (created, saved, renamed or changed here)."""
        if not self.writable:
            return
        entry: Entry | None = None
        if info.is_dir:
            entry = {"dir": 1, "meta": info.posix_headers(with_mtime=True)}
        elif info.etag is not None and info.headers is not None:
            until = self._dated(info)
            if until is not None:
                entry = {"etag": info.etag, "size": info.size, "until": until, "meta": dict(info.headers)}
        if entry is None and not self._has(dir_path, name):
            return  # nothing known of it (a file not saved yet), nothing recorded to undo
        self._queue(dir_path, name, entry)

    def remove(self, dir_path: str, name: str) -> None:
        """The entry ``name`` of the directory is gone."""
        if self.writable and self._has(dir_path, name):
            self._queue(dir_path, name, None)

    def _known(self, dir_path: str, name: str) -> tuple[bool, Entry | None]:
        """What this mount changed of the entry and the index as read does not show yet: (whether it
        did, the entry (None: removed)), from its pending changes, else from those being written."""
        pending = self._pending.get(dir_path, {})
        if name in pending:
            return True, pending[name][0]
        for changes in reversed(self._flushing.get(dir_path, [])):
            if name in changes:
                return True, changes[name]
        return False, None

    def _has(self, dir_path: str, name: str) -> bool:
        index = self._read.get(dir_path)
        known, entry = self._known(dir_path, name)
        return (known and entry is not None) or (index is not None and name in index.entries)

    def _queue(self, dir_path: str, name: str, entry: Entry | None) -> None:
        now = time.monotonic()
        self._pending.setdefault(dir_path, {})[name] = (entry, now)
        if dir_path not in self._due:
            self._due[dir_path] = now + AGE
            self._wake.set()

    @contextlib.contextmanager
    def writing(self, dir_path: str, name: str) -> Iterator[None]:
        """Around a request that writes a new version of the entry's object: meanwhile no entry of
        it is written into the index (see the module's docstring)."""
        key = (dir_path, name)
        self._writing[key] = self._writing.get(key, 0) + 1
        try:
            yield
        finally:
            self._writing[key] -= 1
            if not self._writing[key]:
                del self._writing[key]

    def forget_tree(self, dir_path: str) -> None:
        """What is held of the indexes of the directory and those below it is void (it was renamed)."""
        below = dir_path + "/"
        for path in [p for p in self._read if p == dir_path or p.startswith(below)]:
            self._read.pop(path, None)

    def keys_below(self, dir_keys: list[str]) -> list[str]:
        """The index objects of these directories (by key prefix): to delete with them."""
        return [index_key(key) for key in dir_keys] if self.writable else []

    async def move_tree(self, moves: list[tuple[str, str]]) -> None:
        """Directories were renamed with everything below them (old key prefix -> new): the entries of
        each one's index are recorded anew under its new name (the copies are new versions with the
        same headers; a copy with another ETag fails ``vouch`` and is HEADed)."""
        if not self.writable:
            return
        paths = {self._dir_key(path): path for path in self._read}

        async def move(old_key: str, new_key: str) -> None:
            try:
                _, body = await self.s3.get_bytes(index_key(old_key))
            except Exception as exc:  # none moved: its entries are HEADed at the new name
                if not (isinstance(exc, FsError) and exc.errno == errno.ENOENT):
                    log.warning("the attribute index of %r could not be moved (%s)", old_key, exc)
                return
            new_path = paths.get(new_key, new_key[len(self.root_prefix) :].rstrip("/"))
            for name, entry in parse_index(body, old_key).items():
                if entry.get("dir") == 1:
                    self._queue(new_path, name, entry)
                elif self._offset is not None:
                    self._queue(new_path, name, {**entry, "until": self._until()})

        async with trio.open_nursery() as nursery:
            for old_key, new_key in moves:
                nursery.start_soon(move, old_key, new_key)

    def _until(self) -> int:
        assert self._offset is not None
        return int(time.time() + self._offset)

    def _dated(self, info: EntryInfo) -> int | None:
        """The ``until`` of a version: its own LastModified where known (learnt from a HEAD or a
        listing), else the server's time now (a version this mount just wrote); None if neither is.

        Not the time now for a version learnt from S3: another mount may write a version of the same
        ETag and size (a chmod's copy onto itself) a moment after the HEAD, and crash before its own
        entry is written; dated now, the entry written a moment later would vouch for that version
        with the older attributes (seen: a mount checking attributes after a kill -9 of another)."""
        if info.last_modified_ns is not None:
            return info.last_modified_ns // 1_000_000_000
        return self._until() if self._offset is not None else None

    # ---- writing

    async def run(self) -> None:
        """Write the batched changes of each directory once they are due (a task of the mount loop)."""
        limiter = trio.CapacityLimiter(PARALLEL_FLUSHES)
        while True:
            now = time.monotonic()
            due = [path for path, when in self._due.items() if when <= now]
            if not due:
                wait = min(self._due.values(), default=now + 3600) - now
                self._wake = trio.Event()
                with trio.move_on_after(wait):
                    await self._wake.wait()
                continue
            async with trio.open_nursery() as nursery:
                for path in due:
                    nursery.start_soon(self._flush_limited, path, limiter)

    async def _flush_limited(self, dir_path: str, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            await self.flush(dir_path)

    async def flush_all(self) -> None:
        """Unmounting: write every pending change now, however young: this mount writes no later
        version that the age rule would keep apart (waiting up to ``AGE`` would delay every unmount)."""
        async with trio.open_nursery() as nursery:
            for path in list(self._pending):
                nursery.start_soon(self.flush, path, True)

    def _take_due(self, dir_path: str, final: bool) -> dict[str, Entry | None]:
        """The directory's pending changes that may be written now (``final``: all but those whose
        object is being written); the others stay pending."""
        pending = self._pending.pop(dir_path, {})
        self._due.pop(dir_path, None)
        now = time.monotonic()
        ready = {}
        for name, (entry, when) in pending.items():
            if entry is None or ((final or when + AGE <= now) and (dir_path, name) not in self._writing):
                ready[name] = entry
            else:
                self._pending.setdefault(dir_path, {})[name] = (entry, when)
        if dir_path in self._pending:
            later = min(when for _, when in self._pending[dir_path].values()) + AGE
            self._due[dir_path] = max(later, now + FLUSH_INTERVAL)
            self._wake.set()
        return ready

    async def flush(self, dir_path: str, final: bool = False) -> None:
        """Write the directory's due changes into its index (merged into what S3 has)."""
        changes = self._take_due(dir_path, final)
        if not changes:
            return
        flushing = self._flushing.setdefault(dir_path, [])
        flushing.append(changes)
        try:
            for attempt in range(WRITE_ATTEMPTS):
                index = self._read.get(dir_path) if attempt == 0 else None
                if index is None:
                    index = await self._get(dir_path)
                entries = dict(index.entries)
                for name, entry in changes.items():
                    if entry is None:
                        entries.pop(name, None)
                    elif name in entries or len(entries) < MAX_INDEX_ENTRIES:
                        entries[name] = entry
                    elif not self._full_logged:
                        self._full_logged = True
                        log.warning("the attribute index of %r is full: new names there are listed with "
                                    "default attributes until a HEAD", dir_path or "/")  # fmt: skip
                try:
                    await self._write(dir_path, entries, index.etag)
                except FsError as exc:
                    if refused(exc):
                        continue  # another mount wrote it meanwhile: merge into its version
                    raise
                self._failures.pop(dir_path, None)
                return
            raise FsError(errno.EBUSY, "IndexContended", f"lost {WRITE_ATTEMPTS} races to other mounts")
        except FsError as exc:
            self._retry_later(dir_path, changes, exc)
        except Exception as exc:  # a background task: anything else is a failed write too
            self._retry_later(dir_path, changes, FsError(errno.EIO, type(exc).__name__, str(exc)))
        finally:  # written (and in the index as read), or pending again
            flushing.remove(changes)
            if not flushing:
                del self._flushing[dir_path]

    def _retry_later(self, dir_path: str, changes: dict[str, Entry | None], exc: FsError) -> None:
        failures = self._failures[dir_path] = self._failures.get(dir_path, 0) + 1
        if failures >= FLUSH_FAILURES or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            self._failures.pop(dir_path, None)
            self._write_failed(dir_path, exc)
            return
        old = time.monotonic() - AGE  # aged already
        newer = self._pending.get(dir_path, {})
        self._pending[dir_path] = {**{name: (entry, old) for name, entry in changes.items()}, **newer}
        self._due[dir_path] = time.monotonic() + AGE * 2**failures
        self._wake.set()

    def _write_failed(self, dir_path: str, exc: FsError) -> None:
        log.warning("the attribute index of %r could not be written (%s): what changed there is read with "
                    "HEAD until it is", dir_path or "/", exc)  # fmt: skip
        self._read.pop(dir_path, None)

    async def _write(self, dir_path: str, entries: dict[str, Entry], etag: str | None) -> None:
        """Put the index object, if it is still the version ``etag`` (None: if there is none)."""
        dir_key = self._dir_key(dir_path)
        conditions = await Guard(self.s3, etag).params(PUT)
        sent = time.time()
        resp = await put_object_answer(
            self.s3, index_key(dir_key), render_index(entries, dir_key), ObjectHeaders("application/json"), conditions
        )
        self._observe(resp, sent)
        self._read[dir_path] = DirIndex(entries, resp["ETag"])
