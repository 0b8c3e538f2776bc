"""The mixed workload of the crash battery (tests/mount/test_crash_mixed.py) and its model.

Run as a script, ``crashload.py DIRECTORY LOG SEED`` is the writer: one process making a seeded
random sequence of every kind of change in DIRECTORY (a directory of a mount) until the
daemon dies. Before each change it logs ``{"begin": SEQ, "op": [...]}`` and after the call
returned ``{"done": SEQ}``, the log fsync'd: what the file system acknowledged. The model
replays the log (``Model.of_log``): every change done, and the one begun and not done, if any.

Contents are generated from (seed, seq), so the model knows every byte without the log
holding them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import stat
import sys
from pathlib import Path
from typing import Any

SEEDED_DIR = "big"  # a directory of many keys, put there with boto3 before the mount, renamed once
SEEDED_SUBDIRS = 4
SEEDED_FILES = 200
SIZES = [10, 4096, 100_000, 300_000, 1 << 20, 9 << 20]  # 9 MiB: a multipart upload, streamed
SIZE_WEIGHTS = [30, 25, 15, 15, 10, 2]

Op = list[Any]  # ["write", path, size, fsync], ["rename", src, dst], ...


@dataclasses.dataclass
class Entry:
    """What a name shows: a file's bytes, a symlink's target or a directory, and the attributes the
    workload set (None: not checked, as a content change gives the file the time of its save)."""

    kind: str  # "file", "link", "dir"
    data: bytes = b""
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None

    def described(self) -> str:
        what = f"{len(self.data)} bytes {hashlib.sha256(self.data).hexdigest()[:12]}" if self.kind == "file" else ""
        if self.kind == "link":
            what = f"-> {self.data.decode()}"
        attrs = {k: v for k in ("mode", "uid", "gid", "mtime_ns") if (v := getattr(self, k)) is not None}
        return f"{self.kind} {what} {attrs}".strip()


def content(seed: int, seq: int, size: int) -> bytes:
    """The bytes op ``seq`` writes; a file's whole bytes end in their own sha256, so no object
    shows the start of one write and the end of another without the digest telling."""
    body = f"op {seq} of writer {seed}\n".encode() + random.Random(f"{seed}/{seq}").randbytes(size)
    return body + hashlib.sha256(body).hexdigest().encode()


def seeded() -> dict[str, bytes]:
    """The keys (relative to the crash point's directory) put before the mount: the directory of
    many keys a rename moves, with markers so that it never vanishes while files are removed."""
    objects = {f"{SEEDED_DIR}/": b""}
    for s in range(SEEDED_SUBDIRS):
        objects[f"{SEEDED_DIR}/s{s}/"] = b""
    for i in range(SEEDED_FILES):
        objects[f"{SEEDED_DIR}/s{i % SEEDED_SUBDIRS}/k{i:03d}"] = content(-1, i, 50)
    return objects


def under(path: str, directory: str) -> bool:
    return path.startswith(directory + "/")


class Model:
    """The tree of one crash point's directory: path -> Entry ("" is the directory itself)."""

    def __init__(self, seed: int, tree: dict[str, Entry]) -> None:
        self.seed = seed
        self.tree = tree

    @classmethod
    def initial(cls, seed: int) -> Model:
        tree = {"": Entry("dir")}
        for key, data in seeded().items():
            if key.endswith("/"):
                tree[key[:-1]] = Entry("dir")
            else:
                tree[key] = Entry("file", data)
        return cls(seed, tree)

    @classmethod
    def of_log(cls, seed: int, log: Path) -> tuple[Model, tuple[int, Op] | None]:
        """The tree after every change the log says was done, and the change begun and not done."""
        model = cls.initial(seed)
        pending: tuple[int, Op] | None = None
        for line in log.read_text().splitlines() if log.exists() else []:
            record = json.loads(line)
            if "begin" in record:
                pending = (record["begin"], record["op"])
            elif pending is not None and record.get("done") == pending[0]:
                model.apply(*pending)
                pending = None
        return model, pending

    def copy(self) -> Model:
        return Model(self.seed, {p: dataclasses.replace(e) for p, e in self.tree.items()})

    def files(self, kinds: tuple[str, ...] = ("file",)) -> list[str]:
        return sorted(p for p, e in self.tree.items() if e.kind in kinds)

    def dirs(self) -> list[str]:
        return sorted(p for p, e in self.tree.items() if e.kind == "dir")

    def apply(self, seq: int, op: Op) -> None:
        kind, path, *args = op
        tree = self.tree
        if kind == "write":
            size, _ = args
            old = tree.get(path)
            # O_TRUNC keeps the file's mode and owner
            tree[path] = Entry("file", content(self.seed, seq, size), *(attrs(old) if old else (0o100644, 0, 0)))
        elif kind == "append":
            tree[path].data += content(self.seed, seq, args[0])
            tree[path].mtime_ns = None
        elif kind == "truncate":
            data = tree[path].data
            tree[path].data = data[: args[0]].ljust(args[0], b"\0")
            tree[path].mtime_ns = None
        elif kind == "chmod":
            tree[path].mode = stat.S_IFREG | args[0]
        elif kind == "chown":
            tree[path].uid, tree[path].gid = args
        elif kind == "utime":
            tree[path].mtime_ns = args[1]
        elif kind == "symlink":
            tree[path] = Entry("link", args[0].encode(), stat.S_IFLNK | 0o777, 0, 0)
        elif kind == "mkdir":
            tree[path] = Entry("dir")
        elif kind == "rename":
            (dst,) = args
            for p in [p for p in tree if p == path or under(p, path)]:
                tree[dst + p[len(path) :]] = tree.pop(p)
        elif kind in ("unlink", "rmdir"):
            del tree[path]
        else:
            raise ValueError(f"unknown op {op}")


def attrs(entry: Entry) -> tuple[int | None, int | None, int | None]:
    return entry.mode, entry.uid, entry.gid


# ---------------------------------------------------------------- the check


def observed(directory: Path) -> dict[str, Entry]:
    """The tree under directory as the file system shows it, in the model's terms."""
    tree = {"": Entry("dir")}
    for root, dirnames, filenames in os.walk(directory):
        for name in dirnames + filenames:
            full = Path(root, name)
            path = str(full.relative_to(directory))
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                tree[path] = Entry("dir")
            elif stat.S_ISLNK(st.st_mode):
                tree[path] = Entry("link", os.fsencode(os.readlink(full)), st.st_mode, st.st_uid, st.st_gid)
            else:
                tree[path] = Entry("file", full.read_bytes(), st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    return tree


def matches(expected: Entry | None, actual: Entry | None) -> bool:
    """actual shows what expected says (attributes the model does not know are not compared)."""
    if expected is None or actual is None:
        return expected is actual
    return (expected.kind, expected.data) == (actual.kind, actual.data) and all(
        getattr(expected, name) in (None, getattr(actual, name)) for name in ("mode", "uid", "gid", "mtime_ns")
    )


def problems(actual: dict[str, Entry], model: Model, pending: tuple[int, Op] | None) -> list[str]:
    """How actual differs from the model: every change done is there and the one begun is there
    or not. Each name is checked alone, so a rename cut short may show at both names (at the old
    name and not yet deleted) or, for a directory, part of its entries at each name; but no entry
    of it may be missing from both."""
    states = [model.tree]
    if pending is not None:
        after = model.copy()
        after.apply(*pending)
        states.append(after.tree)
    found = []
    for path in sorted(set().union(actual, *states)):
        if not any(matches(state.get(path), actual.get(path)) for state in states):
            expected = " or ".join(e.described() if (e := state.get(path)) else "absent" for state in states)
            seen = e.described() if (e := actual.get(path)) else "absent"
            found.append(f"{path or '.'}: {seen}, expected {expected}")
    if pending is not None and pending[1][0] == "rename":
        src, dst = pending[1][1:]
        for path in [p for p in model.tree if p == src or under(p, src)]:
            entry = model.tree[path]
            if not matches(entry, actual.get(path)) and not matches(entry, actual.get(dst + path[len(src) :])):
                found.append(f"{path}: lost by the rename begun to {dst}")
        # A directory's, cut short, is finished by the next mount (renamelog.py): never split.
        if model.tree[src].kind == "dir" and src in actual and dst in actual:
            found.append(f"{src}: the rename to {dst} cut short shows at both names")
    return found


def half_done(actual: dict[str, Entry], pending: tuple[int, Op] | None) -> bool:
    """A rename cut short shows at both names."""
    return pending is not None and pending[1][0] == "rename" and {pending[1][1], pending[1][2]} <= set(actual)


# ---------------------------------------------------------------- the writer


def choose(rng: random.Random, model: Model, seq: int, big_rename_at: int) -> Op:
    """The next change: valid in the tree as the model has it."""
    dirs = model.dirs()
    files = model.files()
    entries = model.files(("file", "link"))
    where = rng.choice(dirs)
    new = f"{where}/n{seq}".lstrip("/")
    if seq == big_rename_at and SEEDED_DIR in model.tree:
        return ["rename", SEEDED_DIR, f"{SEEDED_DIR}{seq}"]
    choices = {
        "create": 15,
        "write": 10 if files else 0,
        "append": 8 if files else 0,
        "truncate": 6 if files else 0,
        "chmod": 6 if files else 0,
        "chown": 4 if files else 0,
        "utime": 6 if files else 0,
        "symlink": 5,
        "mkdir": 4,
        "rename": 8 if entries else 0,
        "rename-dir": 3 if len(dirs) > 1 else 0,
        "unlink": 6 if entries else 0,
        "rmdir": 3,
    }
    kind = rng.choices(list(choices), list(choices.values()))[0]
    size = rng.choices(SIZES, SIZE_WEIGHTS)[0]
    path = rng.choice(files) if files else new
    if kind == "create":
        return ["write", new, size, rng.random() < 0.3]
    if kind == "write":
        return ["write", path, size, rng.random() < 0.3]
    if kind == "append":
        return ["append", path, rng.choice(SIZES[:3])]
    if kind == "truncate":
        length = len(model.tree[path].data)
        return ["truncate", path, rng.choice([0, length // 2, length + 5000])]
    if kind == "chmod":
        return ["chmod", path, rng.choice([0o600, 0o640, 0o755, 0o444, 0o711])]
    if kind == "chown":
        return ["chown", path, rng.randrange(1000, 2000), rng.randrange(1000, 2000)]
    if kind == "utime":
        mtime = rng.randrange(10**9, 2 * 10**9) * 10**9 + rng.choice([0, rng.randrange(10**9)])
        return ["utime", path, mtime - 10**9, mtime]
    if kind == "symlink":
        return ["symlink", new, rng.choice(["../x", "target of " + new, "/etc/hostname"])]
    if kind == "mkdir":
        return ["mkdir", new]
    if kind == "rename":
        src = rng.choice(entries)
        replaced = [p for p in files if p != src]
        dst = rng.choice(replaced) if replaced and rng.random() < 0.3 else new
        return ["rename", src, dst]
    if kind == "rename-dir":
        src = rng.choice(dirs[1:])
        parent = rng.choice([d for d in dirs if d != src and not under(d, src)])
        return ["rename", src, f"{parent}/m{seq}".lstrip("/")]
    if kind == "unlink":
        return ["unlink", rng.choice(entries)]
    empty = [d for d in dirs[1:] if not any(under(p, d) for p in model.tree)]
    return ["rmdir", rng.choice(empty)] if empty else ["mkdir", new]


def perform(directory: Path, seed: int, seq: int, op: Op) -> None:
    kind, path, *args = op
    full = directory / path
    if kind in ("write", "append"):
        flags = os.O_CREAT | os.O_WRONLY | (os.O_TRUNC if kind == "write" else os.O_APPEND)
        data = content(seed, seq, args[0])
        fd = os.open(full, flags, 0o644)
        try:
            for start in range(0, len(data), 1 << 20):
                os.write(fd, data[start : start + (1 << 20)])
            if kind == "write" and args[1]:
                os.fsync(fd)
        finally:
            os.close(fd)
    elif kind == "truncate":
        os.truncate(full, args[0])
    elif kind == "chmod":
        os.chmod(full, args[0])
    elif kind == "chown":
        os.chown(full, *args)
    elif kind == "utime":
        os.utime(full, ns=tuple(args))
    elif kind == "symlink":
        os.symlink(args[0], full)
    elif kind == "mkdir":
        os.mkdir(full)
    elif kind == "rename":
        os.rename(full, directory / args[0])
    elif kind == "unlink":
        os.unlink(full)
    elif kind == "rmdir":
        os.rmdir(full)


def main(directory: Path, log_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    os.umask(0o022)
    model = Model.initial(seed)
    big_rename_at = rng.randrange(60)  # early: while the writer still runs when the kill comes
    with open(log_path, "a") as log:
        for seq in range(100_000):
            op = choose(rng, model, seq, big_rename_at)
            log.write(json.dumps({"begin": seq, "op": op}) + "\n")
            log.flush()
            try:
                perform(directory, seed, seq, op)
            except OSError as exc:  # the daemon is gone; the test checks that it was killed by then
                log.write(json.dumps({"failed": seq, "errno": exc.errno}) + "\n")
                return
            log.write(json.dumps({"done": seq}) + "\n")
            log.flush()
            os.fsync(log.fileno())
            model.apply(seq, op)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
