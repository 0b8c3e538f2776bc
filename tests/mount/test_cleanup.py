"""``s3fuse cleanup``: orphaned multipart uploads of a crashed daemon are aborted, others kept."""

from __future__ import annotations

import contextlib
import os
import sys

import pytest
from conftest import ROOT, base_env, fusermount_u, run, wait_until
from faultproxy import Rule

from s3fuse.options import parse_duration

MIB = 1 << 20


def uploads(s3, bucket: str) -> dict[str, str]:
    """key -> upload id of the multipart uploads in progress."""
    return {u["Key"]: u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}


def run_cleanup(bucket: str, moto, tmp_path, *args: str) -> str:
    """``s3fuse cleanup BUCKET ARGS`` with the mounts' cache dir; what it prints."""
    cmd = [sys.executable, "-m", "s3fuse", "cleanup", bucket, "--endpoint-url", moto.url, *args]
    return run(cmd, env=base_env(XDG_CACHE_HOME=str(tmp_path / "xdg")), cwd=ROOT, text=True).stdout


def test_cleanup_aborts_only_what_a_crashed_daemon_left(s3, bucket, mount, moto, tmp_path):
    foreign = s3.create_multipart_upload(Bucket=bucket, Key="other/upload")["UploadId"]
    mnt = mount(bucket)
    daemon = mount.get(mnt)
    fd = os.open(mnt / "big.bin", os.O_CREAT | os.O_WRONLY, 0o644)
    chunk = os.urandom(MIB)
    for _ in range(20):  # more than two 8 MiB parts: the streaming upload has begun
        os.write(fd, chunk)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the kernel sends its cached writes, no flush

    def part_sent() -> bool:
        upload_id = uploads(s3, bucket).get("big.bin")
        return bool(upload_id and s3.list_parts(Bucket=bucket, Key="big.bin", UploadId=upload_id).get("Parts"))

    assert wait_until(part_sent, 30)
    mount.kill(mnt)  # a crash: the upload stays unfinished in S3
    with contextlib.suppress(OSError):
        os.close(fd)
    fusermount_u(mnt)
    orphan = uploads(s3, bucket)["big.bin"]

    def cleanup(*args: str) -> str:
        return run_cleanup(bucket, moto, tmp_path, *args)

    # too recent for the default --older-than 1d
    assert "aborted 0 upload(s)" in cleanup()
    out = cleanup("--older-than", "0", "--dry-run")
    assert "would abort upload of 'big.bin'" in out and "1 that s3fuse did not start" in out
    assert uploads(s3, bucket) == {"big.bin": orphan, "other/upload": foreign}

    out = cleanup("--older-than", "0")
    assert "aborted upload of 'big.bin'" in out
    assert "aborted 1 upload(s)" in out and "1 that s3fuse did not start" in out
    assert uploads(s3, bucket) == {"other/upload": foreign}  # never another program's upload
    assert "aborted 0 upload(s)" in cleanup("--older-than", "0")  # and the record is gone

    # the next mount with that cache dir points at the crashed daemon's unsaved writes
    again = mount(bucket)
    assert f"s3fuse process {daemon.proc.pid}, which did not exit cleanly" in mount.log_text(again)


def test_an_upload_whose_daemon_died_before_recording_it_is_cleaned_up(s3, bucket, mount, moto, faulty, tmp_path):
    """A kill while CreateMultipartUpload's answer is on its way (S3 made the upload, the daemon
    never learnt its id): the announcement written before the request claims it, and
    cleanup aborts it, while another program's upload of the same name is left alone."""
    foreign = s3.create_multipart_upload(Bucket=bucket, Key="other/big.bin")["UploadId"]
    held = faulty.add(Rule("late", method="POST", path=rf"^/{bucket}/big\.bin$", query="uploads", seconds=20.0))
    mnt = mount(bucket, "--endpoint-url", faulty.url, endpoint=False)
    (mnt / "other").mkdir()
    fd = os.open(mnt / "big.bin", os.O_CREAT | os.O_WRONLY, 0o644)
    for _ in range(20):  # more than two 8 MiB parts: the streaming upload begins
        os.write(fd, os.urandom(MIB))
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    assert wait_until(lambda: held.applied == 1 and "big.bin" in uploads(s3, bucket), 30)
    mount.kill(mnt)  # S3 answered, the answer is held: the daemon never knew the upload's id
    with contextlib.suppress(OSError):
        os.close(fd)
    fusermount_u(mnt)
    orphan = uploads(s3, bucket)["big.bin"]
    out = run_cleanup(bucket, moto, tmp_path, "--older-than", "0")
    assert "aborted upload of 'big.bin'" in out
    assert "aborted 1 upload(s)" in out and "1 that s3fuse did not start" in out
    assert orphan not in uploads(s3, bucket).values()
    assert uploads(s3, bucket) == {"other/big.bin": foreign}
    # the announcement was used up: nothing of it is left to claim another upload of that name
    again = s3.create_multipart_upload(Bucket=bucket, Key="big.bin")["UploadId"]
    assert "2 that s3fuse did not start" in run_cleanup(bucket, moto, tmp_path, "--older-than", "0")
    assert uploads(s3, bucket) == {"other/big.bin": foreign, "big.bin": again}


@pytest.mark.parametrize(("text", "seconds"), [("0", 0), ("90", 90), ("30m", 1800), ("12h", 43200), ("1d", 86400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_parse_duration_rejects_garbage():
    with pytest.raises(Exception, match="not a duration"):
        parse_duration("soon")
