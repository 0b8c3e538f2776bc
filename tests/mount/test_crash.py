"""Crash battery: SIGKILL the daemon at random points of a write workload, remount, and check that
every file whose close() returned is in S3 byte for byte, that no object holds part of a file,
and that the multipart uploads the dead daemons left are cleaned up by ``s3fuse cleanup``."""

from __future__ import annotations

import hashlib
import os
import random
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ROOT, Mounter, base_env, fusermount_u, is_mounted, wait_until

from s3fuse.write.conditions import PROBE_PREFIX

# CI: 12 (~45 s a mode); by hand (scripts/crash-battery): 200 or more
CRASH_POINTS = int(os.environ.get("S3FUSE_CRASH_POINTS", "8"))

# Writes files of varied sizes (9 MiB ones are multipart uploads streamed while written), some
# with fsync before close, one in five a rewrite of an earlier file. Before opening a file it logs
# "begin NAME DIGEST", and after its close() returned "done NAME DIGEST" in an fsync'd local log:
# what the file system acknowledged.
WRITER = textwrap.dedent(
    """
    import hashlib, os, random, sys
    directory, acked, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    with open(acked, "a") as log:
        for i in range(1000):
            n = rng.randrange(i) if i > 3 and rng.random() < 0.2 else i
            size = rng.choice([0, 10, 4096, 300_000, 1 << 20, 9 << 20])
            body = f"file {i} of writer {seed}\\n".encode() + rng.randbytes(size)
            data = body + hashlib.sha256(body).hexdigest().encode()
            name, digest = f"f{n:03d}", hashlib.sha256(data).hexdigest()
            log.write(f"begin {name} {digest}\\n")
            log.flush()
            try:
                fd = os.open(os.path.join(directory, name), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
                for start in range(0, len(data), 1 << 20):
                    os.write(fd, data[start : start + (1 << 20)])
                if rng.random() < 0.3:
                    os.fsync(fd)
                os.close(fd)
            except OSError:
                sys.exit(0)  # the daemon is gone
            log.write(f"done {name} {digest}\\n")
            log.flush()
            os.fsync(log.fileno())
    """
)


def acknowledged(log: Path) -> tuple[dict[str, str], dict[str, set[str]]]:
    """From the writer's log: each file's acknowledged digest (its last "done"), and the digests
    its object may have: that one, or that of a write begun after it and cut short by the kill."""
    done: dict[str, str] = {}
    allowed: dict[str, set[str]] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        what, name, digest = line.split()
        if what == "done":
            done[name] = digest
            allowed[name] = {digest}
        else:
            allowed.setdefault(name, set()).add(digest)
    return done, allowed


def whole(data: bytes) -> bool:
    """The object is one complete file of the writer's (its trailing digest matches)."""
    return hashlib.sha256(data[:-64]).hexdigest().encode() == data[-64:]


def recover_with_command(cache: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "s3fuse", "recover", str(cache / "s3fuse")],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=base_env(),
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


def journal_empty(cache: Path) -> bool:
    return not list((cache / "s3fuse" / "journal").glob("*/[0-9]*.json"))


def kill_while_working(mount: Mounter, mnt: Path, writer: subprocess.Popen, delay: float) -> None:
    """SIGKILL the daemon of ``mnt`` after ``delay`` seconds, while the writer still works; the writer
    then sees an error and stops, and nothing hangs."""
    time.sleep(delay)
    assert writer.poll() is None, "the writer ended before the kill"
    mount.kill(mnt)
    assert writer.wait(60) == 0
    fusermount_u(mnt)
    assert wait_until(lambda: not is_mounted(mnt), 10)


def recover_after_kill(mount: Mounter, bucket: str, args: tuple[str, ...], cache: Path, point: int) -> Path | None:
    """In write-back mode, upload what the killed daemon journaled: by the next mount at even crash
    points (returned: it is mounted) or by ``s3fuse recover`` at odd ones."""
    if "--write-back" not in args:
        return None
    again = None
    if point % 2:
        recover_with_command(cache)
    else:
        again = mount(bucket, *args)
        assert wait_until(lambda: journal_empty(cache), 120), mount.log_text(again)
    assert journal_empty(cache)
    return again


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "write-back"])
def test_sigkill_at_random_points_loses_nothing_acknowledged(s3, bucket, mount, moto, tmp_path, mode):
    """In write-back mode, the next mount recovers what the dead daemon journaled (at even crash
    points) or ``s3fuse recover`` does (at odd ones); then S3 is checked as in the default mode."""
    args = ("--write-back",) if mode == "write-back" else ()
    cache = tmp_path / "xdg"
    rng = random.Random(20261124)
    acknowledged_total = 0
    partial_uploads_seen = 0
    for point in range(CRASH_POINTS):
        mnt = mount(bucket, *args)
        directory = mnt / f"p{point:03d}"
        directory.mkdir()
        log = tmp_path / f"acked-{point}.txt"
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(directory), str(log), str(point)])
        kill_while_working(mount, mnt, writer, rng.uniform(0.05, 2.0))
        again = recover_after_kill(mount, bucket, args, cache, point)
        done, allowed = acknowledged(log)
        acknowledged_total += len(done)
        prefix = f"p{point:03d}/"
        stored = {
            obj["Key"].removeprefix(prefix): obj["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
            if obj["Key"] != prefix
        }
        for name, key in stored.items():
            data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            # an object under a file's name is a whole file, never a part of one, and one written
            # last or being written: a newer acknowledged version is never replaced by an older one
            assert whole(data), f"crash point {point}: {key} holds {len(data)} bytes that are no whole file"
            assert hashlib.sha256(data).hexdigest() in allowed.get(name, ()), f"crash point {point}: {key}"
        missing = sorted(set(done) - set(stored))
        assert not missing, f"crash point {point}: acknowledged but not in S3: {missing}"

        # a new daemon on the same cache dir mounts, and reads what the dead one acknowledged
        again = again or mount(bucket, *args)
        for name in done:
            digest = hashlib.sha256((again / prefix / name).read_bytes()).hexdigest()
            assert digest in allowed[name], f"crash point {point}: {name} read back"
        mount.check(again)
        partial_uploads_seen += len(s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []))

    # and a kill while a mount checked how the server treats a conditional CompleteMultipartUpload
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    probes = [u for u in uploads if u["Key"].startswith(PROBE_PREFIX)]
    partial_uploads_seen += len(probes)
    print(f"{CRASH_POINTS} crash points, {acknowledged_total} files acknowledged, {partial_uploads_seen} uploads left")
    assert acknowledged_total > CRASH_POINTS  # the kills came after work was done, not only before
    # the dead daemons' multipart uploads: aborted by cleanup, and by nothing else
    res = subprocess.run(
        [sys.executable, "-m", "s3fuse", "cleanup", bucket, "--older-than", "0", "--endpoint-url", moto.url],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env=base_env(XDG_CACHE_HOME=str(cache)),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    summary = re.search(r"aborted (\d+) upload\(s\).* and (\d+) that s3fuse did not start", res.stdout)
    assert summary, res.stdout
    aborted, unknown = int(summary[1]), int(summary[2])
    # every one of them, those killed before their id was recorded too (by their announcement)
    assert (aborted, unknown) == (partial_uploads_seen, 0), res.stdout
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
