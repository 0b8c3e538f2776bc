"""Extended attributes through a real mount: getfattr/setfattr and os.*xattr against moto.

boto3 is the ground truth: every change made with setfattr must be what S3 holds, and
every value getfattr shows must be what S3 says.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import urllib.request
from pathlib import Path

import pytest
from conftest import MotoServer, boto_client, run, wait_until

from s3fuse.torrent import bdecode

BODY = b"hello xattrs\n" * 1000


@pytest.fixture
def obj(s3, bucket, mount) -> tuple[str, Path]:
    s3.put_object(Bucket=bucket, Key="dir/f.txt", Body=BODY, Metadata={"owner": "ann"}, ContentType="text/plain")
    mnt = mount(bucket)
    return bucket, Path(mnt, "dir", "f.txt")


def getfattr(path: Path, name: str) -> str:
    return run(["getfattr", "--only-values", "-n", name, str(path)]).stdout.decode()


def setfattr(path: Path, name: str, value: str, check: bool = True):
    return run(["setfattr", "-n", name, "-v", value, str(path)], check=check)


def oserror(fn, *args) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def test_user_metadata_round_trip(s3, obj):
    bucket, f = obj
    assert getfattr(f, "user.owner") == "ann"
    setfattr(f, "user.color", "blue")
    head = s3.head_object(Bucket=bucket, Key="dir/f.txt")
    assert head["Metadata"] == {"owner": "ann", "color": "blue"}
    assert head["ContentType"] == "text/plain"  # a copy onto itself keeps the other headers
    assert s3.get_object(Bucket=bucket, Key="dir/f.txt")["Body"].read() == BODY
    dump = run(["getfattr", "-d", str(f)]).stdout.decode()
    assert 'user.owner="ann"' in dump and 'user.color="blue"' in dump
    os.removexattr(f, "user.owner")
    assert s3.head_object(Bucket=bucket, Key="dir/f.txt")["Metadata"] == {"color": "blue"}
    assert oserror(os.getxattr, f, "user.owner") == errno.ENODATA
    assert oserror(os.removexattr, f, "user.owner") == errno.ENODATA
    assert f.read_bytes() == BODY


def test_posix_metadata_names_are_left_to_chmod(s3, obj):
    bucket, f = obj
    f.chmod(0o600)
    assert "user.mode" not in os.listxattr(f)
    assert oserror(os.setxattr, f, "user.mode", b"33279") == errno.EINVAL
    assert oserror(os.removexattr, f, "user.mode") == errno.ENODATA  # as getxattr answers
    assert s3.head_object(Bucket=bucket, Key="dir/f.txt")["Metadata"]["mode"] == str(0o100600)
    assert f.stat().st_mode & 0o777 == 0o600


def test_metadata_values_are_ascii(s3, obj):
    """S3 sends metadata as HTTP headers: a value that is not ASCII is refused, not lost later."""
    bucket, f = obj
    assert oserror(os.setxattr, f, "user.city", "Zürich".encode()) == errno.EINVAL
    assert oserror(os.setxattr, f, "s3.content_type", "text/plain; charset=ü".encode()) == errno.EINVAL
    assert s3.head_object(Bucket=bucket, Key="dir/f.txt")["Metadata"] == {"owner": "ann"}


def test_xattrs_follow_the_object_under_a_name(obj):
    """A name renamed onto, or written anew, shows the new object's metadata at once."""
    _, f = obj
    assert getfattr(f, "user.owner") == "ann"  # the object's HEAD, cached for a moment
    other = f.parent / "other.txt"
    other.write_bytes(b"other")
    os.setxattr(other, "user.owner", b"bob")
    other.rename(f)
    assert getfattr(f, "user.owner") == "bob"
    f.unlink()
    f.write_bytes(b"new")
    assert oserror(os.getxattr, f, "user.owner") == errno.ENODATA


def test_setxattr_on_a_file_being_written_joins_its_upload(s3, bucket, mount, moto):
    mnt = Path(mount(bucket))
    mark = moto.mark()
    with open(mnt / "new.bin", "wb") as out:
        out.write(b"x" * 1000)
        os.setxattr(mnt / "new.bin", "user.origin", b"test")
        assert os.getxattr(mnt / "new.bin", "user.origin") == b"test"
    head = s3.head_object(Bucket=bucket, Key="new.bin")
    assert head["Metadata"]["origin"] == "test"
    writes = [r for r in moto.requests(mark, bucket) if r.method in ("PUT", "POST")]
    assert len(writes) == 1, writes  # one PutObject with the metadata, no copy afterwards


def test_acl_canned_and_json(s3, obj):
    bucket, f = obj
    acl = json.loads(getfattr(f, "s3.acl"))
    assert acl["Owner"]["ID"] and acl["Grants"]
    setfattr(f, "s3.acl", "public-read")
    grants = s3.get_object_acl(Bucket=bucket, Key="dir/f.txt")["Grants"]
    assert any(g["Grantee"].get("URI", "").endswith("/global/AllUsers") and g["Permission"] == "READ" for g in grants)
    setfattr(f, "s3.acl", json.dumps(acl))  # back to the original policy
    grants = s3.get_object_acl(Bucket=bucket, Key="dir/f.txt")["Grants"]
    assert not any(g["Grantee"].get("URI", "").endswith("/global/AllUsers") for g in grants)
    assert oserror(os.setxattr, f, "s3.acl", b"not-an-acl") == errno.EINVAL
    assert oserror(os.setxattr, f, "s3.acl", b'{"Owner": {}}') == errno.EINVAL
    assert s3.get_object_acl(Bucket=bucket, Key="dir/f.txt")["Grants"] == grants


def test_tags(s3, obj):
    bucket, f = obj
    assert json.loads(getfattr(f, "s3.tags")) == {}
    setfattr(f, "s3.tags", json.dumps({"team": "storage", "tier": "hot"}))
    tagset = s3.get_object_tagging(Bucket=bucket, Key="dir/f.txt")["TagSet"]
    assert {t["Key"]: t["Value"] for t in tagset} == {"team": "storage", "tier": "hot"}
    assert json.loads(getfattr(f, "s3.tags")) == {"team": "storage", "tier": "hot"}
    assert oserror(os.setxattr, f, "s3.tags", b"[1, 2]") == errno.EINVAL
    os.removexattr(f, "s3.tags")
    assert s3.get_object_tagging(Bucket=bucket, Key="dir/f.txt")["TagSet"] == []


def test_read_only_facts(s3, obj):
    bucket, f = obj
    head = s3.head_object(Bucket=bucket, Key="dir/f.txt")
    assert getfattr(f, "s3.etag") == head["ETag"]
    assert getfattr(f, "s3.version_id") == "null"  # versioning is off
    assert getfattr(f, "s3.last_modified") == head["LastModified"].isoformat()
    for name in ("s3.etag", "s3.version_id", "s3.last_modified", "s3.presigned_url", "s3.torrent"):
        assert oserror(os.setxattr, f, name, b"x") == errno.EPERM, name


def test_content_type_and_storage_class(s3, obj):
    bucket, f = obj
    assert getfattr(f, "s3.content_type") == "text/plain"
    assert getfattr(f, "s3.storage_class") == "STANDARD"
    setfattr(f, "s3.content_type", "application/json")
    setfattr(f, "s3.storage_class", "standard_ia")
    head = s3.head_object(Bucket=bucket, Key="dir/f.txt")
    assert (head["ContentType"], head["StorageClass"]) == ("application/json", "STANDARD_IA")
    assert head["Metadata"] == {"owner": "ann"}
    f.chmod(0o640)  # a later copy onto itself keeps the storage class and content type
    head = s3.head_object(Bucket=bucket, Key="dir/f.txt")
    assert (head["ContentType"], head["StorageClass"]) == ("application/json", "STANDARD_IA")
    assert f.read_bytes() == BODY


def test_presigned_url_downloads_the_object(obj):
    _, f = obj
    url = getfattr(f, "s3.presigned_url")
    assert "X-Amz-Expires=3600" in url
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == BODY


def test_torrent_is_built_when_the_server_has_none(obj, moto):
    _, f = obj
    torrent = bdecode(os.getxattr(f, "s3.torrent"))  # moto answers with the object's bytes
    info = torrent[b"info"]
    assert info[b"name"] == b"f.txt" and info[b"length"] == len(BODY)
    piece = info[b"piece length"]
    hashes = [hashlib.sha1(BODY[i : i + piece]).digest() for i in range(0, len(BODY), piece)]
    assert info[b"pieces"] == b"".join(hashes)
    [seed] = torrent[b"url-list"]
    assert seed.decode() == f"{moto.url}/{obj[0]}/dir/f.txt"


def test_archived_object_restore(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="cold.bin", Body=b"frozen", StorageClass="GLACIER")
    mnt = Path(mount(bucket))
    assert oserror((mnt / "cold.bin").read_bytes) == errno.EACCES
    assert "s3.restore" not in os.listxattr(mnt / "cold.bin")
    assert oserror(os.setxattr, mnt / "cold.bin", "s3.restore", b"soon") == errno.EINVAL
    setfattr(mnt / "cold.bin", "s3.restore", "2")
    assert "ongoing-request" in s3.head_object(Bucket=bucket, Key="cold.bin")["Restore"]
    assert "ongoing-request" in getfattr(mnt / "cold.bin", "s3.restore")


def test_listxattr_lists_what_applies(obj):
    _, f = obj
    names = set(os.listxattr(f))
    assert {"user.owner", "s3.acl", "s3.tags", "s3.etag", "s3.torrent", "s3.presigned_url"} <= names
    assert os.listxattr(f.parent) == []
    assert set(os.listxattr(f.parent.parent)) == {"s3.acl", "s3.tags", "s3.location"}


def test_unknown_and_foreign_names(obj):
    _, f = obj
    assert oserror(os.getxattr, f, "s3.nonsense") == errno.ENODATA
    assert oserror(os.getxattr, f, "security.selinux") == errno.EOPNOTSUPP
    assert oserror(os.setxattr, f, "trusted.x", b"1") == errno.EOPNOTSUPP
    assert oserror(os.setxattr, f.parent, "user.x", b"1") == errno.ENODATA


def test_bucket_attributes_on_the_mount_root(s3, bucket, mount):
    mnt = Path(mount(bucket))
    assert getfattr(mnt, "s3.location") == "us-east-1"
    assert json.loads(getfattr(mnt, "s3.tags")) == {}
    setfattr(mnt, "s3.tags", '{"project": "s3fuse"}')
    assert s3.get_bucket_tagging(Bucket=bucket)["TagSet"] == [{"Key": "project", "Value": "s3fuse"}]
    assert json.loads(getfattr(mnt, "s3.tags")) == {"project": "s3fuse"}
    os.removexattr(mnt, "s3.tags")
    with pytest.raises(s3.exceptions.ClientError):
        s3.get_bucket_tagging(Bucket=bucket)
    acl = json.loads(getfattr(mnt, "s3.acl"))
    assert acl["Grants"][0]["Permission"] == "FULL_CONTROL"
    setfattr(mnt, "s3.acl", "public-read")
    grants = s3.get_bucket_acl(Bucket=bucket)["Grants"]
    assert any(g["Grantee"].get("URI", "").endswith("/global/AllUsers") for g in grants)
    assert oserror(os.setxattr, mnt, "s3.location", b"eu-west-1") == errno.EPERM


def test_no_xattr_turns_them_off(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="f", Body=b"x", Metadata={"owner": "ann"})
    mnt = Path(mount(bucket, "--no-xattr"))
    assert oserror(os.getxattr, mnt / "f", "user.owner") == errno.EOPNOTSUPP  # the kernel's answer to ENOSYS
    assert oserror(os.listxattr, mnt / "f") == errno.EOPNOTSUPP


def test_upload_state_follows_the_bytes(s3, bucket, mount):
    mnt = mount(bucket)
    path = mnt / "new.bin"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"x" * 100_000)
        assert os.getxattr(path, "s3.upload_state") == b"dirty"  # open for writing: not safe yet
        os.fsync(fd)
        assert s3.get_object(Bucket=bucket, Key="new.bin")["Body"].read() == b"x" * 100_000
    finally:
        os.close(fd)
    assert wait_until(lambda: os.getxattr(path, "s3.upload_state") == b"clean", 10)  # the release is async
    assert "s3.upload_state" in os.listxattr(path)
    assert oserror(os.setxattr, path, "s3.upload_state", b"clean") == errno.EPERM


def test_upload_state_says_why_a_save_failed(mount, tmp_path):
    """The S3 server goes away while a file is open: fsync and close fail, and the xattr says so."""
    server = MotoServer(tmp_path)
    try:
        boto_client(server.url).create_bucket(Bucket="gone")
        mnt = mount("gone", "--endpoint-url", server.url, "--timeout", "1", "--retries", "1", endpoint=False)
        path = mnt / "doomed.txt"
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"unsaved\n")
    finally:
        server.stop()
    assert oserror(os.fsync, fd) == errno.EIO
    state = os.getxattr(path, "s3.upload_state").decode()
    assert state.startswith("failed: ") and "connect" in state.lower(), state
    assert oserror(os.close, fd) == errno.EIO
    assert wait_until(lambda: "data kept at" in os.getxattr(path, "s3.upload_state").decode(), 10)
    kept = os.getxattr(path, "s3.upload_state").decode().split("data kept at ", 1)[1]
    assert Path(kept).read_bytes() == b"unsaved\n"
