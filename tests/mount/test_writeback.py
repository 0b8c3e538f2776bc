"""--write-back: close() returns once the file is in the local journal; uploads run in the background.

Real mounts whose S3 traffic goes through the fault proxy (tests/faultproxy.py), so a test can
hold uploads back (every PUT fails) and let them go (rules cleared). boto3 straight to moto is
the ground truth. What must hold: close() returns 0 while S3 refuses the upload, the file is
read, listed and stat'ed from the mount meanwhile, and lands in S3 once S3 takes it; after a
SIGKILL the next mount with the same cache dir, or ``s3fuse recover``, uploads every file whose
close() returned, and nothing that was deleted; a full cache dir or journal makes writers wait,
never fail or drop data.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, SECRET_KEY, base_env, fusermount_u, is_mounted, keys_of, wait_until
from faultproxy import Rule

from mount.test_faults import MIB, QUICK, body_of, mount_via, randbytes

WRITE_BACK = ("--write-back", *QUICK)
FRESH = ("--attr-ttl", "0", "--dir-ttl", "0", "--negative-ttl", "0")  # every lookup and listing asks S3
# PutObject, UploadPart, CopyObject of files (directory markers, whose keys end in /, go through)
UPLOADS = {"method": "PUT", "path": r"^/[^/]+/.*[^/]$"}
BOUND = 60.0  # seconds for background uploads to land once S3 takes them (retries back off to 8 s)


def upload_state(path: Path) -> str:
    return os.getxattr(path, "s3.upload_state").decode()


def journal_records(cache: Path, bucket: str) -> list[str]:
    directory = cache / "s3fuse" / "journal" / bucket
    return sorted(p.name for p in directory.glob("[0-9]*.json")) if directory.exists() else []


def kill(mount, mnt: Path) -> None:
    """SIGKILL the daemon and clear the dead mount point."""
    mount.kill(mnt)
    fusermount_u(mnt)
    assert wait_until(lambda: not is_mounted(mnt), 10)


def put_existing(s3, bucket: str) -> bytes:
    """The object write_pending_files changes, put before mounting."""
    old = randbytes(7, 12 * MIB)
    s3.put_object(Bucket=bucket, Key="d/existing.bin", Body=old)
    return old


def write_pending_files(mnt: Path, old: bytes) -> dict[str, bytes]:
    """With every upload refused: new files of several sizes, a changed range in the middle of an
    existing 12 MiB object (uploaded later by copying its unchanged parts) and a chmod; each
    close() returns 0. What S3 must end up holding, by key."""
    expected = {
        "d/empty": b"",
        "d/small.txt": b"hello journal\n",
        "d/three.bin": randbytes(3, 3 * MIB),
        "d/twelve.bin": randbytes(12, 12 * MIB + 17),
    }
    for key, data in expected.items():
        (mnt / key).write_bytes(data)
    with open(mnt / "d/existing.bin", "r+b") as f:
        f.seek(6 * MIB)
        f.write(b"X" * 1000)
    expected["d/existing.bin"] = old[: 6 * MIB] + b"X" * 1000 + old[6 * MIB + 1000 :]
    os.chmod(mnt / "d/small.txt", 0o600)
    return expected


def assert_in_s3(s3, bucket: str, expected: dict[str, bytes]) -> None:
    for key, data in expected.items():
        assert body_of(s3, bucket, key) == data, key
    assert s3.head_object(Bucket=bucket, Key="d/small.txt")["Metadata"]["mode"] == str(0o100600)


def test_close_returns_while_s3_refuses_and_the_upload_follows(s3, bucket, mount, faulty):
    old = put_existing(s3, bucket)
    faulty.add(Rule("internal", **UPLOADS))
    mnt = mount_via(mount, faulty, bucket, *WRITE_BACK, *FRESH)
    expected = write_pending_files(mnt, old)
    assert set(keys_of(s3, bucket)) == {"d/existing.bin"}  # nothing new reached S3
    # The mount shows the files as written: listed, stat'ed and read, though S3 has none of them
    assert sorted(os.listdir(mnt / "d")) == sorted(key.split("/")[1] for key in expected)
    for key, data in expected.items():
        assert (mnt / key).stat().st_size == len(data), key
        assert (mnt / key).read_bytes() == data, key
    assert (mnt / "d/small.txt").stat().st_mode & 0o777 == 0o600
    state = upload_state(mnt / "d/three.bin")
    assert state == "uploading" or (state.startswith("failed: ") and "retrying" in state), state

    faulty.clear()
    assert wait_until(lambda: all(upload_state(mnt / key) == "clean" for key in expected), BOUND)
    assert_in_s3(s3, bucket, expected)
    assert not journal_records(mount.tmp_path / "xdg", bucket)
    log = mount.log_text(mnt)
    assert "retrying in" in log
    mount.check(mnt)


def test_fsync_waits_for_s3(s3, bucket, mount, faulty):
    """fsync() keeps the default contract under --write-back: 0 only once S3 has the bytes."""
    mnt = mount_via(mount, faulty, bucket, *WRITE_BACK)
    with open(mnt / "synced.bin", "wb") as f:
        f.write(b"durable now")
        f.flush()
        os.fsync(f.fileno())
        assert body_of(s3, bucket, "synced.bin") == b"durable now"
    faulty.add(Rule("internal", **UPLOADS))
    with open(mnt / "refused.bin", "wb") as f:
        f.write(b"not in S3")
        f.flush()
        with pytest.raises(OSError) as err:
            os.fsync(f.fileno())
        assert err.value.errno == 5  # EIO
    faulty.clear()
    assert wait_until(lambda: "refused.bin" in keys_of(s3, bucket), BOUND)
    assert body_of(s3, bucket, "refused.bin") == b"not in S3"
    mount.check(mnt)


@pytest.mark.parametrize("recovery", ["remount", "recover"])
def test_sigkill_loses_nothing_that_close_acknowledged(s3, bucket, mount, faulty, moto, recovery):
    old = put_existing(s3, bucket)
    faulty.add(Rule("internal", **UPLOADS))
    mnt = mount_via(mount, faulty, bucket, *WRITE_BACK)
    expected = write_pending_files(mnt, old)
    (mnt / "d/deleted.txt").write_text("gone before the crash")
    (mnt / "d/deleted.txt").unlink()  # its record goes too: nothing resurrects it
    cache = mount.tmp_path / "xdg"
    assert len(journal_records(cache, bucket)) == len(expected)
    kill(mount, mnt)
    faulty.clear()
    assert set(keys_of(s3, bucket)) == {"d/existing.bin"}

    if recovery == "remount":
        again = mount(bucket)  # straight to moto: the journal, not the old endpoint, says what to do
        ended = "every upload resumed from the write-back journal has ended"  # logged after the last record goes
        assert wait_until(lambda: not journal_records(cache, bucket) and ended in mount.log_text(again), BOUND)
        assert f"resuming {len(expected)} upload(s)" in mount.log_text(again)
        for key, data in expected.items():
            assert (again / key).read_bytes() == data
        mount.check(again)
    else:
        res = subprocess.run(
            [sys.executable, "-m", "s3fuse", "recover", str(cache / "s3fuse")],
            capture_output=True, text=True, timeout=120, cwd=ROOT, env=base_env(),
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"recovered {len(expected)} of {len(expected)} file(s); 0 left" in res.stdout
        # the endpoint came from the journal's mount.json (the proxy); the secret is in no output
        assert SECRET_KEY not in res.stdout + res.stderr
        assert not journal_records(cache, bucket)
        again = subprocess.run(
            [sys.executable, "-m", "s3fuse", "recover", str(cache / "s3fuse")],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=base_env(),
        )  # fmt: skip
        assert again.returncode == 0 and "nothing to recover" in again.stdout
    assert_in_s3(s3, bucket, expected)
    assert "d/deleted.txt" not in keys_of(s3, bucket)


def test_a_full_cache_dir_makes_writers_wait(s3, bucket, mount, faulty, tmp_path):
    """The cache dir is a 20 MiB tmpfs and S3 refuses uploads: the third 8 MiB file waits for
    space instead of failing, and finishes once S3 takes the first two."""
    cache = tmp_path / "small-cache"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(cache)], check=True)
    try:
        faulty.add(Rule("internal", **UPLOADS))
        mnt = mount_via(mount, faulty, bucket, *WRITE_BACK, "--cache-dir", str(cache))
        files = {f"f{i}": randbytes(i, 8 * MIB) for i in range(3)}
        outcome: list[BaseException | None] = []

        def write_all() -> None:
            try:
                for name, data in files.items():
                    (mnt / name).write_bytes(data)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        writer = threading.Thread(target=write_all)
        writer.start()
        assert wait_until(lambda: "is full: writing" in mount.log_text(mnt), 30), mount.log_text(mnt)
        time.sleep(1)
        assert writer.is_alive() and not outcome  # waiting, not failed
        faulty.clear()
        writer.join(BOUND)
        assert outcome == [None]
        assert wait_until(lambda: all(upload_state(mnt / name) == "clean" for name in files), BOUND)
        for name, data in files.items():
            assert body_of(s3, bucket, name) == data
        mount.check(mnt)
    finally:
        subprocess.run(["umount", "-l", str(cache)], check=False)


def test_the_journal_limit_makes_close_wait(s3, bucket, mount, faulty):
    faulty.add(Rule("internal", **UPLOADS))
    mnt = mount_via(mount, faulty, bucket, *WRITE_BACK, "--write-back-limit", "1M")
    (mnt / "first").write_bytes(randbytes(1, 2 * MIB))  # alone over the limit: nothing to wait for
    second = threading.Thread(target=(mnt / "second").write_bytes, args=(randbytes(2, MIB),))
    second.start()
    time.sleep(3)
    assert second.is_alive()  # its close() waits for the first upload
    faulty.clear()
    second.join(BOUND)
    assert not second.is_alive()
    assert wait_until(lambda: {"first", "second"} <= set(keys_of(s3, bucket)), BOUND)
    assert body_of(s3, bucket, "second") == randbytes(2, MIB)
    mount.check(mnt)


def test_one_journal_one_daemon(bucket, mount, moto, tmp_path):
    """A second --write-back mount of the bucket with the same cache dir would adopt the first's
    journal: it refuses to start, with one line saying why."""
    first = mount(bucket, "--write-back")
    other = tmp_path / "other"
    other.mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "s3fuse", bucket, str(other), "--write-back", "--endpoint-url", moto.url],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env=base_env(XDG_CACHE_HOME=str(tmp_path / "xdg")),
    )  # fmt: skip
    assert res.returncode == 1
    assert re.search(r"journal .* is in use by another s3fuse process; give each mount", res.stderr), res.stderr
    assert not is_mounted(other)
    mount.check(first)


def test_a_file_waiting_for_its_upload_is_written_again_at_once(s3, bucket, mount, faulty):
    """Appends and a truncate of a file whose upload S3 refuses return at once (the file goes on
    in a copy of its journaled spill file); after a SIGKILL the last acknowledged state lands."""
    faulty.add(Rule("internal", **UPLOADS))
    mnt = mount_via(mount, faulty, bucket, *WRITE_BACK)
    log = mnt / "app.log"
    log.write_bytes(b"line 1\n")
    for n in (2, 3):
        with open(log, "ab") as f:
            f.write(b"line %d\n" % n)
    os.truncate(log, len(b"line 1\nline 2\n") + 2)
    expected = b"line 1\nline 2\nli"
    assert log.read_bytes() == expected
    cache = mount.tmp_path / "xdg"
    assert len(journal_records(cache, bucket)) == 1  # each close replaced the record
    spills = list((cache / "s3fuse" / "journal" / bucket).glob("spill-*"))
    assert len(spills) == 1  # the copies a record no longer names are gone
    kill(mount, mnt)
    faulty.clear()
    again = mount(bucket)
    assert wait_until(lambda: not journal_records(cache, bucket), BOUND), mount.log_text(again)
    assert body_of(s3, bucket, "app.log") == expected
    mount.check(again)
