"""Fault injection: real mounts whose S3 traffic goes through tests/faultproxy.py.

The proxy answers chosen requests with 503 SlowDown or 500 InternalError, resets the
connection, stalls past the client's --timeout or cuts a response body short, by rule
or at random with a fixed seed. boto3 straight to moto (the ``s3`` fixture, never
through the proxy) is the ground truth. What must hold: a transient fault is retried
and leaves exactly the written bytes in S3 and in what reads return; a persistent one
fails the call with EIO within a bound (no hang), leaves nothing partial in S3, keeps
the data in lost+found, and the mount works again once the fault is gone.
"""

from __future__ import annotations

import errno
import http.client
import io
import itertools
import os
import random
import stat
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions
import pytest
from conftest import ACCESS_KEY, REGION, SECRET_KEY, gauge, keys_of, put_objects, wait_until
from faultproxy import FaultProxy, Rule

MIB = 1 << 20
BOUND = 30.0  # seconds a failing call may take: a hang check, not a speed claim
# Small bounds for the persistent faults: 2 attempts of 2 s each per request.
QUICK = ("--timeout", "2", "--retries", "2")
OBJECT = r"^/[^/]+/."  # a path with a key: not the bucket's own requests (start-up checks, listings)
GET_OBJECT = {"method": "GET", "path": OBJECT}


def randbytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def body_of(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def mount_via(mount, proxy: FaultProxy, bucket: str, *args: str) -> Path:
    return mount(bucket, "--endpoint-url", proxy.url, *args, endpoint=False)


def write_file(path: Path, data: bytes, order: list[int] | None = None) -> tuple[str, int] | None:
    """Create or truncate path and write data in 1 MiB pieces (at the offsets of ``order``, if
    given); the first call that failed ("open", "write" or "close") and its errno, or None."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    except OSError as exc:
        return "open", exc.errno
    failed = None
    try:
        for off in range(0, len(data), MIB) if order is None else order:
            os.pwrite(fd, data[off : off + MIB], off)
    except OSError as exc:
        failed = "write", exc.errno
    finally:
        try:
            os.close(fd)
        except OSError as exc:
            failed = failed or ("close", exc.errno)
    return failed


def read_file(path: Path, chunk: int = MIB) -> bytes:
    """Every byte of the file, in reads of chunk bytes; OSError if any read fails."""
    out = bytearray()
    fd = os.open(path, os.O_RDONLY)
    try:
        while data := os.read(fd, chunk):
            out += data
    finally:
        os.close(fd)
    return bytes(out)


def client_of(url: str, **config) -> Any:
    """A boto3 client of url, without retries unless config says otherwise."""
    config.setdefault("retries", {"total_max_attempts": 1})
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=botocore.config.Config(**config),
    )


def uploads_in_progress(s3, bucket: str) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", ())]


# ---------------------------------------------------------------- the proxy itself


def test_proxy_forwards_faithfully_over_kept_alive_connections(s3, bucket, faulty):
    """Without rules the proxy is transparent: keep-alive, HEAD, ranges, and request bodies by
    Content-Length, chunked, and aws-chunked inside chunked."""
    client = client_of(faulty.url)
    before = faulty.connections
    data = randbytes(1, 3 * MIB + 5)
    client.put_object(Bucket=bucket, Key="a.bin", Body=io.BytesIO(data))  # a file: Expect: 100-continue
    assert client.head_object(Bucket=bucket, Key="a.bin")["ContentLength"] == len(data)
    assert client.get_object(Bucket=bucket, Key="a.bin")["Body"].read() == data
    assert client.get_object(Bucket=bucket, Key="a.bin", Range="bytes=5-9")["Body"].read() == data[5:10]
    assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]] == ["a.bin"]
    assert faulty.connections - before == 1  # five requests, one connection

    def put(key: str, body: list[bytes], headers: dict[str, str]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", urlsplit(faulty.url).port, timeout=30)
        try:
            conn.request("PUT", f"/{bucket}/{key}", body=iter(body), headers=headers)  # sent chunked
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"")
        finally:
            conn.close()

    put("chunked.bin", [data[:1000], data[1000 : 2 * MIB], data[2 * MIB :]], {})
    assert body_of(s3, bucket, "chunked.bin") == data
    # aws-chunked (SigV4 streaming, as botocore sends uploads with trailing checksums): part of the body
    signature = b";chunk-signature=" + b"0" * 64
    pieces = (data[:100_000], data[100_000:])
    framed = b"".join(b"%x%s\r\n%s\r\n" % (len(p), signature, p) for p in pieces) + b"0%s\r\n\r\n" % signature
    headers = {
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(data)),
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    }
    put("aws-chunked.bin", [framed[:5000], framed[5000:]], headers)
    assert body_of(s3, bucket, "aws-chunked.bin") == data
    assert all(e.fault is None for e in faulty.log) and len(faulty.log) == 7


def test_proxy_injects_what_its_rules_say(s3, bucket, faulty):
    """Each fault reaches a client that does not retry as the failure it stands for."""
    client = client_of(faulty.url, read_timeout=1, connect_timeout=1)
    s3.put_object(Bucket=bucket, Key="k", Body=b"0123456789")

    def get() -> bytes:
        return client.get_object(Bucket=bucket, Key="k")["Body"].read()

    faulty.add(Rule("slowdown", method="GET", times=1))
    with pytest.raises(botocore.exceptions.ClientError) as err:
        get()
    assert err.value.response["Error"]["Code"] == "SlowDown"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    faulty.add(Rule("internal", method="HEAD", times=1))
    with pytest.raises(botocore.exceptions.ClientError) as err:
        client.head_object(Bucket=bucket, Key="k")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    for rst in (False, True):
        faulty.add(Rule("reset", method="GET", times=1, rst=rst))
        with pytest.raises(botocore.exceptions.ConnectionClosedError):
            get()
    faulty.add(Rule("stall", method="GET", times=1, seconds=3))
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        get()
    faulty.add(Rule("truncate", method="GET", times=1, keep=0.3))
    with pytest.raises(botocore.exceptions.ResponseStreamingError):
        get()
    faulty.add(Rule("stall_body", method="GET", times=1, seconds=3))
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        get()
    faulty.add(Rule("reset", method="PUT", when="after", times=1))
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        client.put_object(Bucket=bucket, Key="after", Body=b"done anyway")
    assert body_of(s3, bucket, "after") == b"done anyway"  # S3 did it; the answer was lost
    faulty.add(Rule("truncate", method="PUT", times=1))  # no body: half the status line
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        client.put_object(Bucket=bucket, Key="cut", Body=b"done too")
    assert body_of(s3, bucket, "cut") == b"done too"
    late = faulty.add(Rule("late", method="GET", times=1, seconds=1.5))
    answer: list[bytes] = []
    patient = client_of(faulty.url)  # waits longer than the answer is held
    asking = threading.Thread(target=lambda: answer.append(patient.get_object(Bucket=bucket, Key="k")["Body"].read()))
    asking.start()
    assert wait_until(lambda: late.applied == 1, BOUND)
    time.sleep(0.3)  # S3 has answered; the proxy holds the answer back
    s3.put_object(Bucket=bucket, Key="k", Body=b"replaced")
    asking.join(BOUND)
    assert answer == [b"0123456789"]  # S3 as it was when the request arrived
    s3.put_object(Bucket=bucket, Key="k", Body=b"0123456789")
    assert get() == b"0123456789"  # every rule is used up
    assert [(e.fault, e.when) for e in faulty.injected()] == [
        ("slowdown", "before"),
        ("internal", "before"),
        ("reset", "before"),
        ("reset", "before"),
        ("stall", "before"),
        ("truncate", "after"),
        ("stall_body", "after"),
        ("reset", "after"),
        ("truncate", "after"),
        ("late", "after"),
    ]


# ---------------------------------------------------------------- transient faults


TRANSIENT = {
    "errors": [("slowdown", "before"), ("internal", "before")],
    "resets": [("reset", "before"), ("reset", "after")],
    "truncations": [("truncate", "after"), ("truncate", "after")],
}


@pytest.mark.parametrize("kind", list(TRANSIENT))
def test_transient_faults_on_every_operation_are_retried(s3, bucket, faulty, mount, kind):
    """Two faults on each kind of request (PutObject, the multipart calls, HeadObject, GET, LIST)
    and everything still succeeds with exactly the bytes written."""
    (f1, w1), (f2, w2) = TRANSIENT[kind]
    old = randbytes(3, 10_000)
    s3.put_object(Bucket=bucket, Key="old.txt", Body=old)
    requests = {
        "PutObject": {"method": "PUT", "not_query": "partNumber"},
        "CreateMultipartUpload": {"method": "POST", "query": "uploads"},
        "UploadPart": {"method": "PUT", "query": "partNumber"},
        "CompleteMultipartUpload": {"method": "POST", "query": "uploadId"},
        "HeadObject": {"method": "HEAD", "path": OBJECT},
        "GetObject": GET_OBJECT,
        "ListObjectsV2": {"method": "GET", "query": "list-type"},
    }
    mnt = mount_via(mount, faulty, bucket, "--timeout", "5", "--retries", "4")
    rules = {}
    for name, match in requests.items():
        # rst on the second reset: the client sees a TCP RST rather than a FIN
        rules[name] = [
            faulty.add(Rule(f1, when=w1, times=1, keep=0.4, **match)),
            faulty.add(Rule(f2, when=w2, times=1, keep=0.7, rst=kind == "resets", **match)),
        ]
    small, big, new_old = randbytes(1, 300_000), randbytes(2, 2 * 8 * MIB + 12_345), randbytes(4, 20_000)
    assert write_file(mnt / "small.txt", small) is None
    assert write_file(mnt / "big.bin", big) is None  # streamed: two parts while written, the tail at close
    assert write_file(mnt / "old.txt", new_old) is None  # an existing object: HeadObject first
    assert sorted(os.listdir(mnt)) == ["big.bin", "old.txt", "small.txt"]
    assert {k: body_of(s3, bucket, k) for k in keys_of(s3, bucket)} == {
        "small.txt": small,
        "big.bin": big,
        "old.txt": new_old,
    }
    # An upload created by a CreateMultipartUpload whose answer was lost is unknown to
    # everyone (its id never arrived): the one leftover S3 allows, and only then.
    lost = [e for e in faulty.injected() if e.method == "POST" and "uploads" in e.query and e.when == "after"]
    assert uploads_in_progress(s3, bucket) == ["big.bin"] * len(lost)

    # Read back through another mount (empty caches: every byte is a GET), in 1 MiB blocks.
    reader = mount_via(mount, faulty, bucket, "--timeout", "5", "--retries", "4", "--block-size", "1M")
    assert sorted(os.listdir(reader)) == ["big.bin", "old.txt", "small.txt"]
    assert read_file(reader / "small.txt") == small
    assert read_file(reader / "big.bin") == big
    assert read_file(reader / "old.txt") == new_old
    unused = [name for name, pair in rules.items() if any(r.applied < 1 for r in pair)]
    assert not unused, f"rules that never fired: {unused}"


def test_an_answer_older_than_a_rename_does_not_undo_it(s3, bucket, faulty, mount):
    """A HeadObject sent before a rename replaced the file and answered after it describes
    the replaced file. The mount must keep what the rename made: under load, such an
    answer used to bring the old version back under the name (the 16-process test's
    torn reads), so that the next rename copied the new bytes under the old size."""
    mnt = mount_via(mount, faulty, bucket, "--attr-ttl", "2")
    old, new = b"old\n", b"the new, longer version\n" * 100
    (mnt / "f").write_bytes(old)
    (mnt / "g").write_bytes(new)
    assert sorted(os.listdir(mnt)) == ["f", "g"]  # a listing: the rename's lookups need no request
    fd = os.open(mnt / "f", os.O_RDONLY)
    try:
        time.sleep(2.3)  # past --attr-ttl: fstat makes the mount ask S3 with HeadObject
        late = faulty.add(Rule("late", method="HEAD", path=rf"^/{bucket}/f$", times=1, seconds=1.0))
        asking = threading.Thread(target=os.fstat, args=(fd,))
        asking.start()
        assert wait_until(lambda: late.applied == 1, BOUND)
        time.sleep(0.2)  # S3 has answered (the old f); the proxy holds the answer back
        os.rename(mnt / "g", mnt / "f")
        asking.join(BOUND)
        assert faulty.injected("late") and not asking.is_alive()
    finally:
        os.close(fd)
    os.rename(mnt / "f", mnt / "h")  # copies what the mount takes f to be
    assert body_of(s3, bucket, "h") == new
    assert os.stat(mnt / "h").st_size == len(new)
    assert (mnt / "h").read_bytes() == new
    assert sorted(os.listdir(mnt)) == ["h"]


def test_a_held_chmod_in_flight_does_not_carry_its_mode_onto_the_file_renamed_over_it(s3, bucket, faulty, mount):
    """chmod of a file just saved is held, then saved by a CopyObject of the object onto itself.
    A rename over that file while the copy is on its way must wait for it: a copy that reached S3
    after the rename's took the new object's bytes with the old file's headers (the random load's
    d1/w3-3, content right and mode 755 instead of 644; moto ignores CopySourceIfMatch)."""
    mnt = mount_via(mount, faulty, bucket)
    (mnt / "a").write_bytes(b"the file that is replaced\n")
    (mnt / "b").write_bytes(b"the file renamed over it\n")
    copy_onto_a = {"method": "PUT", "path": rf"^/{bucket}/a$", "header": "x-amz-copy-source"}
    held = faulty.add(Rule("delay", **copy_onto_a, seconds=1.0, times=1))  # not the rename's copy after it
    os.chmod(mnt / "a", 0o755)
    assert wait_until(lambda: held.applied == 1, BOUND)  # the chmod's copy waits in the proxy
    os.rename(mnt / "b", mnt / "a")
    assert wait_until(lambda: faulty.injected("delay"), BOUND)  # the chmod's copy has been answered
    assert body_of(s3, bucket, "a") == b"the file renamed over it\n"
    assert int(s3.head_object(Bucket=bucket, Key="a")["Metadata"]["mode"]) & 0o777 == 0o644
    assert stat.S_IMODE(os.stat(mount(bucket, "--posix-metadata") / "a").st_mode) == 0o644


def test_the_probe_of_conditional_completions_goes_beside_the_first_upload(s3, bucket, faulty, mount):
    """Whether the server honours If-Match on CompleteMultipartUpload is probed once a mount (4
    requests in a row): beside the first streamed upload's parts, not after them, where it
    delayed that file's close() by its 4 round trips."""
    mnt = mount_via(mount, faulty, bucket)
    data = randbytes(7, 20 * MIB)
    held = faulty.add(Rule("late", method="PUT", path=rf"^/{bucket}/big$", query="partNumber", seconds=1.5))
    (mnt / "big").write_bytes(data)
    assert held.applied >= 2 and body_of(s3, bucket, "big") == data
    log = list(faulty.log)

    def first(is_it: Callable[[Any], bool]) -> int:
        return next(i for i, exchange in enumerate(log) if is_it(exchange))

    probe_completed = first(lambda e: "/.s3fuse/probe-" in e.path and e.method == "POST" and "uploadId" in e.query)
    first_part = first(lambda e: e.path == f"/{bucket}/big" and "partNumber" in e.query)
    assert probe_completed < first_part  # answered while the parts were held back


def test_a_directory_rename_that_fails_half_way_loses_nothing(s3, bucket, faulty, mount):
    """The copy of one key of a renamed directory fails for good: mv fails with EIO, by then
    others are copied and some deleted (sources go in batches while copies go on). Every key
    is in S3 under one name or both, and the mount lists what S3 holds, not what it cached."""
    files = {f"f{i:03d}": randbytes(i, 100 + i) for i in range(60)}
    put_objects(s3, bucket, {f"d/{name}": data for name, data in files.items()})
    mnt = mount_via(mount, faulty, bucket, *QUICK)
    assert sorted(os.listdir(mnt / "d")) == sorted(files)  # cached: the rename must not leave it so
    assert not (mnt / "e").exists()  # cached as missing
    faulty.add(Rule("internal", method="PUT", path=rf"^/{bucket}/e/f059$", header="x-amz-copy-source"))
    with pytest.raises(OSError) as err:
        os.rename(mnt / "d", mnt / "e")
    assert err.value.errno == errno.EIO
    faulty.clear()
    old, new = keys_of(s3, bucket, "d/"), keys_of(s3, bucket, "e/")
    for name, data in files.items():
        assert f"d/{name}" in old or f"e/{name}" in new, name
        for key in {f"d/{name}", f"e/{name}"} & (old.keys() | new.keys()):
            assert body_of(s3, bucket, key) == data, key
    assert "d/f059" in old and "e/f059" not in new
    assert len(old) < len(files), "no source was deleted before the failure: the test shows nothing"
    assert sorted(os.listdir(mnt / "d")) == sorted(k.removeprefix("d/") for k in old)
    assert sorted(os.listdir(mnt / "e")) == sorted(k.removeprefix("e/") for k in new)


# ---------------------------------------------------------------- persistent faults


@pytest.mark.parametrize("fault", ["slowdown", "reset"])
def test_every_put_failing_fails_close_with_eio_and_keeps_the_data(s3, bucket, faulty, mount, tmp_path, fault):
    """Every PutObject and UploadPart fails: close() is EIO within the bound (--retries 2 attempts per
    request, no more), S3 holds nothing of either file, lost+found holds both, and once the fault is
    gone the same mount saves and reads again."""
    mnt = mount_via(mount, faulty, bucket, *QUICK)
    kept_dir = tmp_path / "xdg/s3fuse/lost+found"
    small, big = randbytes(5, 5000), randbytes(6, 2 * 8 * MIB + 5)
    rule = faulty.add(Rule(fault, method="PUT"))
    for name, data in (("small.bin", small), ("big.bin", big)):
        fd = os.open(mnt / name, os.O_CREAT | os.O_WRONLY, 0o644)
        for off in range(0, len(data), MIB):  # the big one streams parts, which fail in the background
            os.write(fd, data[off : off + MIB])
        start = time.monotonic()
        with pytest.raises(OSError) as err:
            os.close(fd)
        elapsed = time.monotonic() - start
        assert err.value.errno == errno.EIO, (name, err.value)
        assert elapsed < BOUND, (name, elapsed)
    # RELEASE follows close(): one more try, then the data moves to lost+found
    assert wait_until(lambda: kept_dir.is_dir() and len(os.listdir(kept_dir)) == 2, BOUND)
    kept = {p.name.split("-", 1)[1]: p.read_bytes() for p in kept_dir.iterdir()}
    assert kept == {"small.bin": small, "big.bin": big}
    assert keys_of(s3, bucket) == {}  # nothing partial under either name
    assert uploads_in_progress(s3, bucket) == []  # the streamed parts were aborted
    small_puts = [e for e in faulty.log if e.method == "PUT" and e.key == "small.bin"]
    assert len(small_puts) == 2 * 2, small_puts  # two saves (close, release), --retries 2 attempts each
    log = mount.log_text(mnt)
    assert "could not save 'small.bin' to S3" in log and "could not save 'big.bin' to S3" in log

    faulty.remove(rule)  # the fault is gone: the same mount works again
    assert rule.applied > 0
    again = randbytes(7, 9 * MIB)
    assert write_file(mnt / "small.bin", small) is None
    assert write_file(mnt / "big.bin", again) is None
    assert body_of(s3, bucket, "small.bin") == small
    assert body_of(s3, bucket, "big.bin") == again
    assert read_file(mnt / "big.bin") == again


def test_every_version_that_fails_is_kept(bucket, faulty, mount, tmp_path):
    """Three versions of one file fail to save within a second or two: lost+found holds all three."""
    mnt = mount_via(mount, faulty, bucket, *QUICK)
    kept_dir = tmp_path / "xdg/s3fuse/lost+found"
    faulty.add(Rule("reset", method="PUT"))  # fails fast: no backoff for throttling
    versions = [randbytes(20 + i, 1000 + i) for i in range(3)]

    def kept() -> list[bytes]:
        return [p.read_bytes() for p in kept_dir.iterdir()] if kept_dir.is_dir() else []

    for data in versions:
        assert write_file(mnt / "v.txt", data) == ("close", errno.EIO)
        assert wait_until(lambda data=data: data in kept(), BOUND)  # at RELEASE: one more try, then kept
    assert sorted(kept()) == sorted(versions)
    assert all(p.name.endswith("-v.txt") for p in kept_dir.iterdir())


def test_reopened_while_its_last_save_fails(s3, bucket, faulty, mount):
    """close() failed, and the file is opened again while the retry at RELEASE still runs: the
    new handle shares the unsaved file, and its close saves what it wrote."""
    mnt = mount_via(mount, faulty, bucket, "--timeout", "1", "--retries", "2")
    rule = faulty.add(Rule("stall", method="PUT", path="/x.bin$", seconds=5))  # each attempt: 1 s
    first, second = randbytes(30, 5000), randbytes(31, 7000)
    assert write_file(mnt / "x.bin", first) == ("close", errno.EIO)
    fd = os.open(mnt / "x.bin", os.O_WRONLY | os.O_TRUNC)  # waits for the save at RELEASE to fail
    try:
        os.write(fd, second)
        assert wait_until(lambda: mount.log_text(mnt).count("saving 'x.bin' to S3 failed") == 2, BOUND)
        faulty.remove(rule)
    finally:
        os.close(fd)
    assert body_of(s3, bucket, "x.bin") == second
    log = mount.log_text(mnt)
    assert "could not save" not in log, log  # nothing was given up: the new handle saved it all
    assert read_file(mnt / "x.bin") == second


def test_failing_lookups_are_eio_not_enoent_and_not_remembered(s3, bucket, faulty, mount):
    """While S3 answers every request with 500, stat and ls fail with EIO; afterwards they work."""
    s3.put_object(Bucket=bucket, Key="dir/there.txt", Body=b"here\n")
    mnt = mount_via(mount, faulty, bucket, *QUICK)
    rule = faulty.add(Rule("internal"))
    for action in (lambda: os.stat(mnt / "dir/there.txt"), lambda: os.listdir(mnt / "dir")):
        start = time.monotonic()
        with pytest.raises(OSError) as err:
            action()
        assert err.value.errno == errno.EIO
        assert time.monotonic() - start < BOUND
    faulty.remove(rule)
    assert os.listdir(mnt / "dir") == ["there.txt"]
    assert (mnt / "dir/there.txt").read_bytes() == b"here\n"


# ---------------------------------------------------------------- stalls and truncated bodies


@pytest.mark.parametrize("fault", ["stall", "stall_body"])
def test_stalled_get_fails_with_eio_or_is_retried(s3, bucket, faulty, mount, fault):
    """A GET that hangs past --timeout: retried if only one attempt hangs, else EIO, never a hang."""
    data = {name: randbytes(i, 600_000 + i) for i, name in enumerate(("once.bin", "always.bin"))}
    for name, body in data.items():
        s3.put_object(Bucket=bucket, Key=name, Body=body)
    mnt = mount_via(mount, faulty, bucket, "--timeout", "1", "--retries", "2")  # each stalled attempt: 1 s
    once = faulty.add(Rule(fault, path="/once.bin$", times=1, seconds=20, keep=0.5, method="GET"))
    always = faulty.add(Rule(fault, path="/always.bin$", seconds=20, keep=0.5, method="GET"))
    start = time.monotonic()
    assert read_file(mnt / "once.bin") == data["once.bin"]
    assert time.monotonic() - start < BOUND
    assert once.applied == 1
    start = time.monotonic()
    with pytest.raises(OSError) as err:
        read_file(mnt / "always.bin")
    assert err.value.errno == errno.EIO
    assert time.monotonic() - start < BOUND
    faulty.remove(always)
    assert read_file(mnt / "always.bin") == data["always.bin"]  # a failure is not cached


def test_truncated_bodies_are_retried_or_eio_never_short(s3, bucket, faulty, mount):
    """A body cut short is fetched again; when every attempt is cut, the read fails, it never returns less."""
    data = {name: randbytes(10 + i, 3 * MIB + 17) for i, name in enumerate(("twice.bin", "always.bin"))}
    for name, body in data.items():
        s3.put_object(Bucket=bucket, Key=name, Body=body)
    mnt = mount_via(mount, faulty, bucket, *QUICK, "--block-size", "1M")
    faulty.add(Rule("truncate", query="list-type", times=1, keep=0.5))  # the listing too
    faulty.add(Rule("truncate", path="/twice.bin$", times=2, keep=0.9, method="GET"))
    faulty.add(Rule("truncate", path="/always.bin$", keep=0.99, method="GET"))
    assert sorted(os.listdir(mnt)) == ["always.bin", "twice.bin"]
    assert read_file(mnt / "twice.bin") == data["twice.bin"]
    got = bytearray()
    start = time.monotonic()
    with pytest.raises(OSError) as err:
        fd = os.open(mnt / "always.bin", os.O_RDONLY)
        try:
            while chunk := os.read(fd, MIB):
                got += chunk
        finally:
            os.close(fd)
    assert err.value.errno == errno.EIO
    assert time.monotonic() - start < BOUND
    assert data["always.bin"].startswith(got)  # whatever came before the failure is right
    assert len(faulty.injected("truncate")) >= 4


@pytest.mark.parametrize("far", [False, True], ids=["near", "far"])
def test_a_sequential_read_is_a_few_streamed_gets_and_survives_one_cut_short(s3, bucket, moto, faulty, mount, far):
    """One segment at a time with --read-ahead 8M: of 32 MiB from a server that answers within
    10 ms (moto as it is: 2 GETs for 40 MiB), of 8 MiB from one whose answers take longer, as S3's
    do (the fault proxy holding each answer 15 ms: 5 GETs), where a GET cut short midway is made
    up by ranged GETs. The bytes are right either way."""
    data = {name: randbytes(20 + i, 40 * MIB) for i, name in enumerate(("whole.bin", "cut.bin"))}
    for name, body in data.items():
        s3.put_object(Bucket=bucket, Key=name, Body=body)
    args = (*QUICK, "--block-size", "4M", "--read-ahead", "8M")
    if far:
        # checked in order: the cut comes first, and only for cut.bin
        cut = faulty.add(Rule("truncate", path="/cut.bin$", times=1, keep=0.5, method="GET"))
        faulty.add(Rule("late", seconds=0.015))  # every answer
        mnt = mount_via(mount, faulty, bucket, *args)
    else:
        mnt = mount(bucket, *args)
    lookups = itertools.count()

    def answered_within_10_ms() -> bool:  # lookups, whose answers' times tell how far the server is
        assert not (mnt / f"missing-{next(lookups)}").exists()
        return gauge(mnt, "s3fuse_quickest_answer_seconds") < 0.0095  # shown to the millisecond

    # On a busy machine (another test reading beside this one) moto took 11-12 ms at best for a
    # while through the fault proxy, which is why the near case goes to moto directly.
    if not wait_until(answered_within_10_ms, 1 if far else 10) and not far:
        pytest.skip("the machine is too busy: moto took over 10 ms for every answer for 10 s")
    assert gauge(mnt, "s3fuse_long_segments") == (not far)
    mark = moto.mark()
    assert read_file(mnt / "whole.bin") == data["whole.bin"]

    def gets() -> list:  # moto logs a request once it has sent the answer
        return [r for r in moto.requests(mark, bucket) if r.method == "GET" and r.key == "whole.bin"]

    wait_until(lambda: len(gets()) >= (4 if far else 2), 5)
    # 10 GETs of 4 MiB blocks without streams
    assert 4 <= len(gets()) <= 5 if far else len(gets()) == 2
    if far:
        assert read_file(mnt / "cut.bin") == data["cut.bin"]
        assert cut.applied == 1


# ---------------------------------------------------------------- random faults


RANDOM = {
    # (p of a fault before the request reaches S3, p of one after, p of a stall, --retries)
    "15%-4-attempts": (0.10, 0.05, 0.01, 4),  # nearly everything succeeds, after retries
    "40%-2-attempts": (0.25, 0.15, 0.02, 2),  # many calls fail: the failures must be reported and clean
}


@pytest.mark.slow
@pytest.mark.parametrize("rates", list(RANDOM))
def test_random_faults_during_a_workload(s3, bucket, faulty, mount, rates):
    """Requests fail at random (fixed seed) while files are written, renamed and read.

    Afterwards every object in S3 holds bytes that some writer wrote to that name; a file
    whose close() succeeded is there with its last bytes; one that is missing had its
    close() (or rename) fail; every read that succeeded returned the right bytes.
    """
    before, after, stall, retries = RANDOM[rates]
    faulty.reset(int(os.environ.get("FAULT_SEED", zlib.crc32(rates.encode()))))
    args = ("--timeout", "2", "--retries", str(retries), "--block-size", "1M")
    writer = mount_via(mount, faulty, bucket, *args)
    reader = mount_via(mount, faulty, bucket, *args)
    faulty.add(
        Rule(("slowdown", "internal", "reset"), p=before),
        Rule(("reset", "truncate"), when="after", p=after, keep=0.5),
        Rule("stall", p=stall, seconds=10),
    )
    rng = random.Random(2026)
    sizes = [0, 1, 4096, 100_000, 300_000, 1_000_000, 2 * MIB + 1] + [rng.randrange(1, 200_000) for _ in range(5)]
    sizes += [9 * MIB + 7, 17 * MIB + 3]  # multipart: streamed parts and a tail
    written: dict[str, list[bytes]] = {}  # name -> every version written to it (by write or rename)
    expected: dict[str, bytes | None] = {}  # name -> what S3 must hold; None: uncertain (a call failed)
    failures: list[tuple[str, str, str, int]] = []
    kept: dict[str, bytes] = {}  # name -> the bytes its last close() failed to save

    def write(name: str, data: bytes, order: list[int] | None = None) -> None:
        failed = write_file(writer / name, data, order)
        written.setdefault(name, []).append(data)
        kept.pop(name, None)  # saved at RELEASE and now overwritten, or in lost+found anyway
        # An empty file's save waits for its last close (RELEASE, after close() returned):
        # a failure there is only logged (docs/semantics.md), so S3 may lack it.
        expected[name] = data if failed is None and data else None
        if failed is not None:
            assert failed[1] == errno.EIO, (name, failed)
            failures.append((*failed, name))
            if failed[0] == "close" and data:
                kept[name] = data

    for i, size in enumerate(sizes):
        write(f"f{i:02d}.bin", rng.randbytes(size))
    # a large file written out of order: not streamed, its parts sent at close from the spill file
    scattered = rng.randbytes(10 * MIB + 5)
    write("scattered.bin", scattered, sorted(range(0, len(scattered), MIB), key=lambda _: rng.random()))
    for name in ("f03.bin", "f12.bin"):  # overwritten
        write(name, rng.randbytes(len(written[name][-1]) // 2 + 10))
    for old in ("f02.bin", "f05.bin", "f13.bin", "scattered.bin"):
        new = "renamed-" + old
        written.setdefault(new, []).extend(written[old])
        try:
            os.rename(writer / old, writer / new)
        except OSError as exc:
            # copied and not deleted, or not copied: either name may hold the bytes
            assert exc.errno in (errno.EIO, errno.ENOENT), (old, exc)  # ENOENT: its save had failed
            failures.append(("rename", exc.errno, old))
            expected[old] = expected[new] = None
        else:
            expected[new] = expected.pop(old)
            written[old] = []  # the old name must be gone from S3

    # reads through the other mount, faults still on
    reads = {"ok": 0, "EIO": 0}
    for name, want in sorted(expected.items()):
        if want is None:
            continue
        try:
            got = read_file(reader / name)
        except OSError as exc:
            assert exc.errno == errno.EIO, (name, exc)
            reads["EIO"] += 1
            continue
        assert got == want, f"{name}: read {len(got)} bytes, not what was written"
        reads["ok"] += 1

    faulty.clear()
    in_s3 = {key: body_of(s3, bucket, key) for key in keys_of(s3, bucket)}
    for key, body in in_s3.items():
        assert body in written.get(key, ()), f"{key}: S3 holds bytes nobody wrote there"
    for name, want in expected.items():
        if want is not None:
            assert in_s3.get(name) == want, f"{name}: its calls succeeded but S3 does not hold its bytes"
    # A close() that failed left its bytes in lost+found, unless the retry at RELEASE saved them.
    kept_dir = mount.get(writer).log.parent / "xdg/s3fuse/lost+found"

    def kept_somewhere() -> bool:
        found = [p.read_bytes() for p in kept_dir.iterdir()] if kept_dir.is_dir() else []
        saved = [body_of(s3, bucket, key) for key in keys_of(s3, bucket)]
        return all(data in found or data in saved for data in kept.values())

    assert wait_until(kept_somewhere, BOUND, 0.5), {name: len(data) for name, data in kept.items()}
    injected = faulty.injected()
    assert len(injected) >= len(faulty.log) // 20, injected
    print(f"{len(faulty.log)} requests, {len(injected)} faults; failed: {failures}; reads: {reads}")

    # the faults are gone: both mounts work
    data = randbytes(99, 9 * MIB + 1)
    assert write_file(writer / "after.bin", data) is None
    assert read_file(reader / "after.bin") == data
    assert body_of(s3, bucket, "after.bin") == data
