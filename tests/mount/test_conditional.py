"""Two mounts of one bucket racing: saves of one file and exclusive creates of one name, round after
round, on moto and SeaweedFS. Saves carry If-Match / If-None-Match (write/conditions.py), so under
``--on-conflict fail`` never both succeed and the loser's bytes go to its lost+found; by default the
later save wins whole and the conflict is reported in the log.

The races run on SeaweedFS: moto checks a PutObject's condition and then writes, without a lock,
so two racing conditional writes can both pass there (measured: both saves succeeded in 1 round of
300); S3 and SeaweedFS decide them atomically. On moto, a refused condition is checked without a
race: another client's write in the 2 s during which a save goes without a HeadObject."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import boto_client, wait_until

ROUNDS = int(os.environ.get("S3FUSE_RACE_ROUNDS", "25"))  # CI: 25 a test; by hand: 500
FRESH = ["--attr-ttl", "0", "--negative-ttl", "0"]  # each open sees the version in S3 now


def race(*jobs: Callable[[], object]) -> list[object]:
    """Run the jobs at the same moment, one thread each; each one's result or OSError."""
    barrier = threading.Barrier(len(jobs))
    results: list[object] = [None] * len(jobs)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = jobs[i]()
        except OSError as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def payload(side: str, round_: int) -> bytes:
    return f"{side} saved this in round {round_}\n".encode() * 50


@dataclass
class Pair:
    """Two mounts of one bucket (or prefix), each with a cache dir of its own, and the truth in S3."""

    mounts: list[Path]
    caches: list[Path]
    s3: Any
    bucket: str
    prefix: str
    log_text: Callable[[Path], str]

    def body(self, name: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()


@pytest.fixture
def two_mounts(seaweed, mount, tmp_path, request) -> Callable[..., Pair]:
    """two_mounts(*options): a Pair on a fresh prefix of SeaweedFS's bucket."""

    def make(*options: str) -> Pair:
        caches = [tmp_path / "cache-a", tmp_path / "cache-b"]
        prefix = request.node.name + "/"
        where = ["--endpoint-url", seaweed.url, "--cache-dir"]
        target = f"{seaweed.BUCKET}:{prefix}"
        mounts = [mount(target, *where, str(cache), *FRESH, *options, endpoint=False) for cache in caches]
        return Pair(mounts, caches, boto_client(seaweed.url), seaweed.BUCKET, prefix, mount.log_text)

    return make


def kept(cache: Path) -> list[bytes]:
    directory = cache / "lost+found"
    return sorted(p.read_bytes() for p in directory.iterdir()) if directory.is_dir() else []


def test_racing_saves_under_on_conflict_fail_never_both_succeed(two_mounts):
    pair = two_mounts("--on-conflict", "fail")
    a, b = pair.mounts
    (a / "f.txt").write_bytes(b"first\n")
    losers: list[list[bytes]] = [[], []]
    wins = 0
    for i in range(ROUNDS):
        fds = [os.open(m / "f.txt", os.O_WRONLY | os.O_TRUNC) for m in (a, b)]  # both from one version
        bodies = [payload("a", i), payload("b", i)]
        for fd, body in zip(fds, bodies, strict=True):
            os.write(fd, body)
        results = race(*(lambda fd=fd: os.close(fd) for fd in fds))
        ok = [not isinstance(r, OSError) for r in results]
        assert not all(ok), f"round {i}: both saves succeeded"
        for side, r in enumerate(results):
            if isinstance(r, OSError):
                assert r.errno == errno.ESTALE, r
                losers[side].append(bodies[side])
        in_s3 = pair.body("f.txt")
        if any(ok):
            wins += 1
            assert in_s3 == bodies[ok.index(True)], f"round {i}: S3 holds other bytes than the winner's"
        else:
            assert in_s3 in (b"first\n", *(payload(s, j) for j in range(i) for s in "ab"))
    assert wins >= ROUNDS // 2  # the check is not "every save fails"
    for cache, lost in zip(pair.caches, losers, strict=True):  # every loser's bytes are kept
        assert wait_until(lambda cache=cache, lost=lost: kept(cache) == sorted(lost), 30), (kept(cache), lost)


def test_racing_exclusive_creates_under_on_conflict_fail_one_wins(two_mounts):
    pair = two_mounts("--on-conflict", "fail")
    a, b = pair.mounts

    def create(mnt: Path, name: str, body: bytes) -> None:
        fd = os.open(mnt / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)

    for i in range(ROUNDS):
        name, bodies = f"lock{i}", [payload("a", i), payload("b", i)]
        results = race(
            *(
                lambda m=m, body=body, name=name: create(m, name, body)
                for m, body in zip(pair.mounts, bodies, strict=True)
            )
        )
        failed = [r for r in results if isinstance(r, OSError)]
        assert len(failed) == 1, f"round {i}: {results}"
        assert failed[0].errno == errno.EEXIST
        winner = bodies[results.index(None)]
        assert pair.body(name) == winner
        for m in (a, b):
            assert wait_until(lambda m=m, name=name, winner=winner: (m / name).read_bytes() == winner, 5)


def test_racing_saves_by_default_the_later_wins_whole_and_is_reported(two_mounts):
    pair = two_mounts()
    a, b = pair.mounts
    (a / "f.txt").write_bytes(b"first\n")
    for i in range(ROUNDS):
        fds = [os.open(m / "f.txt", os.O_WRONLY | os.O_TRUNC) for m in (a, b)]
        bodies = [payload("a", i), payload("b", i)]
        for fd, body in zip(fds, bodies, strict=True):
            os.write(fd, body)
        assert race(*(lambda fd=fd: os.close(fd) for fd in fds)) == [None, None]
        assert pair.body("f.txt") in bodies
    # Each round one of the two saves found the other's version where the one both opened was.
    reports = sum(
        text.count("since it was opened here; overwriting it") + text.count("during this save; overwriting it")
        for text in map(pair.log_text, pair.mounts)
    )
    assert reports >= ROUNDS


def test_a_change_in_the_seconds_a_save_skips_its_head_is_reported_not_lost(s3, bucket, mount):
    """A version this mount saved less than 2 s ago is saved again without a HeadObject (its headers
    are known); another client's write in between used to be overwritten unnoticed. The save's
    If-Match refuses it: the default overwrites it with a warning (reported)."""
    mnt = mount(bucket)
    (mnt / "f.txt").write_bytes(b"mine, first\n")
    s3.put_object(Bucket=bucket, Key="f.txt", Body=b"theirs\n")
    (mnt / "f.txt").write_bytes(b"mine, second\n")  # the mount still has its own version: no HEAD
    assert s3.get_object(Bucket=bucket, Key="f.txt")["Body"].read() == b"mine, second\n"
    assert "'f.txt' was replaced or deleted in S3 by another writer during this save" in mount.log_text(mnt)
