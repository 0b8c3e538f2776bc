"""The model-based test's machines: random sequences of file system calls, on s3fuse and on a local directory.

A hypothesis state machine (``RuleBasedStateMachine``) applies each call twice: to a
directory of the file system under test and to its twin under ``tmp_path`` on a local
file system (the model). Each call goes through a client with the same methods on both
sides: ``OsClient`` (os calls on paths) for the model and for a mount
(tests/mount/test_model.py), tests/inprocess/client.py's ``InProcess`` for FuseOperations'
handlers without a kernel (tests/inprocess/test_model.py). Returned bytes, listings,
sizes, kinds, modes and the errno of every failure must agree, except where
docs/semantics.md documents a difference; each such exception below names its section.
After every step (in-process: at the end of each example) S3 itself (boto3) must hold
what the model holds: every file not open for writing is an object with its bytes,
every directory a marker, and nothing else.

Names come from a small alphabet (a, b, c; depth at most 2, deeper only by renaming a
directory), so calls collide: renames onto existing names, rmdir of non-empty
directories, writes to names that are directories. Most calls open, act and close
within one step (close() saves in s3fuse); a bundle of open descriptors adds
interleavings: writes through one descriptor, reads through another or by name, renames
and unlinks of open files. Each example works in a fresh directory (ex1, ex2, ...) of
one file system. The rules come in groups; besides a machine with all of them, two
smaller machines (open files, xattrs) reach long interleavings of their own calls sooner.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import itertools
import os
import random
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import keys_of, wait_until
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

# More examples without editing the file: S3FUSE_MODEL_SCALE=5 pytest tests/mount/test_model.py
SCALE = float(os.environ.get("S3FUSE_MODEL_SCALE", "1"))
STEPS = 40  # at most, in each example


def paths_of(names: str, depth: int) -> list[str]:
    """Every path of at most depth names from the alphabet, shallow ones first."""
    level, out = [""], []
    for _ in range(depth):
        level = [f"{p}/{n}" if p else n for p in level for n in names]
        out += level
    return out


@dataclass(frozen=True)
class Blob:
    """Data to write, drawn as a seed and a size: hypothesis's inputs stay small, its report short."""

    seed: int
    size: int

    @property
    def data(self) -> bytes:
        return random.Random(self.seed).randbytes(self.size)


# Offsets and sizes within the first page, or across the second and third (holes).
offsets = st.one_of(st.integers(0, 40), st.integers(4090, 9000))
sizes = st.one_of(st.integers(1, 48), st.integers(4000, 5000))
blobs = st.builds(Blob, st.integers(0, 9), sizes)
modes = st.sampled_from([0o644, 0o600, 0o755, 0o444, 0o640])
dir_modes = st.sampled_from([0o755, 0o700, 0o750])

# user.NAME is the object's metadata x-amz-meta-NAME, which S3 stores in lower case
# (semantics.md, Extended attributes: user.NAME): only lower-case names, so that the
# local file system and S3 spell them alike. "mode" is one of the names s3fuse keeps
# POSIX attributes in.
XATTR_NAMES = ("user.x", "user.y")
POSIX_XATTR = "user.mode"
xattr_names = st.sampled_from([*XATTR_NAMES, POSIX_XATTR])
# Values: non-empty ASCII words. Undocumented differences: s3fuse refuses an empty value
# (or one that is not UTF-8) with EINVAL and strips leading and trailing white space
# (xattrs.text), and refuses a value that is not ASCII, which S3 cannot keep, with EINVAL.
xattr_values = st.text("abcxyz019", min_size=1, max_size=12).map(str.encode)

DIR_MODE_DEFAULT = 0o755  # --dir-mode


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(src: Path, dst: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(src))


class OsClient:
    """The calls of the machine as a program makes them: os calls on paths under root.

    The interface of every client: paths are relative to the client's directory, a
    failure is an OSError with its errno, open returns the handle the calls on open
    files take. tests/inprocess/client.py's ``InProcess`` has the same methods.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def within(self, directory: str) -> OsClient:
        return type(self)(self.root / directory)

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return os.open(self.root / path, flags, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def read(self, fd: int, size: int) -> bytes:
        return os.read(fd, size)

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return os.pread(fd, size, offset)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def fstat(self, fd: int) -> os.stat_result:
        return os.fstat(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def stat(self, path: str) -> os.stat_result:
        return os.stat(self.root / path)

    def truncate(self, path: str, size: int) -> None:
        os.truncate(self.root / path, size)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self.root / path, mode)

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self.root / path, mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(self.root / path)

    def unlink(self, path: str) -> None:
        os.unlink(self.root / path)

    def rename(self, src: str, dst: str, flags: int = 0) -> None:
        renameat2(self.root / src, self.root / dst, flags)

    def link(self, src: str, dst: str) -> None:
        os.link(self.root / src, self.root / dst)

    def listdir(self, path: str) -> list[tuple[str, bool]]:
        """(name, is a directory) of each entry, sorted: s3fuse lists in key order, a local
        file system in its own (Directories: Order of entries). "." and ".." are in neither
        (os.scandir drops them)."""
        with os.scandir(self.root / path) as it:
            return sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)

    def getxattr(self, path: str, name: str) -> bytes:
        return os.getxattr(self.root / path, name)

    def setxattr(self, path: str, name: str, value: bytes) -> None:
        os.setxattr(self.root / path, name, value)

    def listxattr(self, path: str) -> list[str]:
        return os.listxattr(self.root / path)

    def removexattr(self, path: str, name: str) -> None:
        os.removexattr(self.root / path, name)


@dataclass(frozen=True)
class Err:
    """A failed call, by errno name (readable in hypothesis's report)."""

    name: str


def attempt(fn):
    try:
        return fn()
    except OSError as exc:
        return Err(errno.errorcode.get(exc.errno, str(exc.errno)))


def agree(tested, local) -> None:
    assert tested == local, f"s3fuse: {tested!r}, model: {local!r}"


def read_all(fs, handle) -> bytes:
    chunks = []
    while chunk := fs.read(handle, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def with_handle(fs, path: str, flags: int, action, mode: int = 0o644):
    """open, action(fs, handle), close: the result of action; a failing close() fails the call too."""
    handle = fs.open(path, flags, mode)
    try:
        result = action(fs, handle)
    except BaseException:
        fs.close(handle)
        raise
    fs.close(handle)  # saves the file in s3fuse: an error here is the call's error
    return result


def make_file(fs, path: str, content: bytes, flags: int, mode: int) -> int:
    return with_handle(fs, path, os.O_CREAT | os.O_WRONLY | flags, lambda fs, h: fs.write(h, content), mode)


def stat_of(st_) -> tuple:
    """What is compared of a stat (an os.stat_result, or the pyfuse3.EntryAttributes of InProcess)."""
    if stat.S_ISDIR(st_.st_mode):
        # st_size, st_nlink and the times of a directory are not compared: s3fuse
        # reports 0, 2 and the mount time (semantics.md, Directories: Directory attributes).
        return ("dir", stat.S_IMODE(st_.st_mode))
    # Times are not compared: LastModified in whole seconds (File attributes: st_mtime),
    # noatime. Nor is st_blocks, which s3fuse computes as ceil(size / 512) whatever holes
    # the file has (File attributes: st_blocks). st_nlink is 1 on both: hard links cannot
    # be made on the mount (File attributes: Hard links).
    return ("file", st_.st_size, stat.S_IMODE(st_.st_mode), st_.st_nlink)


def fstat_of(fs, handle) -> tuple:
    st_ = fs.fstat(handle)
    if stat.S_ISDIR(st_.st_mode):
        return ("dir",)  # as in stat_of; O_RDONLY opens directories too
    return ("file", st_.st_size)  # st_nlink: 0 for a file unlinked while open, locally


def user_xattrs(fs, path: str) -> list[str]:
    # listxattr of a file on the mount also names the s3.* facts (Extended attributes).
    return sorted(n for n in fs.listxattr(path) if n.startswith("user."))


OPEN_FLAGS = {
    "r": os.O_RDONLY,
    "rw": os.O_RDWR,
    "append": os.O_WRONLY | os.O_APPEND,
    "trunc": os.O_RDWR | os.O_TRUNC,
    "create": os.O_RDWR | os.O_CREAT,  # a new file stays unsaved while it is open
}


@dataclass(eq=False)
class Handle:
    """One open file: a handle of the file system under test and a descriptor of the model, opened alike."""

    local: int
    tested: Any
    how: str  # a key of OPEN_FLAGS
    opened_as: str

    @property
    def writable(self) -> bool:
        return self.how != "r"

    def __repr__(self) -> str:
        return f"Handle({self.opened_as!r}, {self.how!r})"


class Model(RuleBasedStateMachine):
    """The state: a directory of the file system under test and its twin in the model. The
    rules are in the groups below; a test combines groups (fewer rules, longer interleavings
    of each)."""

    # Set by run_model for one test: the client of the file system's root, the model's
    # directory, boto3, the bucket, and the steps taken.
    client: Any
    model: Path
    s3: Any
    bucket: str
    serial: Iterator[int]
    steps: Iterator[int]
    s3_each_step: bool  # else at the end of each example only

    # Names: a small alphabet, so that calls collide. Deeper paths arise by renaming directories.
    alphabet = "abc"
    paths = paths_of(alphabet, 2)
    start_dirs = 2  # at most this many directories at the start

    def __init__(self) -> None:
        super().__init__()
        name = f"ex{next(self.serial)}"  # a fresh directory per example
        self.prefix = name + "/"
        self.fs = self.client.within(name)
        self.client.mkdir(name, 0o755)
        self.l_root = self.model / name
        self.l_root.mkdir()
        self.local = OsClient(self.l_root)
        self.open: list[Handle] = []

    # ---------------------------------------------------------------- helpers

    def both(self, fn):
        """fn(client) on the model and on the file system under test: (model result, result)."""
        return attempt(lambda: fn(self.local)), attempt(lambda: fn(self.fs))

    def same(self, fn):
        local, tested = self.both(fn)
        agree(tested, local)
        return local

    def on_handle(self, handle: Handle, fn):
        """fn(client, handle) on the handle's two open files; the results must agree."""
        local, tested = attempt(lambda: fn(self.local, handle.local)), attempt(lambda: fn(self.fs, handle.tested))
        agree(tested, local)
        return local

    def is_file(self, path: str) -> bool:
        return (self.l_root / path).is_file()

    def is_dir(self, path: str) -> bool:
        return (self.l_root / path).is_dir()

    def tree(self) -> tuple[dict[str, bytes], set[str]]:
        """The model: relative path -> bytes of every file, and every directory."""
        files, dirs = {}, set()
        for dirpath, dirnames, filenames in os.walk(self.l_root):
            rel = os.path.relpath(dirpath, self.l_root)
            for d in dirnames:
                dirs.add(os.path.normpath(os.path.join(rel, d)))
            for f in filenames:
                files[os.path.normpath(os.path.join(rel, f))] = Path(dirpath, f).read_bytes()
        return files, dirs

    def open_for_writing(self) -> set[str]:
        """Model paths of files with a writable descriptor open: S3 has their last save only."""
        out = set()
        for h in self.open:
            if h.writable:
                target = os.readlink(f"/proc/self/fd/{h.local}")
                if not target.endswith(" (deleted)"):
                    out.add(os.path.relpath(target, self.l_root))
        return out

    def pick(self, data, label: str, prefer: str = "any", root: bool = False, avoid: str | None = None) -> str:
        """Two times in three an existing file or directory (as preferred), else a name of
        the alphabet: most calls then act on something. root: "." may be picked too;
        avoid: an existing name not to pick (the source of a rename)."""
        files, dirs = self.tree()
        existing = sorted({"file": files, "dir": dirs}.get(prefer) or [*files, *dirs])
        existing = [p for p in existing if p != avoid]
        names = st.sampled_from([*(["."] if root else []), *self.paths])
        return data.draw(st.one_of(*[st.sampled_from(existing)] * 2 * bool(existing), names), label=label)

    @initialize(data=st.data())
    def populate(self, data):
        """A few directories and files to start from, so that most calls meet something."""
        dirs = data.draw(st.sets(st.sampled_from(self.alphabet), max_size=self.start_dirs), label="dirs")
        files = data.draw(st.lists(st.tuples(st.sampled_from(self.paths), blobs), max_size=4), label="files")
        for d in sorted(dirs):
            self.same(lambda fs, d=d: fs.mkdir(d, 0o755))
        for path, blob in files:
            self.same(lambda fs, path=path, blob=blob: make_file(fs, path, blob.data, os.O_TRUNC, 0o644))

    # ---------------------------------------------------------------- S3

    def s3_mismatches(self) -> dict[str, str]:
        """Model path -> what is wrong with its object (or marker) in S3."""
        files, dirs = self.tree()
        skip = self.open_for_writing()
        objects = keys_of(self.s3, self.bucket, self.prefix)
        markers = {self.prefix + d + "/" for d in dirs} | {self.prefix}
        problems = {}
        # Directories here come from mkdir, which writes a marker (semantics.md, Directories:
        # Empty directories), and rename, which copies it (Writes: rename of a directory).
        for key in objects:
            rel = key[len(self.prefix) :]
            if key.endswith("/") and key not in markers:
                problems[rel] = "a marker of no directory"
            elif not key.endswith("/") and rel not in files and rel not in skip:
                problems[rel] = "an object of no file"
        for marker in markers - set(objects):
            problems[marker[len(self.prefix) :]] = "a directory without its marker"
        for rel, data in files.items():
            obj = objects.get(self.prefix + rel)
            if rel in skip:
                continue
            if obj is None:
                problems[rel] = "a file with no object"
            elif obj["ETag"].strip('"') != hashlib.md5(data).hexdigest():  # single-part objects
                problems[rel] = f"an object of {obj['Size']} bytes, the model has {len(data)}"
        return problems

    @invariant()
    def after_each_step(self):
        next(self.steps)
        if self.s3_each_step:
            self.s3_holds_the_model()

    def s3_holds_the_model(self):
        problems = self.s3_mismatches()
        files, _ = self.tree()
        if problems and all(files.get(rel) == b"" for rel in problems):
            # A file closed with nothing written is saved at its last close (FUSE
            # release), just after close() returns (semantics.md, Writes: A file
            # closed with nothing written): give such saves a moment.
            wait_until(lambda: not self.s3_mismatches(), 5)
            problems = self.s3_mismatches()
        assert not problems, problems

    def teardown(self):
        for handle in self.open:
            self.local.close(handle.local)
            self.fs.close(handle.tested)
        self.open.clear()
        self.s3_holds_the_model()
        # Everything saved: the file system shows the model, and S3 holds its bytes.
        files, dirs = self.tree()
        for rel, data in files.items():
            assert with_handle(self.fs, rel, os.O_RDONLY, read_all) == data, rel
            assert self.s3.get_object(Bucket=self.bucket, Key=self.prefix + rel)["Body"].read() == data, rel
        for rel in dirs:
            assert self.fs.listdir(rel) == self.local.listdir(rel), rel


class ContentRules:
    """Whole calls on file contents: open, act, close (which saves, in s3fuse)."""

    @rule(
        data=st.data(),
        blob=st.builds(Blob, st.integers(0, 9), st.just(0) | sizes),
        mode=modes,
        how=st.sampled_from(["trunc", "excl", "plain"]),
    )
    def create(self, data, blob, mode, how):
        path = self.pick(data, "path")
        flags = {"trunc": os.O_TRUNC, "excl": os.O_EXCL, "plain": 0}[how]
        self.same(lambda fs: make_file(fs, path, blob.data, flags, mode))

    @rule(data=st.data(), offset=offsets, blob=blobs)
    def pwrite(self, data, offset, blob):
        """Write at an offset, past the end too (a hole), in a file opened without O_CREAT."""
        path = self.pick(data, "path", "file")
        content = blob.data
        self.same(lambda fs: with_handle(fs, path, os.O_WRONLY, lambda fs, h: fs.pwrite(h, content, offset)))

    @rule(data=st.data(), blob=blobs)
    def append(self, data, blob):
        path = self.pick(data, "path", "file")
        content = blob.data
        self.same(lambda fs: with_handle(fs, path, os.O_WRONLY | os.O_APPEND, lambda fs, h: fs.write(h, content)))

    @rule(data=st.data(), size=offsets, through_fd=st.booleans())
    def truncate(self, data, size, through_fd):
        """Shrink or grow: truncate(2) of a closed file, or ftruncate of an open one."""
        path = self.pick(data, "path", "file")
        if through_fd:
            self.same(lambda fs: with_handle(fs, path, os.O_RDWR, lambda fs, h: fs.ftruncate(h, size)))
        else:
            self.same(lambda fs: fs.truncate(path, size))

    @rule(data=st.data(), offset=st.none() | offsets, length=st.integers(1, 6000))
    def read(self, data, offset, length):
        """The whole file, or a range (past the end too)."""
        path = self.pick(data, "path", "file")
        if offset is None:
            self.same(lambda fs: with_handle(fs, path, os.O_RDONLY, read_all))
        else:
            self.same(lambda fs: with_handle(fs, path, os.O_RDONLY, lambda fs, h: fs.pread(h, length, offset)))


class TreeRules:
    """Names and directories."""

    @rule(data=st.data())
    def unlink(self, data):
        path = self.pick(data, "path", "file")
        self.same(lambda fs: fs.unlink(path))

    @rule(data=st.data(), mode=dir_modes)
    def mkdir(self, data, mode):
        path = self.pick(data, "path")
        self.same(lambda fs: fs.mkdir(path, mode))

    @rule(data=st.data())
    def rmdir(self, data):
        """Of an empty directory, or ENOTEMPTY, ENOTDIR, ENOENT."""
        path = self.pick(data, "path", "dir")
        self.same(lambda fs: fs.rmdir(path))

    @rule(data=st.data(), noreplace=st.booleans())
    def rename(self, data, noreplace):
        """File onto file or a new name, directory onto an empty directory or a new name,
        and the failures: ENOTEMPTY, EISDIR, ENOTDIR, EINVAL (into itself), EEXIST."""
        src = self.pick(data, "src")
        dst = self.pick(data, "dst", avoid=src)
        flags = RENAME_NOREPLACE if noreplace else 0
        self.same(lambda fs: fs.rename(src, dst, flags))

    @rule(data=st.data())
    def rename_exchange(self, data):
        src = self.pick(data, "src")
        dst = self.pick(data, "dst", avoid=src)
        # RENAME_EXCHANGE fails with EINVAL: S3 cannot swap two objects (Writes:
        # rename flags and checks). The kernel's own checks come first.
        local, tested = self.both(lambda fs: fs.rename(src, dst, RENAME_EXCHANGE))
        if local is None:
            self.local.rename(dst, src, RENAME_EXCHANGE)  # swap back
            assert tested == Err("EINVAL") or (src == dst and tested is None), tested
        else:
            agree(tested, local)

    @rule(data=st.data())
    def link(self, data):
        src = self.pick(data, "src", "file")
        dst = self.pick(data, "dst", avoid=src)
        # Hard links are not supported: EPERM (File attributes: Hard links). The
        # kernel's own checks (ENOENT, EEXIST, EPERM for a directory) come first.
        local, tested = self.both(lambda fs: fs.link(src, dst))
        if local is None:
            self.local.unlink(dst)
            assert tested == Err("EPERM"), tested
        else:
            agree(tested, local)

    @rule(data=st.data(), mode=modes)
    def chmod(self, data, mode):
        path = self.pick(data, "path")
        self.same(lambda fs: fs.chmod(path, mode))


class LookRules:
    """stat and readdir."""

    @rule(data=st.data())
    def stat_path(self, data):
        path = self.pick(data, "path", root=True)
        local, tested = self.both(lambda fs: stat_of(fs.stat(path)))
        if isinstance(local, tuple) and local[0] == "dir" and tested == ("dir", DIR_MODE_DEFAULT):
            # A directory's mode is kept in memory only, and a listing or lookup from
            # S3 brings back --dir-mode (Directories: Directory attributes; Writes:
            # chmod, chown, utimes on directories).
            return
        agree(tested, local)

    @rule(data=st.data())
    def listdir(self, data):
        path = self.pick(data, "path", "dir", root=True)
        self.same(lambda fs: fs.listdir(path))


class XattrRules:
    """user.* extended attributes of files (the object's x-amz-meta-*)."""

    @rule(data=st.data(), name=xattr_names, value=xattr_values)
    def setxattr(self, data, name, value):
        path = self.pick(data, "path", "file")
        if self.is_dir(path):
            # Directories have no xattrs: setting one is ENODATA (Extended
            # attributes: Directories). The model's file system would store it.
            assert attempt(lambda: self.fs.setxattr(path, name, value)) == Err("ENODATA")
            return
        if name == POSIX_XATTR and self.is_file(path):
            # Cannot be set: use chmod (Extended attributes: user.NAME).
            assert attempt(lambda: self.fs.setxattr(path, name, value)) == Err("EINVAL")
            return
        self.same(lambda fs: fs.setxattr(path, name, value))

    @rule(data=st.data(), name=xattr_names)
    def getxattr(self, data, name):
        path = self.pick(data, "path", "file")
        self.same(lambda fs: fs.getxattr(path, name))

    @rule(data=st.data())
    def listxattr(self, data):
        path = self.pick(data, "path", "file")
        self.same(lambda fs: user_xattrs(fs, path))

    @rule(data=st.data(), name=xattr_names)
    def removexattr(self, data, name):
        """user.mode too: ENODATA, as getxattr (the model never has it)."""
        path = self.pick(data, "path", "file")
        self.same(lambda fs: fs.removexattr(path, name))


class HandleRules:
    """Descriptors kept open across steps: writes through one, reads through another or by
    name, renames and unlinks of open files."""

    handles = Bundle("handles")

    @rule(target=handles, data=st.data(), how=st.sampled_from(list(OPEN_FLAGS)))
    def open_handle(self, data, how):
        path = self.pick(data, "path", "file")
        flags = OPEN_FLAGS[how]
        local, tested = self.both(lambda fs: fs.open(path, flags, 0o644))
        if not isinstance(local, Err) and not isinstance(tested, Err):
            handle = Handle(local, tested, how, path)
            self.open.append(handle)
            return handle
        for fs, opened in ((self.local, local), (self.fs, tested)):
            if not isinstance(opened, Err):
                fs.close(opened)
        agree(tested, local)
        return multiple()

    @rule(handle=handles, offset=offsets, blob=blobs)
    def handle_pwrite(self, handle, offset, blob):
        """At an offset; at the end for a descriptor opened with O_APPEND (Linux's pwrite)."""
        content = blob.data
        self.on_handle(handle, lambda fs, h: fs.pwrite(h, content, offset))

    @rule(handle=handles, offset=offsets, length=st.integers(1, 6000))
    def handle_pread(self, handle, offset, length):
        """A file open only for reading, once unlinked or replaced, keeps only the bytes already
        cached (semantics.md, Writes: unlink): a read of any other byte is EIO. Whether the read-ahead
        of a small file started at open got them first is a race, which the in-process file system,
        with no kernel between the calls, loses more often than a mount."""
        local = attempt(lambda: self.local.pread(handle.local, length, offset))
        tested = attempt(lambda: self.fs.pread(handle.tested, length, offset))
        if tested == Err("EIO") and not handle.writable and self.local.fstat(handle.local).st_nlink == 0:
            return
        agree(tested, local)

    @rule(handle=handles, size=offsets)
    def handle_truncate(self, handle, size):
        self.on_handle(handle, lambda fs, h: fs.ftruncate(h, size))

    @rule(handle=handles)
    def handle_fstat(self, handle):
        self.on_handle(handle, fstat_of)

    @rule(handle=handles)
    def handle_fsync(self, handle):
        self.on_handle(handle, lambda fs, h: fs.fsync(h))

    @rule(handle=consumes(handles))
    def close_handle(self, handle):
        self.open.remove(handle)
        self.on_handle(handle, lambda fs, h: fs.close(h))


def run_model(
    machine: type[Model], client, model: Path, s3, bucket: str, examples: int, s3_each_step: bool = True
) -> None:
    """Run examples sequences of calls; client: of the root of the file system under test."""
    configured = type(machine.__name__, (machine,), {})
    configured.client, configured.model, configured.s3, configured.bucket = client, model, s3, bucket
    configured.s3_each_step = s3_each_step
    configured.serial = itertools.count(1)
    configured.steps = counter = itertools.count()
    started = time.monotonic()
    run_state_machine_as_test(
        configured,
        settings=settings(
            max_examples=round(examples * SCALE),
            stateful_step_count=STEPS,
            deadline=None,
            # The same sequences on every run (CI). S3FUSE_MODEL_RANDOM=1 explores new ones.
            derandomize=not os.environ.get("S3FUSE_MODEL_RANDOM"),
            database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
    taken = next(counter)
    seconds = time.monotonic() - started
    print(f"{machine.__name__}: {taken} steps in {seconds:.1f} s, {taken / seconds:.0f} steps/s")  # pytest -s


class Everything(ContentRules, TreeRules, LookRules, XattrRules, HandleRules, Model):
    pass


class OpenFiles(HandleRules, ContentRules, LookRules, Model):
    """Open descriptors, with the calls that change names under them."""

    alphabet = "ab"
    paths = paths_of(alphabet, 2)
    start_dirs = 1

    unlink = TreeRules.unlink
    rename = TreeRules.rename


class Xattrs(XattrRules, Model):
    """user.* attributes, with the calls that rewrite, replace or move objects: two names."""

    alphabet = "ab"
    paths = paths_of(alphabet, 1)
    start_dirs = 0
    create = ContentRules.create
    pwrite = ContentRules.pwrite
    truncate = ContentRules.truncate
    unlink = TreeRules.unlink
    rename = TreeRules.rename
    chmod = TreeRules.chmod


# Short TTLs: listings, lookups and HEADs from S3 keep replacing what s3fuse knows.
SHORT_TTLS = ("--attr-ttl", "0.3", "--dir-ttl", "0.3", "--negative-ttl", "0")


def machines(scale: int = 1) -> list:
    """Parameters (machine, examples, args: more options of s3fuse) of a test of each machine;
    scale: examples times those of a mount."""
    return [
        pytest.param(Everything, 80 * scale, (), id="everything"),
        pytest.param(OpenFiles, 55 * scale, (), id="open-files"),
        pytest.param(Xattrs, 40 * scale, (), id="xattrs"),
        pytest.param(Everything, 30 * scale, SHORT_TTLS, id="everything-short-ttls", marks=pytest.mark.slow),
    ]
