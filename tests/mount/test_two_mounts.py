"""Two daemons, one bucket: each sees the other's changes once its TTLs have passed, and a file
closed on one and opened on the other after the TTL shows the new bytes (close-to-open)."""

from __future__ import annotations

import os
import time

from conftest import wait_until

TTL = 1.0  # --attr-ttl, --dir-ttl and --negative-ttl of both mounts
TTLS = ["--attr-ttl", str(TTL), "--dir-ttl", str(TTL), "--negative-ttl", str(TTL)]


def test_close_to_open_between_two_mounts(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="shared.txt", Body=b"version 1\n")
    a = mount(bucket, *TTLS)
    b = mount(bucket, *TTLS)
    assert (b / "shared.txt").read_bytes() == b"version 1\n"  # b has it cached now (page cache too)

    # the same size, so neither the size nor a stale page cache can hide the change
    (a / "shared.txt").write_bytes(b"version 2\n")
    time.sleep(TTL + 0.2)
    assert (b / "shared.txt").read_bytes() == b"version 2\n"

    # a file held open on b keeps reading what it opened; a new open sees the new bytes
    with open(b / "shared.txt", "rb") as held:
        (a / "shared.txt").write_bytes(b"version 3, longer\n")
        time.sleep(TTL + 0.2)
        assert held.read() == b"version 2\n"
    assert (b / "shared.txt").read_bytes() == b"version 3, longer\n"
    assert os.stat(b / "shared.txt").st_size == len(b"version 3, longer\n")


def test_names_appear_and_vanish_between_two_mounts(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="dir/old.txt", Body=b"old\n")
    a = mount(bucket, *TTLS)
    b = mount(bucket, *TTLS)
    assert os.listdir(b / "dir") == ["old.txt"]
    assert not (b / "dir/new.txt").exists()  # now known missing on b (negative cache)

    (a / "dir/new.txt").write_bytes(b"new\n")
    os.unlink(a / "dir/old.txt")
    os.mkdir(a / "made")
    assert wait_until(lambda: sorted(os.listdir(b / "dir")) == ["new.txt"], TTL + 5)
    assert (b / "dir/new.txt").read_bytes() == b"new\n"
    assert not (b / "dir/old.txt").exists()
    assert (b / "made").is_dir()

    # a rename of a directory on b is seen on a
    os.rename(b / "dir", b / "moved")
    assert wait_until(lambda: not (a / "dir").exists() and (a / "moved/new.txt").exists(), TTL + 5)
    assert (a / "moved/new.txt").read_bytes() == b"new\n"
