"""``s3fuse stats`` and ``--metrics`` against a live mount: their request counts are the server's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter

from conftest import base_env, free_port, is_mounted, run
from s3ops import operations_of

from s3fuse.metrics import parse_exposition

MiB = 1 << 20


def stats(mnt, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "s3fuse", "stats", str(mnt), *args], capture_output=True, text=True, timeout=30
    )


def requests_by_operation(mnt) -> Counter[str]:
    res = stats(mnt, "--json")
    assert res.returncode == 0, res.stderr
    return Counter(json.loads(res.stdout)["requests"])


def settled_requests(mnt) -> Counter[str]:
    """The counts once nothing has been sent for a second (read-ahead and prefetch finish in the background)."""
    last = requests_by_operation(mnt)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = requests_by_operation(mnt)
        if now == last:
            return now
        last = now
    raise AssertionError(f"requests kept coming: {last}")


def test_stats_count_what_the_server_saw(s3, bucket, moto, mount, tmp_path):
    s3.put_object(Bucket=bucket, Key="docs/readme.txt", Body=b"read me\n")
    port = free_port()
    # without the attribute index: its GetObjects that find nothing are counted as errors, not requests
    mnt = mount(bucket, "--metrics", f"127.0.0.1:{port}", "--no-attribute-index")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(20 * MiB))  # a multipart upload, and ranged reads

    moto.start_recording()
    before = settled_requests(mnt)
    script = f"""
        set -e
        ls -l {mnt} {mnt}/docs > /dev/null
        cat {mnt}/docs/readme.txt > /dev/null
        cat {mnt}/docs/missing.txt 2> /dev/null || true
        cp {big} {mnt}/big.bin
        cmp {big} {mnt}/big.bin
        mkdir {mnt}/new
        echo one > {mnt}/new/one.txt
        mv {mnt}/new/one.txt {mnt}/new/two.txt
        setfattr -n user.colour -v blue {mnt}/new/two.txt
        getfattr -n s3.tags {mnt}/docs/readme.txt > /dev/null
        cat {mnt}/.s3/request-payment > /dev/null
        cat {mnt}/.s3/website 2> /dev/null || true
        rm -r {mnt}/new
    """
    run(["bash", "-c", script], timeout=120)
    after = settled_requests(mnt)
    recorded = moto.stop_recording(bucket, internal=True)  # the probe of conditional writes too

    ours = after - before
    operations = [operations_of(req) for req in recorded]
    assert all(len(ops) == 1 for ops in operations), operations  # the workload avoids wire-identical pairs
    theirs = Counter(next(iter(ops)) for ops in operations)
    assert ours == theirs
    # the workload reached what it meant to: writes, multipart, copies, deletes, misses
    for op in ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "CopyObject"):
        assert ours[op] > 0, op
    assert ours["GetObject"] > 0  # readme.txt (big.bin is read back from the page cache)

    # the table, and the same numbers from the Prometheus endpoint
    table = stats(mnt)
    assert table.returncode == 0, table.stderr
    assert "CompleteMultipartUpload" in table.stdout and "hit rate" in table.stdout
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        scraped = resp.read().decode()
    samples = parse_exposition(scraped)
    endpoint = Counter({labels["operation"]: int(v) for name, labels, v in samples if name == "s3fuse_requests_total"})
    assert endpoint == after
    errors = [(labels, v) for name, labels, v in samples if name == "s3fuse_request_errors_total"]
    assert ({"operation": "GetBucketWebsite", "code": "NoSuchWebsiteConfiguration"}, 1) in errors
    sent = [v for name, _, v in samples if name == "s3fuse_bytes_sent_total"]
    assert sent[0] >= 20 * MiB
    # the kernel still holds the root and what ls and cat looked up (docs/, readme.txt, big.bin)
    inodes = [v for name, _, v in samples if name == "s3fuse_inodes"]
    assert inodes and inodes[0] >= 3
    assert "the kernel holds" in table.stdout


def test_stats_of_something_else(tmp_path):
    res = stats(tmp_path)
    assert res.returncode == 1
    assert "is not an s3fuse mount" in res.stderr


def test_stats_need_xattrs(s3, bucket, mount):
    mnt = mount(bucket, "--no-xattr")
    res = stats(mnt)
    assert res.returncode == 1
    assert "--no-xattr" in res.stderr


def test_metrics_port_in_use_fails_the_mount(bucket, moto, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        res = subprocess.run(
            [sys.executable, "-m", "s3fuse", bucket, str(mnt), "--endpoint-url", moto.url, "--metrics", str(port)],
            capture_output=True, text=True, timeout=30, env=base_env(XDG_CACHE_HOME=str(tmp_path / "xdg")),
        )  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.startswith(f"s3fuse: cannot serve metrics at {port}: ") and res.stderr.count("\n") == 1
    assert not is_mounted(mnt)
