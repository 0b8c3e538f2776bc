"""The local copy of a file's unsaved changes: a sparse spill file on disk, or in memory while small.

Owns the bytes written since the last upload and the bookkeeping that says where
each byte of the file now comes from: the spill file (written here), the object
as it was when opened (below ``base_limit``), or zeros (a hole made by growing the
file). Memory holds only that bookkeeping, so a file of many GiB costs disk, not RAM,
except that the first ``MEMORY_FILE_LIMIT`` bytes of a file stay in memory (within
``MEMORY_BUDGET`` for all files) until more are written or something needs the file
on disk (a journal record, ``lost+found``, a part read by a worker thread). A small file
written and saved then never touches the disk: creating, writing, reading back and
deleting a spill file cost 0.1-0.2 ms of the daemon's time per file, several per cent
of a ``cp`` or ``tar x`` of small files.

On disk the spill file is always exactly as long as the file (growing truncates
extend it sparsely), so any range of the file can be sent to S3 straight from it
(``upload.FileRange``): holes read as zeros without ever being held in memory, and
``fill`` first copies in the bytes only the old object has, a block at a time. A
read in progress keeps the spill file open (``in_use``): a save that ends meanwhile
closes it only when the read is done, never under it (a closed descriptor's number
is soon reused, and a pread of it would read another file).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator

from ..extents import Extents

log = logging.getLogger(__name__)

FetchBase = Callable[[int, int], Awaitable[bytes]]  # (start, end) -> the base object's bytes

SPILL_PREFIX = "spill-"  # the spill files' names; the journal tells its own from its records by it
MEMORY_FILE_LIMIT = 256 << 10  # the offsets a spill file may hold in memory
MEMORY_BUDGET = 8 << 20  # for all spill files together
# Spill files at least this large are removed by a thread of their own: removing a file frees its
# pages in the caller's time, 10 ms for 128 MiB just written on this project's machine (ext4;
# 47 ms when the file had been truncated to 0, see _create), during which the event loop would
# answer nothing, the dd's close() included.
REMOVE_APART = 8 << 20


class MemoryBudget:
    """Bytes that spill files may hold in memory, shared by all of them (and their threads)."""

    def __init__(self, total: int) -> None:
        self.free = total
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if n > self.free:
                return False
            self.free -= n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.free += n


class Remover:
    """Removes files in a daemon thread of its own, in the order they were handed over."""

    def __init__(self) -> None:
        self._paths: queue.Queue[str] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def remove(self, path: str) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="s3fuse-spill-remover", daemon=True)
                self._thread.start()
        self._paths.put(path)

    def _run(self) -> None:
        while True:
            path = self._paths.get()
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove the spill file %s: %s", path, exc)
            finally:
                self._paths.task_done()

    def wait(self) -> None:
        """Until every file handed over so far is removed (before the spill directory goes)."""
        self._paths.join()


REMOVER = Remover()


class SpillFile:
    budget = MemoryBudget(MEMORY_BUDGET)
    memory_limit = MEMORY_FILE_LIMIT

    def __init__(self, directory: str, base_size: int, in_memory: bool = True) -> None:
        self.directory = directory
        self.size = base_size
        # Bytes below base_limit that were not written here are the opened object's.
        self.base_limit = base_size
        self.written = Extents()
        self.closed = False
        # The spill file's offsets [0, len(memory)), until it goes to disk (then None).
        self._memory: bytearray | None = bytearray() if in_memory else None
        self._fd, self._path = -1, ""
        self._readers = 0  # reads in progress; close() waits for them to end
        self._remove_on_close: bool | None = None  # closed while read: what to do once they end
        if not in_memory:
            self._create()

    @classmethod
    def reopen(cls, path: str, size: int, base_limit: int, written: Extents) -> SpillFile:
        """The spill file of a file journaled by an earlier daemon (see journal.py)."""
        spill = cls(os.path.dirname(path), size, in_memory=True)
        spill.base_limit, spill.written, spill._memory = base_limit, written, None
        spill._fd, spill._path = os.open(path, os.O_RDWR | os.O_CLOEXEC), path
        if os.fstat(spill._fd).st_size < size:  # journaled before growing truncates extended the file
            os.ftruncate(spill._fd, size)
        return spill

    @property
    def fd(self) -> int:
        """The file on disk; bytes held in memory go there first."""
        self._to_disk()
        return self._fd

    @property
    def path(self) -> str:
        self._to_disk()
        return self._path

    def _create(self) -> None:
        try:
            self._fd, self._path = tempfile.mkstemp(dir=self.directory, prefix=SPILL_PREFIX)
        except FileNotFoundError:  # the first spill file of this daemon, or the directory was removed
            os.makedirs(self.directory, exist_ok=True)
            self._fd, self._path = tempfile.mkstemp(dir=self.directory, prefix=SPILL_PREFIX)
        if self.size:  # holes: no disk blocks
            # Not to 0: ext4 takes a file truncated to 0 for one being replaced, and writes out
            # all its pages at its close (auto_da_alloc): 54 ms of the event loop for a dd of
            # 128 MiB, and the disk's time, for bytes that are removed right after.
            os.ftruncate(self._fd, self.size)

    def _to_disk(self) -> None:
        if self._memory is None or self.closed:
            return
        self._create()
        try:
            _write_at(self._fd, self._memory, 0)
        except OSError:
            self._fd, fd = -1, self._fd
            os.close(fd)
            os.unlink(self._path)
            raise
        self.budget.give(len(self._memory))
        self._memory = None

    def _hold(self, end: int) -> bool:
        """Whether offsets up to ``end`` can stay in memory (taking budget for the growth)."""
        assert self._memory is not None
        if end <= len(self._memory):
            return True
        if end > self.memory_limit or not self.budget.take(end - len(self._memory)):
            return False
        self._memory.extend(bytes(end - len(self._memory)))
        return True

    def copy(self, directory: str) -> SpillFile:
        """A new spill file on disk with the same bytes and bookkeeping."""
        twin = SpillFile(directory, self.size, in_memory=False)  # as long as this one
        twin.base_limit, twin.written = self.base_limit, Extents.of(self.written.ranges())
        if self._memory is not None:
            _write_at(twin._fd, self._memory, 0)
            return twin
        for start, end in self.written.ranges():  # the kernel copies the bytes
            while start < end:
                copied = os.copy_file_range(self._fd, twin._fd, end - start, start, start)
                if copied == 0:
                    break  # past the end of the file: the rest reads as zeros in both
                start += copied
        return twin

    def write(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if self._memory is not None and not self._hold(end):
            self._to_disk()
        if self._memory is not None:
            self._memory[offset:end] = data
        else:
            _write_at(self._fd, data, offset)
        self.written.add(offset, end)
        self.size = max(self.size, end)

    def truncate(self, size: int) -> None:
        if size < self.size:
            self.written.truncate(size)
            self.base_limit = min(self.base_limit, size)
            if self._memory is not None and size < len(self._memory):
                self.budget.give(len(self._memory) - size)
                del self._memory[size:]
        if self._memory is None:
            os.ftruncate(self._fd, size)  # growing too: a hole that reads as zeros
        self.size = size

    def needs_base(self, start: int, end: int) -> bool:
        """Whether [start, end) holds bytes that only the object in S3 has."""
        return any(not inside and s < self.base_limit for s, _, inside in self.written.segments(start, end))

    async def read(self, start: int, end: int, fetch_base: FetchBase) -> bytes:
        """The file's bytes in [start, end), assembled from spill, base object and zeros.

        For reads of a few MiB at most (FUSE's reads, small files): the result is in memory.
        """
        end = min(end, self.size)
        if start >= end:
            return b""
        pieces = []
        with self.in_use():
            # A list, not the lazy generator: a write or truncate while this awaits S3
            # changes ``written``, and a generator would then walk the wrong extents.
            for s, e, inside in list(self.written.segments(start, end)):
                if inside:
                    memory = self._memory
                    pieces.append(bytes(memory[s:e]) if memory is not None else os.pread(self._fd, e - s, s))
                elif s < self.base_limit:
                    from_base = min(e, self.base_limit)
                    pieces.append(await fetch_base(s, from_base))
                    pieces.append(bytes(e - from_base))
                else:
                    pieces.append(bytes(e - s))
        return b"".join(pieces)

    async def fill(self, start: int, end: int, fetch_base: FetchBase, block: int) -> None:
        """Copy the base object's bytes of [start, end) into the spill file, ``block`` bytes at a
        time, so that the range can be sent from the file and memory holds one block at most."""
        with self.in_use():
            for s, e, inside in list(self.written.segments(start, min(end, self.base_limit))):
                for offset in range(s, e, block) if not inside else ():
                    data = await fetch_base(offset, min(e, offset + block))
                    # Only what is still the base object's: a write that landed while this
                    # awaited S3 (keep_content runs without the file's lock) stays.
                    for s2, e2, written in list(
                        self.written.segments(offset, min(offset + len(data), self.base_limit))
                    ):
                        if not written:
                            self.write(s2, data[s2 - offset : e2 - offset])

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Keep the spill file's bytes while a read (or fill) that awaits in between uses them."""
        self._readers += 1
        try:
            yield
        finally:
            self._readers -= 1
            if self._readers == 0 and self._remove_on_close is not None:
                self._release(self._remove_on_close)

    @property
    def written_bytes(self) -> int:
        return sum(end - start for start, end in self.written.ranges())

    def keep(self, move: Callable[[str], str]) -> str:
        """Move the spill file out of the way for a human to recover (``move`` returns where to)."""
        self._path = move(self.path)
        self.close(remove=False)
        return self._path

    def close(self, remove: bool = True) -> None:
        """Done with it; its memory or file descriptor go once no read uses them (``in_use``)."""
        if self.closed:
            return
        self.closed = True
        if self._readers:
            self._remove_on_close = remove
            return
        self._release(remove)

    def _release(self, remove: bool) -> None:
        self._remove_on_close = None
        if self._memory is not None:
            self.budget.give(len(self._memory))
            self._memory = None
            return
        self._fd, fd = -1, self._fd  # a late write fails (EBADF), never lands in a reused descriptor
        os.close(fd)
        if remove and self.size >= REMOVE_APART:
            REMOVER.remove(self._path)
        elif remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)


def _write_at(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):  # a short write (a full disk) is followed by one that raises ENOSPC
        done += os.pwrite(fd, view[done:], offset + done)
