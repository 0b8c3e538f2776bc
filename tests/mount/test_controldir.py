"""The ``.s3/`` directory through a real mount: bucket configuration with cat, echo and rm.

boto3 is the ground truth: what a shell writes into ``.s3/NAME`` is what S3 holds, a
rejected write leaves the old configuration in place and fails close() with EINVAL.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest
from conftest import run

CORS = {"CORSRules": [{"AllowedMethods": ["GET"], "AllowedOrigins": ["https://example.com"], "MaxAgeSeconds": 60}]}


def write_file(path: Path, data: bytes) -> None:
    """open/write/close as a shell redirection does, so close() errors surface."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def errno_of(fn, *args) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def test_hidden_but_reachable(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"a")
    s3.put_object(Bucket=bucket, Key=".s3/shadowed", Body=b"a key hidden by the control directory")
    mnt = Path(mount(bucket))
    assert sorted(os.listdir(mnt)) == ["a.txt"]
    assert Path(mnt, ".s3").is_dir()
    names = os.listdir(mnt / ".s3")
    assert {"acl", "location", "request-payment"} <= set(names)
    assert "cors" not in names and "shadowed" not in names
    assert errno_of(Path(mnt, ".s3", "shadowed").read_bytes) == errno.ENOENT


def test_listed_with_show_control_dir(s3, bucket, mount):
    mnt = Path(mount(bucket, "--show-control-dir"))
    assert sorted(os.listdir(mnt)) == [".s3", ".versions"]
    assert run(["ls", "-la", str(mnt / ".s3")]).returncode == 0


def test_cors_write_read_reject_delete(s3, bucket, mount):
    mnt = Path(mount(bucket))
    cors = mnt / ".s3" / "cors"
    assert not cors.exists()
    write_file(cors, json.dumps(CORS).encode())
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"][0]["AllowedOrigins"] == ["https://example.com"]
    shown = json.loads(cors.read_bytes())
    assert shown["CORSRules"][0]["AllowedMethods"] == ["GET"]
    assert cors.stat().st_size == len(cors.read_bytes())
    # Bad JSON: close() fails with EINVAL, the old configuration stays.
    assert errno_of(write_file, cors, b"{not json") == errno.EINVAL
    assert errno_of(write_file, cors, json.dumps({"CORSRules": [{"AllowedOrigins": ["*"]}]}).encode()) == errno.EINVAL
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"][0]["AllowedOrigins"] == ["https://example.com"]
    cors.unlink()
    with pytest.raises(s3.exceptions.ClientError):
        s3.get_bucket_cors(Bucket=bucket)
    assert not cors.exists()


def test_shell_redirection_and_cat(s3, bucket, mount):
    mnt = Path(mount(bucket))
    run(["sh", "-c", f'echo \'{{"Status": "Enabled"}}\' > {mnt}/.s3/versioning'])
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    assert json.loads(run(["cat", f"{mnt}/.s3/versioning"]).stdout) == {"Status": "Enabled"}
    tags = {"TagSet": [{"Key": "team", "Value": "storage"}]}
    run(["sh", "-c", f"echo '{json.dumps(tags)}' > {mnt}/.s3/tagging"])
    assert s3.get_bucket_tagging(Bucket=bucket)["TagSet"] == tags["TagSet"]


def test_read_only_and_undeletable_documents(s3, bucket, mount):
    mnt = Path(mount(bucket))
    location = mnt / ".s3" / "location"
    assert "LocationConstraint" in json.loads(location.read_bytes())
    assert stat.S_IMODE(location.stat().st_mode) == 0o444
    assert errno_of(write_file, location, b"{}") == errno.EACCES
    assert errno_of((mnt / ".s3" / "acl").unlink) == errno.EPERM
    assert s3.get_bucket_acl(Bucket=bucket)["Grants"]


def test_the_tree_of_the_control_directory_is_fixed(bucket, mount):
    mnt = Path(mount(bucket))
    assert errno_of(os.mkdir, mnt / ".s3" / "sub") == errno.EPERM
    assert errno_of(write_file, mnt / ".s3" / "bogus", b"{}") == errno.EPERM
    assert errno_of(os.rename, mnt / ".s3" / "acl", mnt / "acl.json") == errno.EPERM
    assert errno_of(os.rmdir, mnt / ".s3") == errno.EPERM
    assert errno_of(os.symlink, "x", mnt / ".s3" / "link") == errno.EPERM
