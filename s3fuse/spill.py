"""The local copy of a file's unsaved changes: a sparse spill file on disk.

Owns the bytes written since the last upload and the bookkeeping that says where
each byte of the file now comes from: the spill file (written here), the object
as it was when opened (below ``base_limit``), or zeros (a hole made by growing the
file). Memory holds only that bookkeeping, so a file of many GiB costs disk, not RAM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable

from .extents import Extents

log = logging.getLogger(__name__)

FetchBase = Callable[[int, int], Awaitable[bytes]]  # (start, end) -> the base object's bytes


class SpillFile:
    def __init__(self, directory: str, base_size: int) -> None:
        os.makedirs(directory, exist_ok=True)
        self.fd, self.path = tempfile.mkstemp(dir=directory, prefix="spill-")
        self.size = base_size
        # Bytes below base_limit that were not written here are the opened object's.
        self.base_limit = base_size
        self.written = Extents()

    @classmethod
    def reopen(cls, path: str, size: int, base_limit: int, written: Extents) -> SpillFile:
        """The spill file of a file journaled by an earlier daemon (see journal.py)."""
        spill = cls.__new__(cls)
        spill.fd, spill.path = os.open(path, os.O_RDWR | os.O_CLOEXEC), path
        spill.size, spill.base_limit, spill.written = size, base_limit, written
        return spill

    def copy(self, directory: str) -> SpillFile:
        """A new spill file with the same bytes and bookkeeping (the kernel copies the bytes)."""
        twin = SpillFile(directory, self.size)
        twin.base_limit, twin.written = self.base_limit, Extents.of(self.written.ranges())
        for start, end in self.written.ranges():
            while start < end:
                copied = os.copy_file_range(self.fd, twin.fd, end - start, start, start)
                if copied == 0:
                    break  # past the end of the file: the rest reads as zeros in both
                start += copied
        return twin

    def write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        done = 0
        while done < len(view):  # a short write (a full disk) is followed by one that raises ENOSPC
            done += os.pwrite(self.fd, view[done:], offset + done)
        self.written.add(offset, offset + len(data))
        self.size = max(self.size, offset + len(data))

    def truncate(self, size: int) -> None:
        if size < self.size:
            self.written.truncate(size)
            self.base_limit = min(self.base_limit, size)
            os.ftruncate(self.fd, size)
        self.size = size

    def needs_base(self, start: int, end: int) -> bool:
        """Whether [start, end) holds bytes that only the object in S3 has."""
        return any(not inside and s < self.base_limit for s, _, inside in self.written.segments(start, end))

    async def read(self, start: int, end: int, fetch_base: FetchBase) -> bytes:
        """The file's bytes in [start, end), assembled from spill, base object and zeros."""
        end = min(end, self.size)
        if start >= end:
            return b""
        pieces = []
        for s, e, inside in self.written.segments(start, end):
            if inside:
                pieces.append(os.pread(self.fd, e - s, s))
            elif s < self.base_limit:
                from_base = min(e, self.base_limit)
                pieces.append(await fetch_base(s, from_base))
                pieces.append(bytes(e - from_base))
            else:
                pieces.append(bytes(e - s))
        return b"".join(pieces)

    @property
    def written_bytes(self) -> int:
        return sum(end - start for start, end in self.written.ranges())

    def keep(self, move: Callable[[str], str]) -> str:
        """Move the spill file out of the way for a human to recover (``move`` returns where to)."""
        self.path = move(self.path)
        self.close(remove=False)
        return self.path

    def close(self, remove: bool = True) -> None:
        if self.fd < 0:
            return
        os.close(self.fd)
        self.fd = -1
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
