"""A seeded random load of several processes on one mount, checked against a local tree.

Each worker process applies the same operations to the mount and to a local directory
(the model: a local file system holds sparse files, modes and names exactly as POSIX
says): sparse writes far past the end, truncates up and down, O_DIRECT writes, mmap
writes, splice from a pipe, renames, creates and unlinks, fsync, reads compared on the
spot. Workers share the directories (their names are their own, so each worker's
result is deterministic) and one sparse file, where each writes only its own stripes
(the union is deterministic too). ``compare_trees`` then checks every entry's type,
permission bits and bytes. ``tests/mount/test_random_load.py`` runs a small load in
CI; ``scripts/randomload`` a long one by hand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import mmap
import multiprocessing
import os
import random
import stat
import time
from pathlib import Path
from typing import TextIO

KiB, MiB = 1 << 10, 1 << 20
DIRECTORIES = ("d0", "d1")
NAMES_PER_WORKER = 4  # in each directory
SHARED = "shared.bin"
STRIPE = MiB  # the shared file's offsets: stripe i belongs to worker i % workers
ALIGN = 4096  # O_DIRECT wants offsets, lengths and buffers aligned to the block size
MODES = (0o644, 0o600, 0o755, 0o640)

# operation -> weight
WEIGHTS = {
    "create": 6,
    "sparse": 10,
    "truncate": 5,
    "direct": 4,
    "mmap": 4,
    "splice": 4,
    "rename": 5,
    "unlink": 3,
    "chmod": 2,
    "read": 6,
    "fsync": 2,
    "shared": 6,
}


@dataclasses.dataclass
class Load:
    """What to run: ``ops`` operations in each of ``workers`` processes, offsets below ``max_offset``."""

    seed: int = 1
    workers: int = 4
    ops: int = 200
    max_offset: int = 64 * MiB
    slow: float = 10.0  # an operation taking longer is reported
    trace: str | None = None  # a directory: each worker writes what it starts and ends there


def data(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


class Worker:
    """One process's operations, on its own names in the shared directories."""

    def __init__(self, load: Load, index: int, mnt: Path, model: Path) -> None:
        self.load, self.index = load, index
        self.rng = random.Random(f"{load.seed}-{index}")
        self.roots = (mnt, model)
        self.names = [f"{d}/w{index}-{k}" for d in DIRECTORIES for k in range(NAMES_PER_WORKER)]
        self.slow: list[str] = []

    def existing(self) -> list[str]:
        return [n for n in self.names if (self.roots[1] / n).exists()]

    def offset(self, align: int = 1) -> int:
        # Half near the start (where parts meet), half anywhere up to max_offset (far past the end).
        top = 16 * MiB if self.rng.random() < 0.5 else self.load.max_offset
        return self.rng.randrange(0, top) // align * align

    def run(self) -> list[str]:
        """Run the worker's operations; returns those slower than ``Load.slow``."""
        with contextlib.ExitStack() as stack:
            trace = None
            if self.load.trace:
                trace = stack.enter_context(open(Path(self.load.trace) / f"worker{self.index}", "w", buffering=1))
            self._run(trace)
        return self.slow

    def _run(self, trace: TextIO | None) -> None:
        ops, weights = list(WEIGHTS), list(WEIGHTS.values())
        for i in range(self.load.ops):
            kind = self.rng.choices(ops, weights)[0]
            started = time.monotonic()
            if trace:
                trace.write(f"{time.time():.3f} start {i} {kind}\n")
            what = getattr(self, kind)()
            took = time.monotonic() - started
            if trace:
                trace.write(f"{time.time():.3f} done {i} {what} {took:.3f} s\n")
            if took > self.load.slow:
                self.slow.append(f"worker {self.index} op {i}: {what} took {took:.1f} s")

    # ---- operations: each applies the same change under both roots and says what it did

    def both(self, name: str, action) -> None:
        for root in self.roots:
            action(root / name)

    def create(self) -> str:
        name, mode = self.rng.choice(self.names), self.rng.choice(MODES)
        content = data(self.rng, self.rng.choice([0, 100, 4 * KiB, 300 * KiB, 9 * MiB]))

        def act(path: Path) -> None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, content)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)

        self.both(name, act)
        return f"create {name} {len(content)} bytes mode {mode:o}"

    def _open_rw(self, path: Path, flags: int = 0) -> int:
        return os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o644)

    def sparse(self) -> str:
        name, offset = self.rng.choice(self.names), self.offset()
        content = data(self.rng, self.rng.randrange(1, 64 * KiB))

        def act(path: Path) -> None:
            fd = self._open_rw(path)
            try:
                os.pwrite(fd, content, offset)
            finally:
                os.close(fd)

        self.both(name, act)
        return f"pwrite {name} {len(content)} at {offset}"

    def truncate(self) -> str:
        names = self.existing()
        if not names:
            return "truncate: no file"
        name, size = self.rng.choice(names), self.offset()
        self.both(name, lambda path: os.truncate(path, size))
        return f"truncate {name} to {size}"

    def direct(self) -> str:
        name, offset = self.rng.choice(self.names), self.offset(ALIGN)
        length = self.rng.randrange(1, 17) * ALIGN
        buffer = mmap.mmap(-1, length)  # page-aligned
        buffer.write(data(self.rng, length))

        def act(path: Path) -> None:
            fd = self._open_rw(path, os.O_DIRECT)
            try:
                os.pwritev(fd, [buffer], offset)
            finally:
                os.close(fd)

        try:
            self.both(name, act)
        finally:
            buffer.close()
        return f"O_DIRECT pwrite {name} {length} at {offset}"

    def mmap(self) -> str:
        names = [n for n in self.existing() if (self.roots[1] / n).stat().st_size > 0]
        if not names:
            return "mmap: no file"
        name = self.rng.choice(names)
        size = (self.roots[1] / name).stat().st_size
        offset = self.rng.randrange(0, size)
        content = data(self.rng, min(size - offset, self.rng.randrange(1, 32 * KiB)))
        page = offset - offset % mmap.PAGESIZE

        def act(path: Path) -> None:
            fd = os.open(path, os.O_RDWR)
            try:
                with mmap.mmap(fd, offset + len(content) - page, offset=page) as m:
                    m[offset - page : offset - page + len(content)] = content
                    m.flush()
            finally:
                os.close(fd)

        self.both(name, act)
        return f"mmap write {name} {len(content)} at {offset}"

    def splice(self) -> str:
        name, offset = self.rng.choice(self.names), self.offset()
        content = data(self.rng, self.rng.randrange(1, 60 * KiB))  # within a pipe's 64 KiB

        def act(path: Path) -> None:
            fd = self._open_rw(path)
            read_end, write_end = os.pipe()
            try:
                os.write(write_end, content)
                done = 0
                while done < len(content):
                    done += os.splice(read_end, fd, len(content) - done, offset_dst=offset + done)
            finally:
                for f in (fd, read_end, write_end):
                    os.close(f)

        self.both(name, act)
        return f"splice {name} {len(content)} at {offset}"

    def rename(self) -> str:
        names = self.existing()
        if not names:
            return "rename: no file"
        source, target = self.rng.choice(names), self.rng.choice(self.names)
        self.both(source, lambda path: os.rename(path, path.parent.parent / target))
        return f"rename {source} {target}"

    def unlink(self) -> str:
        names = self.existing()
        if not names:
            return "unlink: no file"
        name = self.rng.choice(names)
        self.both(name, os.unlink)
        return f"unlink {name}"

    def chmod(self) -> str:
        names = self.existing()
        if not names:
            return "chmod: no file"
        name, mode = self.rng.choice(names), self.rng.choice(MODES)
        self.both(name, lambda path: os.chmod(path, mode))
        return f"chmod {name} {mode:o}"

    def read(self) -> str:
        names = self.existing()
        if not names:
            return "read: no file"
        name = self.rng.choice(names)
        size = (self.roots[1] / name).stat().st_size
        offset, length = self.rng.randrange(0, size + 1), self.rng.randrange(1, 256 * KiB)
        got, want = (_pread(root / name, length, offset) for root in self.roots)
        assert got == want, f"worker {self.index}: read {name} {length} at {offset}: differs from the model"
        return f"read {name} {length} at {offset}"

    def fsync(self) -> str:
        name, offset = self.rng.choice(self.names), self.offset()
        content = data(self.rng, self.rng.randrange(1, 8 * KiB))

        def act(path: Path) -> None:
            fd = self._open_rw(path)
            try:
                os.pwrite(fd, content, offset)
                os.fsync(fd)
            finally:
                os.close(fd)

        self.both(name, act)
        return f"pwrite+fsync {name} {len(content)} at {offset}"

    def shared(self) -> str:
        """A write in one of this worker's stripes of the file all workers write."""
        stripes = self.load.max_offset // STRIPE
        stripe = self.rng.randrange(self.index, stripes, self.load.workers)
        length = self.rng.randrange(1, 64 * KiB)
        offset = stripe * STRIPE + self.rng.randrange(0, STRIPE - length)
        content = data(self.rng, length)

        def act(path: Path) -> None:
            fd = os.open(path, os.O_RDWR)
            try:
                os.pwrite(fd, content, offset)
            finally:
                os.close(fd)

        self.both(SHARED, act)
        return f"shared pwrite {length} at {offset}"


def _pread(path: Path, length: int, offset: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def _work(load: Load, index: int, mnt: Path, model: Path, results: multiprocessing.Queue) -> None:
    try:
        results.put((index, Worker(load, index, mnt, model).run(), None))
    except BaseException as exc:  # reported by the parent, with the worker's index
        results.put((index, [], f"{type(exc).__name__}: {exc}"))


def prepare(mnt: Path, model: Path) -> None:
    """The shared directories and the shared file, under both roots."""
    for root in (mnt, model):
        for d in DIRECTORIES:
            (root / d).mkdir()
        (root / SHARED).write_bytes(b"")


def run_load(load: Load, mnt: Path, model: Path, timeout: float) -> list[str]:
    """Run ``load`` on the mount and the model; returns the slow operations. AssertionError if a
    worker failed or the run took longer than ``timeout`` seconds (the workers are then killed)."""
    prepare(mnt, model)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [context.Process(target=_work, args=(load, i, mnt, model, results)) for i in range(load.workers)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + timeout
    slow, failures = [], []
    try:
        for _ in workers:
            index, slow_ops, failure = results.get(timeout=max(0.0, deadline - time.monotonic()))
            slow += slow_ops
            if failure:
                failures.append(f"worker {index}: {failure}")
    except Exception as exc:  # queue.Empty: a worker stalled
        raise AssertionError(f"the load did not finish in {timeout:.0f} s; slow so far: {slow}") from exc
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
            w.join()
    assert not failures, failures
    return slow


def digest(path: Path) -> str:
    """The file's bytes as md5, read a MiB at a time."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def tree_of(root: Path) -> dict[str, tuple]:
    """Every entry under root: path -> (type, permission bits, size, md5) (size and md5 of files only)."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            st = path.lstat()
            kind = stat.S_IFMT(st.st_mode)
            content = digest(path) if stat.S_ISREG(st.st_mode) else None
            size = st.st_size if stat.S_ISREG(st.st_mode) else None  # a directory's differs by file system
            out[str(path.relative_to(root))] = (kind, stat.S_IMODE(st.st_mode), size, content)
    return out


def compare_trees(mnt: Path, model: Path) -> None:
    """AssertionError naming each entry whose type, mode, size or bytes differ from the model's."""
    got, want = tree_of(mnt), tree_of(model)
    differ = [p for p in sorted(got | want) if got.get(p) != want.get(p)]
    problems = [f"{p}: mount {got.get(p)}, model {want.get(p)}" for p in differ]
    assert not problems, "\n".join(problems)
