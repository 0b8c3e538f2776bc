"""Mount options that shape every S3 request: --requester-pays, --sse-c-key-file, --acl,
--storage-class, and --list-version 1 (ListObjects v1 with markers).

Headers are checked in moto's request recording (``moto.start_recording()``), the
list version in its request log. moto 5 stores the ACL and the storage class, but
ignores SSE-C: it keeps the bytes unencrypted and serves them with or without the key,
so the SSE-C tests check the headers sent and that the mount reads back what it wrote,
not that S3 would refuse a read without the key.
"""

from __future__ import annotations

import base64
import errno
import functools
import hashlib
import os
import subprocess
import sys

import pytest
import trio
from botocore.stub import Stubber
from conftest import ROOT, Request, base_env, boto_client, is_mounted, keys_of, put_objects, run

from s3fuse.s3client import ClientSettings, RequestOptions, S3Client

MiB = 1 << 20
ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
SSE_C = "x-amz-server-side-encryption-customer-"
COPY_SOURCE_SSE_C = "x-amz-copy-source-server-side-encryption-customer-"
OBJECT_OPERATIONS = {
    "GetObject", "HeadObject", "PutObject", "CreateMultipartUpload", "UploadPart", "UploadPartCopy",
    "CompleteMultipartUpload", "CopyObject",
}  # fmt: skip
COPIES = {"CopyObject", "UploadPartCopy"}


def operation(req: Request) -> str:
    """The S3 operation of a request to a bucket, from its method, query and headers."""
    q, copy = req.query, "x-amz-copy-source" in req.headers
    if req.key in (None, ""):
        if req.method == "POST" and "delete" in q:
            return "DeleteObjects"
        if req.method == "GET" and not {"location", "uploads", "acl", "versioning"} & q.keys():
            return "ListObjectsV2" if q.get("list-type") == ["2"] else "ListObjects"
        return f"{req.method} bucket {sorted(q)}"
    if req.method == "PUT" and "uploadId" in q:
        return "UploadPartCopy" if copy else "UploadPart"
    if req.method == "POST":
        return "CreateMultipartUpload" if "uploads" in q else "CompleteMultipartUpload"
    return {
        "GET": "GetObject",
        "HEAD": "HeadObject",
        "PUT": "CopyObject" if copy else "PutObject",
        "DELETE": "AbortMultipartUpload" if "uploadId" in q else "DeleteObject",
    }[req.method]


def workload(mnt) -> dict[str, bytes]:
    """Writes, reads, listings, lookups, renames and a chmod through the mount, making every
    kind of request s3fuse sends while mounted; returns the files it leaves, by key."""
    small, big = b"new file\n", os.urandom(20 * MiB)
    (mnt / "new.txt").write_bytes(small)  # PutObject
    (mnt / "big.bin").write_bytes(big)  # CreateMultipartUpload, UploadPart x3, CompleteMultipartUpload
    assert (mnt / "old.txt").read_bytes() == b"old\n"  # lookup window, GetObject
    assert sorted(os.listdir(mnt / "d")) == ["a", "b"]  # ListObjectsV2 with a delimiter
    os.chmod(mnt / "old.txt", 0o600)  # HeadObject, CopyObject onto itself
    os.rename(mnt / "new.txt", mnt / "renamed.txt")  # CopyObject, DeleteObject
    os.rename(mnt / "d", mnt / "e")  # listing without a delimiter, CopyObject, DeleteObjects
    with open(mnt / "big.bin", "r+b") as f:  # the middle part is sent, the others copied (UploadPartCopy)
        f.seek(10 * MiB)
        f.write(b"changed")
    big = big[: 10 * MiB] + b"changed" + big[10 * MiB + 7 :]
    os.mkdir(mnt / "empty")
    os.rmdir(mnt / "empty")
    return {"renamed.txt": small, "big.bin": big, "old.txt": b"old\n", "e/a": b"a", "e/b": b"b"}


def start(s3, bucket: str, **extra) -> None:
    put_objects(s3, bucket, {"old.txt": b"old\n", "d/a": b"a", "d/b": b"b"}, **extra)


@pytest.fixture
def recording(moto):
    """Tests start moto's recorder once their set-up is done; it always stops at the end."""
    yield moto
    moto.stop_recording()


def test_requester_pays_on_every_request(s3, bucket, mount, recording):
    start(s3, bucket)
    recording.start_recording()
    mnt = mount(bucket, "--requester-pays")  # the start-up checks count too
    workload(mnt)
    requests = recording.stop_recording(bucket)
    seen = {operation(r) for r in requests}
    start_up = {"GET bucket ['location']", "HEAD bucket []"}
    assert OBJECT_OPERATIONS | start_up | {"ListObjectsV2", "DeleteObject", "DeleteObjects"} <= seen
    without = [f"{operation(r)} {r.path}" for r in requests if r.headers.get("x-amz-request-payer") != "requester"]
    assert without == []


def sse_c_headers(key: bytes, prefix: str) -> dict[str, str]:
    md5 = base64.b64encode(hashlib.md5(key).digest()).decode()
    return {prefix + "algorithm": "AES256", prefix + "key": base64.b64encode(key).decode(), prefix + "key-md5": md5}


def test_sse_c_on_every_object_request(s3, bucket, mount, recording, tmp_path):
    key = os.urandom(32)
    key_file = tmp_path / "sse-c.key"
    key_file.write_text(base64.b64encode(key).decode() + "\n")
    start(s3, bucket, SSECustomerAlgorithm="AES256", SSECustomerKey=key)
    mnt = mount(bucket, "--sse-c-key-file", str(key_file), "--log-level", "debug")
    recording.start_recording()
    files = workload(mnt)
    requests = recording.stop_recording(bucket)
    assert {operation(r) for r in requests} >= OBJECT_OPERATIONS
    wanted, copy_source = sse_c_headers(key, SSE_C), sse_c_headers(key, COPY_SOURCE_SSE_C)
    for req in requests:
        op = operation(req)
        sse = {name: value for name, value in req.headers.items() if name.startswith((SSE_C, COPY_SOURCE_SSE_C))}
        expected = {**wanted, **copy_source} if op in COPIES else wanted if op in OBJECT_OPERATIONS else {}
        assert sse == expected, f"{op} {req.path}"

    mount.check(mnt)
    log = mount.log_text(mnt) + mount.get(mnt).output_text()
    assert SSE_C + "key" in log  # botocore's debug lines show the request headers...
    assert base64.b64encode(key).decode() not in log  # ...but not the key
    assert "DEBUG" in log

    again = mount(bucket, "-o", f"sse_c_key_file={key_file}")
    for name, data in files.items():
        assert (again / name).read_bytes() == data, name
        assert (
            s3.get_object(Bucket=bucket, Key=name, SSECustomerAlgorithm="AES256", SSECustomerKey=key)["Body"].read()
            == data
        )


def test_sse_c_raw_key_file(s3, bucket, mount, recording, tmp_path):
    key = bytes(range(32))  # raw: exactly 32 bytes, any values
    key_file = tmp_path / "raw.key"
    key_file.write_bytes(key)
    mnt = mount(bucket, "-o", f"sse_c_key_file={key_file}")
    recording.start_recording()
    (mnt / "f").write_bytes(b"raw key")
    (put,) = [r for r in recording.stop_recording(bucket) if operation(r) == "PutObject"]
    assert {k: v for k, v in put.headers.items() if k.startswith(SSE_C)} == sse_c_headers(key, SSE_C)


def s3fuse_start(*args: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "s3fuse", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        env=base_env(XDG_CACHE_HOME=str(tmp_path / "xdg")),
    )


@pytest.mark.parametrize(
    "content",
    [None, "directory", os.urandom(16), os.urandom(32) + b"\n", base64.b64encode(os.urandom(16)) + b"\n", b"x" * 44],
    ids=["missing", "directory", "short", "raw-with-newline", "base64-short", "not-base64"],
)
def test_bad_sse_c_key_file(bucket, moto, tmp_path, content):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    key_file = tmp_path / "key"
    if content == "directory":
        key_file.mkdir()
    elif content is not None:
        key_file.write_bytes(content)
    res = s3fuse_start(
        bucket, str(mnt), "--endpoint-url", moto.url, "--sse-c-key-file", str(key_file), tmp_path=tmp_path
    )
    assert res.returncode == 1, res.stderr
    (line,) = res.stderr.splitlines()
    if content is None:
        assert line == f"s3fuse: cannot read the SSE-C key file {key_file}: No such file or directory"
    elif content == "directory":
        assert line == f"s3fuse: cannot read the SSE-C key file {key_file}: Is a directory"
    else:
        assert line == (
            f"s3fuse: the SSE-C key file {key_file} must hold a 32-byte key, raw or base64 (found {len(content)} bytes)"
        )
    assert not is_mounted(mnt)


def test_acl_on_new_objects(s3, bucket, mount):
    put_objects(s3, bucket, {"theirs.txt": b"private"})
    mnt = mount(bucket, "-o", "acl=public-read")
    (mnt / "small.txt").write_bytes(b"public\n")  # PutObject
    (mnt / "large.bin").write_bytes(os.urandom(9 * MiB))  # CreateMultipartUpload
    (mnt / "copied.txt").write_bytes(b"renamed\n")
    os.rename(mnt / "copied.txt", mnt / "renamed.txt")  # CopyObject
    os.mkdir(mnt / "dir")  # the marker is a PutObject

    def public(key: str) -> bool:
        grants = s3.get_object_acl(Bucket=bucket, Key=key)["Grants"]
        return any(g["Grantee"].get("URI") == ALL_USERS and g["Permission"] == "READ" for g in grants)

    assert not public("theirs.txt")
    for key in ("small.txt", "large.bin", "renamed.txt", "dir/"):
        assert public(key), key


def test_storage_class(s3, bucket, mount):
    put_objects(s3, bucket, {"onezone.txt": b"kept\n"}, StorageClass="ONEZONE_IA")
    put_objects(s3, bucket, {"standard.txt": b"standard\n"})
    mnt = mount(bucket, "--storage-class", "STANDARD_IA")
    (mnt / "small.txt").write_bytes(b"new\n")
    (mnt / "large.bin").write_bytes(os.urandom(9 * MiB))
    (mnt / "copied.txt").write_bytes(b"renamed\n")
    os.rename(mnt / "copied.txt", mnt / "renamed.txt")
    # Rewritten in place, an object keeps the class its HeadObject reports...
    os.chmod(mnt / "onezone.txt", 0o600)
    with open(mnt / "onezone.txt", "ab") as f:
        f.write(b"more\n")
    # ...which S3 leaves out for STANDARD: that object gets the mount's class.
    os.chmod(mnt / "standard.txt", 0o600)

    def storage_class(key: str) -> str:
        return s3.head_object(Bucket=bucket, Key=key).get("StorageClass", "STANDARD")

    for key in ("small.txt", "large.bin", "renamed.txt", "standard.txt"):
        assert storage_class(key) == "STANDARD_IA", key
    assert storage_class("onezone.txt") == "ONEZONE_IA"
    assert s3.get_object(Bucket=bucket, Key="onezone.txt")["Body"].read() == b"kept\nmore\n"


def test_list_version_1(s3, bucket, mount, moto):
    """ListObjects v1 for readdir pages, lookup windows, rmdir and a directory rename.

    moto's v1 repeats every common prefix on every page, so the directory of more than
    one page holds only files (a real S3 counts prefixes into the page's keys).
    """
    names = [f"f{i:04d}" for i in range(1500)]
    put_objects(s3, bucket, {f"big/{n}": n.encode() for n in names} | {"small/sub/x": b"x", "small/a": b"a"})
    mnt = mount(bucket, "-o", "list_version=1")
    mark = moto.mark()
    assert (mnt / "big/f1234").read_bytes() == b"f1234"  # a lookup window: Marker just before the name
    assert not (mnt / "big/f1234x").exists()
    assert sorted(os.listdir(mnt / "big")) == names  # two pages, the second from NextMarker
    assert sorted(os.listdir(mnt / "small")) == ["a", "sub"]
    assert (mnt / "small/sub").is_dir() and (mnt / "small/sub/x").read_bytes() == b"x"
    with pytest.raises(OSError) as exc:
        os.rmdir(mnt / "small")
    assert exc.value.errno == errno.ENOTEMPTY
    os.rename(mnt / "big", mnt / "moved")  # pages of 1000 keys without a delimiter
    run(["ls", "-l", str(mnt / "moved")])
    lists = [r for r in moto.requests(mark, bucket) if operation(r).startswith("ListObjects")]

    assert lists and {operation(r) for r in lists} == {"ListObjects"}
    assert any("marker" in r.query and "delimiter" in r.query for r in lists)  # readdir's second page
    assert any("marker" in r.query and "delimiter" not in r.query for r in lists)  # the rename's second page
    assert sorted(keys_of(s3, bucket, "moved/")) == [f"moved/{n}" for n in names]
    assert keys_of(s3, bucket, "big/") == {}


# ---------------------------------------------------------------- S3Client without a mount


def client_with(**options) -> S3Client:
    settings = ClientSettings(endpoint_url="http://127.0.0.1:9", request=RequestOptions(**options))
    return S3Client(boto_client(settings.endpoint_url), "bkt", settings)


def test_parameters_follow_each_operations_input_shape():
    key = bytes(range(32))
    s3 = client_with(requester_pays=True, sse_c_key=key, acl="public-read", storage_class="STANDARD_IA")
    sse = ("SSECustomerAlgorithm", "SSECustomerKey", "SSECustomerKeyMD5")
    copy_sse = tuple("CopySource" + name for name in sse)
    writes = ("ACL", "StorageClass")
    expected = {
        "put_object": ("RequestPayer", *sse, *writes),
        "create_multipart_upload": ("RequestPayer", *sse, *writes),
        "copy_object": ("RequestPayer", *sse, *copy_sse, *writes),
        "upload_part_copy": ("RequestPayer", *sse, *copy_sse),
        "upload_part": ("RequestPayer", *sse),
        "complete_multipart_upload": ("RequestPayer", *sse),
        "get_object": ("RequestPayer", *sse),
        "head_object": ("RequestPayer", *sse),
        "list_objects": ("RequestPayer",),
        "list_objects_v2": ("RequestPayer",),
        "delete_objects": ("RequestPayer",),
        "put_object_acl": ("RequestPayer",),  # it takes an ACL, but writes no object
        "head_bucket": (),
    }
    for method, names in expected.items():
        params = s3.params(method, Key="k")
        assert sorted(params) == sorted(["Bucket", "Key", *names]), method
    params = s3.params("put_object", Key="k", StorageClass="ONEZONE_IA")
    assert params["StorageClass"] == "ONEZONE_IA"  # the caller's value wins
    assert params["SSECustomerKey"] == base64.b64encode(key).decode()
    assert client_with().params("put_object", Key="k") == {"Bucket": "bkt", "Key": "k"}


def test_list_version_1_marker_without_next_marker():
    """Without a delimiter S3 sends no NextMarker: the next page starts after the last key."""
    s3 = client_with(list_version=1)
    page = {"IsTruncated": True, "Contents": [{"Key": "a/1"}, {"Key": "a/2"}], "CommonPrefixes": []}
    with Stubber(s3.client) as stub:
        stub.add_response("list_objects", page, {"Bucket": "bkt", "Prefix": "a/", "MaxKeys": 2})
        stub.add_response(
            "list_objects", {"IsTruncated": False}, {"Bucket": "bkt", "Prefix": "a/", "MaxKeys": 2, "Marker": "a/2"}
        )
        first = trio.run(functools.partial(s3.list_page, Prefix="a/", MaxKeys=2))
        assert first["NextContinuationToken"] == "a/2" and first["KeyCount"] == 2
        last = trio.run(functools.partial(s3.list_page, Prefix="a/", MaxKeys=2, ContinuationToken="a/2"))
        assert last["KeyCount"] == 0 and "NextContinuationToken" not in last
        stub.assert_no_pending_responses()


def test_truncated_v2_listing_without_a_token_is_reported(caplog):
    """A server that answers ListObjectsV2 as v1 says 'truncated' without a token: the log says what to do."""
    s3 = client_with()
    page = {"IsTruncated": True, "KeyCount": 1000, "Contents": [{"Key": "a/1"}]}
    with Stubber(s3.client) as stub:
        stub.add_response("list_objects_v2", page, {"Bucket": "bkt", "Prefix": "a/"})
        assert trio.run(functools.partial(s3.list_page, Prefix="a/"))["IsTruncated"]
    assert "the listing of 'a/' is truncated but S3 sent no continuation token" in caplog.text
    assert "--list-version 1" in caplog.text
