"""All-buckets mode (``s3fuse s3:// MOUNTPOINT``): the account's buckets as directories of the mount root.

The moto server is shared by the whole session and other tests create buckets too, so
these tests assert on the buckets they create, never on the total.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess

import botocore.exceptions
import pytest
from conftest import MotoServer, free_port, is_mounted, keys_of, unique_bucket_name, wait_until

from mount.test_mount_cli import one_error_line, s3fuse_cmd
from s3fuse.options import parse_args

ALL = "s3://"
HANG_GUARD = 30.0  # seconds: a guard against hanging, not a speed check


def errno_of(call, *args) -> int:
    with pytest.raises(OSError) as info:
        call(*args)
    return info.value.errno


def bucket_exists(s3, name: str) -> bool:
    try:
        s3.head_bucket(Bucket=name)
    except botocore.exceptions.ClientError as exc:
        assert exc.response["Error"]["Code"] in ("404", "NoSuchBucket"), exc
        return False
    return True


# ---------------------------------------------------------------- the command line


@pytest.mark.parametrize("argv", [[ALL, "m"], ["--all-buckets", "m"], ["m", "-o", "all_buckets,ro"], ["-f", ALL, "m"]])
def test_command_line_forms(argv):
    opts = parse_args(argv)
    assert opts.mount.all_buckets
    assert (opts.mount.bucket_name, opts.mount.prefix, opts.mount.mountpoint) == ("", "", os.path.abspath("m"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["bucket", "m", "--all-buckets"], "give no BUCKET"), (["m"], "BUCKET[:PREFIX] is missing")],
)
def test_command_line_errors(capsys, argv, message):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_start_up_failures_are_one_line(tmp_path, daemons_of):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    line = one_error_line(s3fuse_cmd(ALL, str(mnt), "--endpoint-url", url, tmp_path=tmp_path))
    assert url in line and "cannot connect" in line

    server = MotoServer(tmp_path, env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"})  # every request needs a known key
    try:
        env = {"AWS_ACCESS_KEY_ID": "AKIAUNKNOWNKEY000000"}
        line = one_error_line(s3fuse_cmd(ALL, str(mnt), "--endpoint-url", server.url, tmp_path=tmp_path, env=env))
        assert "the list of buckets" in line and "denied" in line and "credentials" in line
    finally:
        server.stop()
    assert not is_mounted(mnt)
    assert daemons_of(mnt) == []


# ---------------------------------------------------------------- the root


def test_root_lists_the_buckets(s3, new_bucket, mount):
    mine = {new_bucket("list-a"), new_bucket("list-b")}
    mnt = mount(ALL)
    listed = set(os.listdir(mnt))
    assert mine <= listed
    assert listed <= {b["Name"] for b in s3.list_buckets()["Buckets"]}  # nothing that is not a bucket

    created = {b["Name"]: b["CreationDate"] for b in s3.list_buckets()["Buckets"]}
    for name in mine:
        st = os.stat(mnt / name)
        assert stat.S_ISDIR(st.st_mode)
        assert st.st_mtime_ns == int(created[name].timestamp()) * 1_000_000_000
    assert stat.S_ISDIR(os.stat(mnt).st_mode)
    assert os.statvfs(mnt).f_namemax == 255
    with open("/proc/self/mounts") as mounts:
        assert [line.split()[0] for line in mounts if line.split()[1] == str(mnt)] == [f"s3fuse:{ALL}"]


def test_files_are_refused_in_the_root(mount):
    mnt = mount(ALL)
    assert errno_of(open, mnt / "file.txt", "w") == errno.EPERM
    assert errno_of(os.symlink, "target", mnt / "link") == errno.EPERM
    assert errno_of(os.mkfifo, mnt / "fifo") == errno.EPERM
    assert "file.txt" not in os.listdir(mnt)
    assert "in the mount root: it holds buckets only" in mount.log_text(mnt)


def test_new_buckets_appear_after_the_dir_ttl(s3, mount):
    cached = mount(ALL, "--dir-ttl", "3600")
    short = mount(ALL, "--dir-ttl", "1")
    os.listdir(cached), os.listdir(short)
    name = unique_bucket_name("appears")
    s3.create_bucket(Bucket=name)
    assert name not in os.listdir(cached)  # the listing is cached for the dir TTL ...
    assert not os.path.exists(cached / name)  # ... and answers lookups too
    assert wait_until(lambda: name in os.listdir(short), HANG_GUARD)
    assert os.path.isdir(short / name)


# ---------------------------------------------------------------- inside a bucket


def test_read_and_write_inside_a_bucket(s3, new_bucket, mount):
    bucket = new_bucket("rw")
    s3.put_object(Bucket=bucket, Key="dir/old.txt", Body=b"from boto3\n")
    mnt = mount(ALL)
    assert (mnt / bucket / "dir" / "old.txt").read_bytes() == b"from boto3\n"
    assert os.listdir(mnt / bucket) == ["dir"]

    (mnt / bucket / "new.txt").write_bytes(b"written through the mount\n")
    assert s3.get_object(Bucket=bucket, Key="new.txt")["Body"].read() == b"written through the mount\n"
    os.mkdir(mnt / bucket / "made")
    os.rename(mnt / bucket / "new.txt", mnt / bucket / "made" / "moved.txt")
    os.unlink(mnt / bucket / "dir" / "old.txt")
    assert set(keys_of(s3, bucket)) == {"made/", "made/moved.txt"}


def test_a_bucket_in_another_region(s3, mount):
    name = unique_bucket_name("eu")
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    mnt = mount(ALL)
    (mnt / name / "f.txt").write_bytes(b"in Ireland\n")
    assert (mnt / name / "f.txt").read_bytes() == b"in Ireland\n"
    assert s3.get_object(Bucket=name, Key="f.txt")["Body"].read() == b"in Ireland\n"
    assert f"bucket {name!r} is in eu-west-1" in mount.log_text(mnt)


def test_inodes_of_buckets_never_collide(s3, new_bucket, mount):
    buckets = [new_bucket("ino-a"), new_bucket("ino-b")]
    for bucket in buckets:
        s3.put_object(Bucket=bucket, Key="same/name.txt", Body=bucket.encode())
    mnt = mount(ALL)
    paths = (
        [mnt / b for b in buckets] + [mnt / b / "same" for b in buckets] + [mnt / b / "same/name.txt" for b in buckets]
    )
    inodes = [os.stat(p).st_ino for p in paths]
    assert len(set(inodes)) == len(paths), dict(zip(paths, inodes, strict=True))
    for bucket in buckets:
        assert (mnt / bucket / "same/name.txt").read_bytes() == bucket.encode()


def test_forgotten_buckets_are_found_again(s3, new_bucket, mount):
    bucket = new_bucket("forget")
    s3.put_object(Bucket=bucket, Key="a/b.txt", Body=b"still here\n")
    mnt = mount(ALL)
    assert (mnt / bucket / "a" / "b.txt").read_bytes() == b"still here\n"
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")  # the kernel forgets the dentries and inodes it can: FUSE forget requests
    assert bucket in os.listdir(mnt)
    assert (mnt / bucket / "a" / "b.txt").read_bytes() == b"still here\n"


def test_xattrs_inside_a_bucket_answer_as_in_a_single_bucket_mount(s3, new_bucket, mount):
    bucket = new_bucket("xattr")
    s3.put_object(Bucket=bucket, Key="f.txt", Body=b"x", Metadata={"colour": "blue"})
    single, every = mount(bucket), mount(ALL)

    def answer(call, *args):
        try:
            return call(*args)
        except OSError as exc:
            return exc.errno

    assert answer(os.listxattr, every / bucket / "f.txt") == answer(os.listxattr, single / "f.txt")
    assert answer(os.getxattr, every / bucket / "f.txt", "user.colour") == answer(
        os.getxattr, single / "f.txt", "user.colour"
    )


# ---------------------------------------------------------------- buckets as directories


def test_mkdir_and_rmdir_create_and_delete_buckets(s3, mount):
    mnt = mount(ALL)
    name = unique_bucket_name("made-here")
    os.mkdir(mnt / name)
    assert bucket_exists(s3, name)
    assert name in os.listdir(mnt)
    assert errno_of(os.mkdir, mnt / name) == errno.EEXIST

    (mnt / name / "f.txt").write_bytes(b"keeps the bucket\n")
    assert errno_of(os.rmdir, mnt / name) == errno.ENOTEMPTY
    assert bucket_exists(s3, name)

    os.unlink(mnt / name / "f.txt")
    os.rmdir(mnt / name)
    assert not bucket_exists(s3, name)
    assert name not in os.listdir(mnt)
    assert not os.path.exists(mnt / name)


def test_buckets_cannot_be_renamed(new_bucket, mount):
    bucket = new_bucket("no-rename")
    mnt = mount(ALL)
    assert errno_of(os.rename, mnt / bucket, mnt / unique_bucket_name("renamed")) == errno.EPERM
    assert os.path.isdir(mnt / bucket)


def test_mv_between_buckets_copies(s3, new_bucket, mount):
    source, target = new_bucket("mv-from"), new_bucket("mv-to")
    data = os.urandom(3 << 20)
    s3.put_object(Bucket=source, Key="big.bin", Body=data)
    mnt = mount(ALL)
    assert errno_of(os.rename, mnt / source / "big.bin", mnt / target / "big.bin") == errno.EXDEV
    # the root is another file system too: mv of a directory there would create a bucket
    assert errno_of(os.rename, mnt / source / "big.bin", mnt / unique_bucket_name("moved")) == errno.EXDEV
    subprocess.run(["mv", str(mnt / source / "big.bin"), str(mnt / target / "moved.bin")], check=True, timeout=120)
    assert s3.get_object(Bucket=target, Key="moved.bin")["Body"].read() == data
    assert keys_of(s3, source) == {}
    assert (mnt / target / "moved.bin").read_bytes() == data
