"""Model-based test: random sequences of file system calls, on the mount and on a local directory.

A hypothesis state machine (``RuleBasedStateMachine``) applies each call twice: to a
directory on the mount and to its twin under ``tmp_path`` on a local file system (the
model). Returned bytes, listings, sizes, kinds, modes and the errno of every failure
must agree, except where docs/semantics.md documents a difference; each such exception
below names its section. After every step S3 itself (boto3) must hold what the model
holds: every file not open for writing is an object with its bytes, every directory a
marker, and nothing else.

Names come from a small alphabet (a, b, c; depth at most 2, deeper only by renaming a
directory), so calls collide: renames onto existing names, rmdir of non-empty
directories, writes to names that are directories. Most calls open, act and close
within one step (close() saves in s3fuse); a bundle of open descriptors adds
interleavings: writes through one descriptor, reads through another or by name, renames
and unlinks of open files. Each example works in a fresh directory (ex1, ex2, ...) of
one mount. The rules come in groups; besides a machine with all of them, two smaller
machines (open files, xattrs) reach long interleavings of their own calls sooner.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import itertools
import os
import random
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import hypothesis.internal.conjecture.engine
import pytest
from conftest import is_mounted, keys_of, wait_until
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
STEPS = 40


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


@dataclass(frozen=True)
class Err:
    """A failed call, by errno name (readable in hypothesis's report)."""

    name: str


def attempt(fn):
    try:
        return fn()
    except OSError as exc:
        return Err(errno.errorcode.get(exc.errno, str(exc.errno)))


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def with_fd(path: Path, flags: int, action, mode: int = 0o644):
    """open, action(fd), close: the result of action; a failing close() fails the call too."""
    fd = os.open(path, flags, mode)
    try:
        result = action(fd)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)  # saves the file in s3fuse: an error here is the call's error
    return result


def make_file(root: Path, path: str, content: bytes, flags: int, mode: int) -> int:
    return with_fd(root / path, os.O_CREAT | os.O_WRONLY | flags, lambda fd: os.write(fd, content), mode)


def make_dir(root: Path, path: str, mode: int) -> None:
    os.mkdir(root / path, mode)


def stat_of(path: Path) -> tuple:
    st_ = os.stat(path)
    if stat.S_ISDIR(st_.st_mode):
        # st_size, st_nlink and the times of a directory are not compared: s3fuse
        # reports 0, 2 and the mount time (semantics.md, Directories: Directory attributes).
        return ("dir", stat.S_IMODE(st_.st_mode))
    # Times are not compared: LastModified in whole seconds (File attributes: st_mtime),
    # noatime. Nor is st_blocks, which s3fuse computes as ceil(size / 512) whatever holes
    # the file has (File attributes: st_blocks). st_nlink is 1 on both: hard links cannot
    # be made on the mount (File attributes: Hard links).
    return ("file", st_.st_size, stat.S_IMODE(st_.st_mode), st_.st_nlink)


def fstat_of(fd: int) -> tuple:
    st_ = os.fstat(fd)
    if stat.S_ISDIR(st_.st_mode):
        return ("dir",)  # as in stat_of; O_RDONLY opens directories too
    return ("file", st_.st_size)  # st_nlink: 0 for a file unlinked while open, locally


def listing(path: Path) -> list[tuple[str, bool]]:
    # Sorted: s3fuse lists in key order, a local file system in its own (Directories:
    # Order of entries). "." and ".." are in neither (os.scandir drops them).
    with os.scandir(path) as it:
        return sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)


def user_xattrs(path: Path) -> list[str]:
    # listxattr of a file on the mount also names the s3.* facts (Extended attributes).
    return sorted(n for n in os.listxattr(path) if n.startswith("user."))


OPEN_FLAGS = {
    "r": os.O_RDONLY,
    "rw": os.O_RDWR,
    "append": os.O_WRONLY | os.O_APPEND,
    "trunc": os.O_RDWR | os.O_TRUNC,
    "create": os.O_RDWR | os.O_CREAT,  # a new file stays unsaved while it is open
}


@dataclass(eq=False)
class Handle:
    """One open file: a descriptor on the mount and one on the model, opened alike."""

    local: int
    mounted: int
    how: str  # a key of OPEN_FLAGS
    opened_as: str

    @property
    def writable(self) -> bool:
        return self.how != "r"

    def __repr__(self) -> str:
        return f"Handle({self.opened_as!r}, {self.how!r})"


class Model(RuleBasedStateMachine):
    """The state: a directory on the mount and its twin in the model. The rules are in the
    groups below; a test combines groups (fewer rules, longer interleavings of each)."""

    # Set by run_model for one test: the mount point, the model's directory, boto3, the bucket.
    mnt: Path
    model: Path
    s3: Any
    bucket: str
    serial: Iterator[int]

    # Names: a small alphabet, so that calls collide. Deeper paths arise by renaming directories.
    alphabet = "abc"
    paths = paths_of(alphabet, 2)
    start_dirs = 2  # at most this many directories at the start

    def __init__(self) -> None:
        super().__init__()
        assert is_mounted(self.mnt), "the mount is gone"  # else the calls below would go to the bare directory
        name = f"ex{next(self.serial)}"  # a fresh directory per example
        self.prefix = name + "/"
        self.m_root = self.mnt / name
        self.l_root = self.model / name
        self.l_root.mkdir()
        self.m_root.mkdir()
        self.open: list[Handle] = []

    # ---------------------------------------------------------------- helpers

    def both(self, fn):
        """fn(root) on the model and on the mount: (model result, mount result)."""
        return attempt(lambda: fn(self.l_root)), attempt(lambda: fn(self.m_root))

    def same(self, fn):
        local, mounted = self.both(fn)
        assert mounted == local, f"mount: {mounted!r}, model: {local!r}"
        return local

    def on_handle(self, handle: Handle, fn):
        """fn(fd) on the handle's two descriptors; the results must agree."""
        local, mounted = attempt(lambda: fn(handle.local)), attempt(lambda: fn(handle.mounted))
        assert mounted == local, f"mount: {mounted!r}, model: {local!r}"
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
            self.same(partial(make_dir, path=d, mode=0o755))
        for path, blob in files:
            self.same(partial(make_file, path=path, content=blob.data, flags=os.O_TRUNC, mode=0o644))

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
            os.close(handle.local)
            os.close(handle.mounted)
        self.open.clear()
        self.s3_holds_the_model()
        # Everything saved: the mount shows the model, and S3 holds its bytes.
        files, dirs = self.tree()
        for rel, data in files.items():
            assert (self.m_root / rel).read_bytes() == data, rel
            assert self.s3.get_object(Bucket=self.bucket, Key=self.prefix + rel)["Body"].read() == data, rel
        for rel in dirs:
            assert listing(self.m_root / rel) == listing(self.l_root / rel), rel


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
        self.same(partial(make_file, path=path, content=blob.data, flags=flags, mode=mode))

    @rule(data=st.data(), offset=offsets, blob=blobs)
    def pwrite(self, data, offset, blob):
        """Write at an offset, past the end too (a hole), in a file opened without O_CREAT."""
        path = self.pick(data, "path", "file")
        content = blob.data
        self.same(lambda root: with_fd(root / path, os.O_WRONLY, lambda fd: os.pwrite(fd, content, offset)))

    @rule(data=st.data(), blob=blobs)
    def append(self, data, blob):
        path = self.pick(data, "path", "file")
        content = blob.data
        self.same(lambda root: with_fd(root / path, os.O_WRONLY | os.O_APPEND, lambda fd: os.write(fd, content)))

    @rule(data=st.data(), size=offsets, through_fd=st.booleans())
    def truncate(self, data, size, through_fd):
        """Shrink or grow: truncate(2) of a closed file, or ftruncate of an open one."""
        path = self.pick(data, "path", "file")
        if through_fd:
            self.same(lambda root: with_fd(root / path, os.O_RDWR, lambda fd: os.ftruncate(fd, size)))
        else:
            self.same(lambda root: os.truncate(root / path, size))

    @rule(data=st.data(), offset=st.none() | offsets, length=st.integers(1, 6000))
    def read(self, data, offset, length):
        """The whole file, or a range (past the end too)."""
        path = self.pick(data, "path", "file")
        if offset is None:
            self.same(lambda root: with_fd(root / path, os.O_RDONLY, read_all))
        else:
            self.same(lambda root: with_fd(root / path, os.O_RDONLY, lambda fd: os.pread(fd, length, offset)))


class TreeRules:
    """Names and directories."""

    @rule(data=st.data())
    def unlink(self, data):
        path = self.pick(data, "path", "file")
        self.same(lambda root: os.unlink(root / path))

    @rule(data=st.data(), mode=dir_modes)
    def mkdir(self, data, mode):
        path = self.pick(data, "path")
        self.same(partial(make_dir, path=path, mode=mode))

    @rule(data=st.data())
    def rmdir(self, data):
        """Of an empty directory, or ENOTEMPTY, ENOTDIR, ENOENT."""
        path = self.pick(data, "path", "dir")
        self.same(lambda root: os.rmdir(root / path))

    @rule(data=st.data(), noreplace=st.booleans())
    def rename(self, data, noreplace):
        """File onto file or a new name, directory onto an empty directory or a new name,
        and the failures: ENOTEMPTY, EISDIR, ENOTDIR, EINVAL (into itself), EEXIST."""
        src = self.pick(data, "src")
        dst = self.pick(data, "dst", avoid=src)
        flags = RENAME_NOREPLACE if noreplace else 0
        self.same(lambda root: renameat2(root / src, root / dst, flags))

    @rule(data=st.data())
    def rename_exchange(self, data):
        src = self.pick(data, "src")
        dst = self.pick(data, "dst", avoid=src)
        # RENAME_EXCHANGE fails with EINVAL: S3 cannot swap two objects (Writes:
        # rename flags and checks). The kernel's own checks come first.
        local, mounted = self.both(lambda root: renameat2(root / src, root / dst, RENAME_EXCHANGE))
        if local is None:
            renameat2(self.l_root / dst, self.l_root / src, RENAME_EXCHANGE)  # swap back
            assert mounted == Err("EINVAL") or (src == dst and mounted is None), mounted
        else:
            assert mounted == local, f"mount: {mounted!r}, model: {local!r}"

    @rule(data=st.data())
    def link(self, data):
        src = self.pick(data, "src", "file")
        dst = self.pick(data, "dst", avoid=src)
        # Hard links are not supported: EPERM (File attributes: Hard links). The
        # kernel's own checks (ENOENT, EEXIST, EPERM for a directory) come first.
        local, mounted = self.both(lambda root: os.link(root / src, root / dst))
        if local is None:
            os.unlink(self.l_root / dst)
            assert mounted == Err("EPERM"), mounted
        else:
            assert mounted == local, f"mount: {mounted!r}, model: {local!r}"

    @rule(data=st.data(), mode=modes)
    def chmod(self, data, mode):
        path = self.pick(data, "path")
        self.same(lambda root: os.chmod(root / path, mode))


class LookRules:
    """stat and readdir."""

    @rule(data=st.data())
    def stat_path(self, data):
        path = self.pick(data, "path", root=True)
        local, mounted = self.both(lambda root: stat_of(root / path))
        if isinstance(local, tuple) and local[0] == "dir" and mounted == ("dir", DIR_MODE_DEFAULT):
            # A directory's mode is kept in memory only, and a listing or lookup from
            # S3 brings back --dir-mode (Directories: Directory attributes; Writes:
            # chmod, chown, utimes on directories).
            return
        assert mounted == local, f"mount: {mounted!r}, model: {local!r}"

    @rule(data=st.data())
    def listdir(self, data):
        path = self.pick(data, "path", "dir", root=True)
        self.same(lambda root: listing(root / path))


class XattrRules:
    """user.* extended attributes of files (the object's x-amz-meta-*)."""

    @rule(data=st.data(), name=xattr_names, value=xattr_values)
    def setxattr(self, data, name, value):
        path = self.pick(data, "path", "file")
        if self.is_dir(path):
            # Directories have no xattrs: setting one is ENODATA (Extended
            # attributes: Directories). The model's file system would store it.
            assert attempt(lambda: os.setxattr(self.m_root / path, name, value)) == Err("ENODATA")
            return
        if name == POSIX_XATTR and self.is_file(path):
            # Cannot be set: use chmod (Extended attributes: user.NAME).
            assert attempt(lambda: os.setxattr(self.m_root / path, name, value)) == Err("EINVAL")
            return
        self.same(lambda root: os.setxattr(root / path, name, value))

    @rule(data=st.data(), name=xattr_names)
    def getxattr(self, data, name):
        path = self.pick(data, "path", "file")
        self.same(lambda root: os.getxattr(root / path, name))

    @rule(data=st.data())
    def listxattr(self, data):
        path = self.pick(data, "path", "file")
        self.same(lambda root: user_xattrs(root / path))

    @rule(data=st.data(), name=xattr_names)
    def removexattr(self, data, name):
        """user.mode too: ENODATA, as getxattr (the model never has it)."""
        path = self.pick(data, "path", "file")
        self.same(lambda root: os.removexattr(root / path, name))


class HandleRules:
    """Descriptors kept open across steps: writes through one, reads through another or by
    name, renames and unlinks of open files."""

    handles = Bundle("handles")

    @rule(target=handles, data=st.data(), how=st.sampled_from(list(OPEN_FLAGS)))
    def open_handle(self, data, how):
        path = self.pick(data, "path", "file")
        flags = OPEN_FLAGS[how]
        local, mounted = self.both(lambda root: os.open(root / path, flags, 0o644))
        if isinstance(local, int) and isinstance(mounted, int):
            handle = Handle(local, mounted, how, path)
            self.open.append(handle)
            return handle
        for fd in (local, mounted):
            if isinstance(fd, int):
                os.close(fd)
        assert mounted == local, f"mount: {mounted!r}, model: {local!r}"
        return multiple()

    @rule(handle=handles, offset=offsets, blob=blobs)
    def handle_pwrite(self, handle, offset, blob):
        """At an offset; at the end for a descriptor opened with O_APPEND (Linux's pwrite)."""
        content = blob.data
        self.on_handle(handle, lambda fd: os.pwrite(fd, content, offset))

    @rule(handle=handles, offset=offsets, length=st.integers(1, 6000))
    def handle_pread(self, handle, offset, length):
        self.on_handle(handle, lambda fd: os.pread(fd, length, offset))

    @rule(handle=handles, size=offsets)
    def handle_truncate(self, handle, size):
        self.on_handle(handle, lambda fd: os.ftruncate(fd, size))

    @rule(handle=handles)
    def handle_fstat(self, handle):
        self.on_handle(handle, fstat_of)

    @rule(handle=handles)
    def handle_fsync(self, handle):
        self.on_handle(handle, os.fsync)

    @rule(handle=consumes(handles))
    def close_handle(self, handle):
        self.open.remove(handle)
        self.on_handle(handle, os.close)


def run_model(machine: type[Model], mnt: Path, model: Path, s3, bucket: str, examples: int) -> None:
    configured = type(machine.__name__, (machine,), {})
    configured.mnt, configured.model, configured.s3, configured.bucket = mnt, model, s3, bucket
    configured.serial = itertools.count(1)
    run_state_machine_as_test(
        configured,
        settings=settings(
            max_examples=examples,
            stateful_step_count=STEPS,
            deadline=None,
            # The same sequences on every run (CI). S3FUSE_MODEL_RANDOM=1 explores new ones.
            derandomize=not os.environ.get("S3FUSE_MODEL_RANDOM"),
            database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )


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


# Short TTLs: listings, lookups and HEADs from S3 keep replacing what the mount knows.
SHORT_TTLS = ("--attr-ttl", "0.3", "--dir-ttl", "0.3", "--negative-ttl", "0")


@pytest.mark.parametrize(
    ("machine", "examples", "args"),
    [
        pytest.param(Everything, 80, (), id="everything"),
        pytest.param(OpenFiles, 55, (), id="open-files"),
        pytest.param(Xattrs, 40, (), id="xattrs"),
        pytest.param(Everything, 30, SHORT_TTLS, id="everything-short-ttls", marks=pytest.mark.slow),
    ],
)
def test_model(mount, s3, bucket, tmp_path, monkeypatch, machine, examples, args):
    # Shrinking a failure replays many sequences, each through the mount: cap it, so that a
    # failing run ends (with the smallest sequence found so far) before conftest's watchdog
    # (180 s per test) kills the daemon. A private knob of hypothesis; harmless if it goes.
    monkeypatch.setattr(hypothesis.internal.conjecture.engine, "MAX_SHRINKING_SECONDS", 60, raising=False)
    mnt = mount(bucket, *args)
    model = tmp_path / "model"
    model.mkdir()
    run_model(machine, mnt, model, s3, bucket, round(examples * SCALE))
    mount.check(mnt)
