"""The local disk cache of object blocks (``--disk-cache-size``): the second tier under BlockCache.

Owns the files under ``CACHE_DIR/blocks/``: one file a block, named by a hash of the
block's identity (endpoint, bucket, key, ETag, version, byte range), so a block of
another version of an object, or of another server's bucket of the same name, can
never be found under a name asked for. A file is a header (magic, length, the
identity's hash, the checksum of the table), a table of SHA-256 checksums, one per
64 KiB chunk, and the data; a read, whole or of a range (a random read reads and
checks only its chunks), whose header or checksums do not match, torn by a crash or
corrupted on disk, is a miss and deletes the file, never serves it.

Several mounts (and ``s3fuse cleanup``) may share the directory: a file is written to a
temporary name and renamed into place, so a reader sees a whole file or none; a file
that vanishes under a reader (another mount evicted it) is a miss. Eviction is least
recently used across all of them: a hit touches the file's mtime, and a trim deletes
the oldest files until the directory is under the cap. The cache keeps no index in
memory, only its estimate of the directory's size, corrected by the scan of each
trim; a trim runs when the estimate passes the cap and at least every
``RESCAN_SECONDS`` a mount writes (to count what other mounts wrote). So N mounts
that share the directory keep it under N times the cap at worst, and under the cap
from the next scan of any of them on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, BinaryIO

import trio

from .metrics import METRICS

if TYPE_CHECKING:
    from .options import Config

log = logging.getLogger(__name__)

MAGIC = b"s3fblk2\n"
# magic, data length, identity hash, SHA-256 of the table; then the table: the SHA-256 of each CHUNK
# of the data, so that a random read checks only the chunks it reads.
_HEADER = struct.Struct("<8sQ32s32s")
HEADER_SIZE = _HEADER.size
CHUNK = 64 << 10
DIGEST = 32  # SHA-256: with the CPU's SHA instructions, faster than BLAKE2b
TMP_SUFFIX = ".tmp"
# A temporary file this old is a writer's that died (a crash between write and rename).
STALE_TMP_SECONDS = 3600.0


def _digest(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def _chunks(length: int) -> int:
    return (length + CHUNK - 1) // CHUNK


def file_size(length: int) -> int:
    """The bytes the file of a block of length bytes takes."""
    return HEADER_SIZE + _chunks(length) * DIGEST + length


class DiskCache:
    # A trim deletes down to this share of the cap, so that writes do not trim one file at a time.
    LOW_WATER = 0.9
    RESCAN_SECONDS = 10.0  # a scan of 10 GiB of 16 MiB blocks is 640 stat calls

    def __init__(self, directory: str, max_bytes: int, origin: str, nursery: trio.Nursery) -> None:
        """directory: the blocks' own (CACHE_DIR/blocks); origin: the endpoint, part of every identity;
        nursery: where blocks are written (the mount's: it waits for them at unmount)."""
        self.directory = directory
        self.max_bytes = max_bytes
        self.origin = origin
        self.nursery = nursery
        self._used = 0  # the estimate of the directory's bytes: exact after a trim, plus what this mount wrote since
        self._scanned = float("-inf")  # so the first write scans what earlier mounts left
        self._written = 0  # bytes this mount stored, ever: what a trim's scan may have missed is the growth
        self._trimming = trio.Lock()
        self._write_failed = False
        METRICS.add_gauges(self.gauges)

    def gauges(self) -> dict[str, float]:
        return {"s3fuse_disk_cache_bytes": self._used}

    def holds(self, size: int) -> bool:
        """Whether an object of size bytes is worth keeping on disk: it fits in half the cap, so that
        reading it whole does not evict what was read just before it."""
        return 0 < size <= self.max_bytes // 2

    def path_of(self, name: Hashable) -> tuple[str, bytes]:
        """The file of a block's identity, and the identity's hash that its header repeats."""
        # JSON of the parts: unambiguous whatever a key contains (a plain join would not be)
        identity = hashlib.sha256(json.dumps([self.origin, *name]).encode()).digest()
        hexname = identity.hex()
        return os.path.join(self.directory, hexname[:2], hexname), identity

    # ---- from the event loop: the file work runs in a worker thread

    async def read(self, name: Hashable) -> bytes | None:
        """The block's bytes if a whole, intact file of exactly this identity is there, else None."""
        data = await trio.to_thread.run_sync(self.load, name)
        METRICS.lookup("disk", data is not None)
        return data

    async def read_range(self, name: Hashable, start: int, end: int) -> bytes | None:
        """Bytes [start, end) of the block, reading and checking only the chunks they lie in, or None."""
        data = await trio.to_thread.run_sync(self.load_range, name, start, end)
        METRICS.lookup("disk", data is not None)
        return data

    def keep(self, name: Hashable, data: bytes) -> None:
        """Write the block in the background: the reader that fetched it does not wait for the disk."""
        self.nursery.start_soon(self.write, name, data)

    async def write(self, name: Hashable, data: bytes) -> None:
        """Keep the block (a failure to is logged, never raised: the cache is an optimisation);
        then trim if the directory may be over the cap."""
        if file_size(len(data)) > self.max_bytes:
            return
        with trio.CancelScope(shield=True):  # an unmount lets it finish: what was read stays read
            try:
                stored = await trio.to_thread.run_sync(self.store, name, data)
            except OSError as exc:
                # once a full disk is reported, each block after it would say the same
                (log.debug if self._write_failed else log.warning)("cannot write to the disk cache: %s", exc)
                self._write_failed = True
                return
            self._used += stored
            self._written += stored
            if self._used > self.max_bytes or time.monotonic() - self._scanned > self.RESCAN_SECONDS:
                await self._trim()

    async def _trim(self) -> None:
        """Scan the directory and delete the oldest files down to LOW_WATER of the cap, if over it."""
        if self._trimming.locked():
            return  # the trim under way counts the new file, or trims again for it
        async with self._trimming:
            while True:
                written = self._written
                target = int(self.max_bytes * self.LOW_WATER)
                _, held = await trio.to_thread.run_sync(trim_dir, self.directory, self.max_bytes, target)
                self._scanned = time.monotonic()
                # What was written during the scan may have been missed by it: counted (perhaps twice)
                self._used = held + self._written - written
                if self._used <= self.max_bytes:
                    return

    # ---- blocking: in a worker thread (or s3fuse cleanup)

    def has(self, name: Hashable) -> bool:
        """Whether a file of the block is there (it may still fail its checksum when read)."""
        return os.path.exists(self.path_of(name)[0])

    def load(self, name: Hashable) -> bytes | None:
        """The whole block, or None."""
        return self.load_range(name, 0, None)

    def load_range(self, name: Hashable, start: int, end: int | None) -> bytes | None:
        """Bytes [start, end) of the block (end None: to its end), checked chunk by chunk; None if
        the file is missing, or damaged where it was read (then it is deleted)."""
        path, identity = self.path_of(name)
        try:
            with open(path, "rb") as f:
                data = _read_checked(f, identity, start, end)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read %s of the disk cache: %s", path, exc)
            return None
        if data is None:
            log.warning("%s of the disk cache is torn or corrupted: deleted, the block is fetched again", path)
            _unlink(path)
            return None
        with contextlib.suppress(OSError):  # evicted meanwhile: the bytes read are still right
            os.utime(path)  # recently used: the last to be evicted
        return data

    def store(self, name: Hashable, data: bytes) -> int:
        """Write the block's file whole under a temporary name, then rename it into place; the bytes it takes."""
        path, identity = self.path_of(name)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        view = memoryview(data)
        table = b"".join(_digest(view[i : i + CHUNK]) for i in range(0, len(data), CHUNK))
        tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}{TMP_SUFFIX}"
        try:
            with open(tmp, "wb") as f:
                f.write(_HEADER.pack(MAGIC, len(data), identity, _digest(table)) + table)
                f.write(data)
            # No fsync: a file torn by a crash fails its checks and is a miss.
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return file_size(len(data))


def _read_checked(f: BinaryIO, identity: bytes, start: int, end: int | None) -> bytes | None:
    """Bytes [start, end) of an open block file if its header is this identity's and the chunks
    they lie in match their checksums; None if not (or if the file is shorter than it says)."""
    header = f.read(HEADER_SIZE)
    if len(header) != HEADER_SIZE:
        return None
    magic, length, stored_identity, table_digest = _HEADER.unpack(header)
    if magic != MAGIC or stored_identity != identity:
        return None
    table = f.read(_chunks(length) * DIGEST)
    if _digest(table) != table_digest:
        return None
    end = length if end is None else min(end, length)
    if start >= end:
        return b""
    first, last = start // CHUNK, (end - 1) // CHUNK
    data_start = HEADER_SIZE + len(table)
    f.seek(data_start + first * CHUNK)
    want = min(length, (last + 1) * CHUNK) - first * CHUNK
    data = f.read(want)
    if len(data) != want or (end == length and f.read(1)):  # torn, or longer than it says
        return None
    view = memoryview(data)
    for n in range(first, last + 1):
        offset = (n - first) * CHUNK
        if _digest(view[offset : offset + CHUNK]) != table[n * DIGEST : (n + 1) * DIGEST]:
            return None
    begin = start - first * CHUNK
    return data if begin == 0 and want == end - start else bytes(view[begin : begin + end - start])


def trim_dir(directory: str, limit: int, target: int) -> tuple[int, int]:
    """If the disk cache in directory holds more than limit bytes, delete the least recently used
    files until it holds at most target bytes (0 empties it); the bytes it held before, and holds now."""
    files = []
    total = 0
    now = time.time()
    for sub in _scandir(directory):
        if not sub.is_dir(follow_symlinks=False):
            continue
        for entry in _scandir(sub.path):
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # evicted by another mount meanwhile
            if entry.name.endswith(TMP_SUFFIX):
                if now - st.st_mtime > STALE_TMP_SECONDS:
                    _unlink(entry.path)
                continue
            files.append((st.st_mtime, st.st_size, entry.path))
            total += st.st_size
    held = total
    if total <= limit and target > 0:
        return held, total
    files.sort()
    for _, size, path in files:
        if total <= target:
            break
        _unlink(path)
        total -= size
    return held, total


def _scandir(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except FileNotFoundError:
        return []


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # another mount evicted it first
        os.unlink(path)


def blocks_dir(cache_dir: str) -> str:
    return os.path.join(cache_dir, "blocks")


def disk_cache_of(opts: Config, nursery: trio.Nursery) -> DiskCache | None:
    """The mount's disk cache; None when --disk-cache-size is 0, or with SSE-C (the cache would keep the
    objects decrypted on local disk, which customer-provided keys are meant to prevent)."""
    if opts.cache.disk_cache_size <= 0 or opts.s3.sse_c_key is not None:
        return None
    return DiskCache(blocks_dir(opts.write.cache_dir), opts.cache.disk_cache_size, opts.s3.endpoint_url or "", nursery)
