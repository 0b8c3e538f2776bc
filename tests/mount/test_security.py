"""Who may do what on a mount: other users only with allow_other, modes and owners enforced by the
kernel (default_permissions), the bucket's configuration and presigned URLs only for those allowed."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run

NOBODY = 65534


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A mount point other users can reach (pytest's tmp_path is root's alone).

    Tests ask for it before ``mount``, whose teardown (unmounting) then comes first."""
    top = Path(tempfile.mkdtemp(prefix="s3fuse-shared-"))
    top.chmod(0o755)
    yield top / "mnt"
    shutil.rmtree(top, ignore_errors=True)


def as_nobody(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
    )


def refused(res: subprocess.CompletedProcess) -> bool:
    return res.returncode != 0 and "Permission denied" in res.stderr


def test_other_users_only_with_allow_other(shared_dir, s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello\n")
    mnt = mount(bucket, at=shared_dir)
    assert run(["cat", str(mnt / "hello.txt")]).stdout == b"hello\n"  # the owner (root)
    assert refused(as_nobody("ls", str(mnt)))
    assert refused(as_nobody("cat", str(mnt / "hello.txt")))
    with open("/proc/self/mounts") as mounts:
        options = next(line.split()[3] for line in mounts if line.split()[1] == str(mnt)).split(",")
    assert "default_permissions" in options and "allow_other" not in options
    mount.check(mnt)

    mnt = mount(bucket, "--allow-other", at=shared_dir)
    res = as_nobody("cat", str(mnt / "hello.txt"))
    assert res.returncode == 0 and res.stdout == "hello\n"


def test_modes_and_owners_are_enforced(shared_dir, s3, bucket, mount):
    """POSIX metadata (x-amz-meta-mode/uid/gid) is what the kernel checks, for reads, writes and xattrs."""
    private = {"mode": str(0o100600), "uid": "0", "gid": "0"}
    s3.put_object(Bucket=bucket, Key="private.txt", Body=b"secret\n", Metadata=private)
    s3.put_object(Bucket=bucket, Key="public.txt", Body=b"public\n")
    mnt = mount(bucket, "--allow-other", "--posix-metadata", at=shared_dir)

    assert refused(as_nobody("cat", str(mnt / "private.txt")))
    # a presigned URL is a way to read: not for whoever may not read the file
    assert refused(as_nobody("getfattr", "--only-values", "-n", "s3.presigned_url", str(mnt / "private.txt")))
    assert refused(as_nobody("getfattr", "--only-values", "-n", "user.anything", str(mnt / "private.txt")))
    assert as_nobody("cat", str(mnt / "public.txt")).stdout == "public\n"
    # public.txt is root's, 644: readable, not writable, its ACL and tags not changeable
    assert refused(as_nobody("sh", "-c", f"echo x >> {mnt / 'public.txt'}"))
    assert refused(as_nobody("setfattr", "-n", "s3.acl", "-v", "public-read", str(mnt / "public.txt")))
    assert refused(as_nobody("setfattr", "-n", "user.colour", "-v", "red", str(mnt / "public.txt")))
    assert refused(as_nobody("rm", "-f", str(mnt / "public.txt")))  # the root directory is root's, 755
    assert refused(as_nobody("touch", str(mnt / "new.txt")))
    res = as_nobody("chmod", "666", str(mnt / "public.txt"))
    assert res.returncode != 0 and "Operation not permitted" in res.stderr  # only the owner may: EPERM

    assert s3.get_object(Bucket=bucket, Key="public.txt")["Body"].read() == b"public\n"
    assert sorted(k["Key"] for k in s3.list_objects_v2(Bucket=bucket)["Contents"]) == ["private.txt", "public.txt"]
    assert (
        s3.get_object_acl(Bucket=bucket, Key="public.txt")["Grants"]
        == s3.get_object_acl(Bucket=bucket, Key="private.txt")["Grants"]
    )  # unchanged: both still the default


def test_bucket_configuration_is_the_owners(shared_dir, s3, bucket, mount):
    mnt = mount(bucket, "--allow-other", at=shared_dir)
    assert as_nobody("cat", str(mnt / ".s3" / "request-payment")).returncode == 0  # readable, like the bucket
    rules = '{"CORSRules": [{"AllowedMethods": ["GET"], "AllowedOrigins": ["*"]}]}'
    assert refused(as_nobody("sh", "-c", f"echo '{rules}' > {mnt / '.s3' / 'cors'}"))
    assert refused(as_nobody("setfattr", "-n", "s3.tags", "-v", '{"a": "b"}', str(mnt)))
    with pytest.raises(s3.exceptions.ClientError):
        s3.get_bucket_cors(Bucket=bucket)  # still none
    run(["sh", "-c", f"echo '{rules}' > {mnt / '.s3' / 'cors'}"])  # the owner may
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"][0]["AllowedMethods"] == ["GET"]
