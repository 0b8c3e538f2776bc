"""Sixteen processes writing, reading, renaming and deleting in one directory for a minute:
no crash, no hang, no torn file, and at the end the mount and S3 agree byte for byte.

Writers write a file of their own and rename it over a shared name, as editors and rsync do,
so every shared name holds some whole file at all times (concurrent writes to one file mix
bytes on any file system, and would prove nothing)."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import random
import time
from pathlib import Path

import pytest

WORKERS = 16
DURATION = 30.0  # seconds
NAMES = [f"f{i:02d}" for i in range(24)]  # shared by every worker, so they collide often
# races with another worker that are a correct answer, not a failure: the name is gone, or (reads)
# the object was replaced while open, which s3fuse reports as EIO (docs/semantics.md, Reads)
EXPECTED_ERRNOS = {"read": {errno.ENOENT, errno.EIO}, "rename": {errno.ENOENT}, "unlink": {errno.ENOENT}}


def content(name: str, writer: int, seq: int) -> bytes:
    """Self-checking bytes: a header, a body whose size varies up to 9 MiB (multipart), a digest."""
    rng = random.Random(f"{name}/{writer}/{seq}")
    size = rng.choice([0, 100, 4096, 70_000, 1 << 20, 9 << 20])
    body = f"{name} {writer} {seq}\n".encode() + rng.randbytes(size)
    return body + hashlib.sha256(body).hexdigest().encode()


def intact(data: bytes) -> bool:
    body, digest = data[:-64], data[-64:]
    return hashlib.sha256(body).hexdigest().encode() == digest


def worker(directory: str, writer: int, deadline: float, results: multiprocessing.Queue) -> None:
    rng = random.Random(writer)
    counts: dict[str, int] = {}
    problems: list[str] = []
    seq = 0
    while time.monotonic() < deadline:
        op = rng.choice(["write", "write", "read", "read", "rename", "unlink", "list"])
        path = os.path.join(directory, rng.choice(NAMES))
        try:
            if op == "write":
                seq += 1
                own = os.path.join(directory, f"tmp-{writer}")
                with open(own, "wb") as f:
                    f.write(content(os.path.basename(path), writer, seq))
                os.rename(own, path)
            elif op == "read":
                with open(path, "rb") as f:
                    st = os.fstat(f.fileno())
                    data = f.read()
                if data and not intact(data):
                    # the kernel's size and the bytes served belong to different versions
                    problems.append(f"torn read of {path}: {len(data)} bytes, inode {st.st_ino}")
            elif op == "rename":
                os.rename(path, os.path.join(directory, rng.choice(NAMES)))
            elif op == "unlink":
                os.unlink(path)
            else:
                os.listdir(directory)
            counts[op] = counts.get(op, 0) + 1
        except OSError as exc:
            if exc.errno not in EXPECTED_ERRNOS.get(op, ()):
                problems.append(f"{op} {path}: {exc}")
            raced = f"raced {op} {errno.errorcode.get(exc.errno or 0)}"
            counts[raced] = counts.get(raced, 0) + 1
    results.put((writer, counts, problems))


@pytest.mark.slow
def test_sixteen_processes_in_one_directory(s3, bucket, mount):
    mnt = mount(bucket, "--attr-ttl", "1", "--dir-ttl", "1")
    directory = mnt / "busy"
    directory.mkdir()
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    deadline = time.monotonic() + DURATION
    procs = [ctx.Process(target=worker, args=(str(directory), n, deadline, results)) for n in range(WORKERS)]
    for p in procs:
        p.start()
    reports = [results.get(timeout=DURATION + 240) for _ in procs]  # a hang fails here
    for p in procs:
        p.join(30)
        assert p.exitcode == 0

    problems = [problem for _, _, found in reports for problem in found]
    assert problems == []
    done = sum(n for _, counts, _ in reports for op, n in counts.items() if not op.startswith("raced"))
    writes = sum(counts.get("write", 0) for _, counts, _ in reports)
    assert writes > WORKERS and done > 10 * WORKERS  # the workers did work, not just fail
    totals: dict[str, int] = {}
    for _, counts, _ in reports:
        for op, n in counts.items():
            totals[op] = totals.get(op, 0) + n
    print("operations:", dict(sorted(totals.items())))

    time.sleep(1.5)  # past the TTLs: the mount's view comes from S3 again
    listed = sorted(os.listdir(directory))
    in_s3 = sorted(
        obj["Key"].removeprefix("busy/")
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="busy/")
        for obj in page.get("Contents", [])
        if obj["Key"] != "busy/"
    )
    assert listed == in_s3
    for name in listed:
        data = (directory / name).read_bytes()
        assert data == s3.get_object(Bucket=bucket, Key=f"busy/{name}")["Body"].read(), name
        assert intact(data), name
        assert data.split(b" ", 1)[0].decode() in NAMES  # written under some name of ours, whole
    assert not list(Path(mount.get(mnt).log.parent).glob("xdg/s3fuse/lost+found/*"))  # nothing had to be kept
