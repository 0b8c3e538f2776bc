"""The write path on a second, independent S3 server: SeaweedFS.

moto is lenient where real servers are not (it ignores CopySourceIfMatch) and
SeaweedFS differs where S3 leaves room (it answers CopyObject with an unquoted ETag,
keeps directories as such, cannot copy a directory marker). These tests run the
tree changes and uploads that met those differences, each under its own prefix of
one bucket, and compare every result with boto3 on the same server.
"""

from __future__ import annotations

import concurrent.futures
import errno
import itertools
import os
import random
import subprocess
import tarfile

import pytest
from conftest import boto_client, held_changes_saved, held_inodes, run, wait_until
from faultproxy import FaultProxy, Rule

from s3fuse.s3client import ClientSettings, S3Client

MIB = 1 << 20
_prefixes = itertools.count(1)


@pytest.fixture
def weed(seaweed, mount):
    """(boto3 client, key prefix, mount point) of a fresh prefix of the SeaweedFS bucket."""
    prefix = f"t{next(_prefixes):03d}-{os.getpid()}"
    mnt = mount(f"{seaweed.BUCKET}:{prefix}", "--endpoint-url", seaweed.url, endpoint=False)
    return boto_client(seaweed.url), prefix, mnt


def objects(client, prefix: str) -> dict[str, bytes]:
    """relative key -> bytes of every object under prefix/ (directory markers excluded)."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="s3fuse-tests", Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                body = client.get_object(Bucket="s3fuse-tests", Key=obj["Key"])["Body"].read()
                out[obj["Key"][len(prefix) + 1 :]] = body
    return out


def test_tree_changes(weed, tmp_path):
    client, prefix, mnt = weed
    src = tmp_path / "src"
    (src / "sub/deeper").mkdir(parents=True)
    files = {"a.txt": b"alpha\n", "sub/b.bin": random.Random(1).randbytes(100_000), "sub/deeper/c": b"c\n"}
    for name, data in files.items():
        (src / name).write_bytes(data)
    run(["cp", "-r", str(src), str(mnt / "tree")])
    assert objects(client, prefix) == {f"tree/{k}": v for k, v in files.items()}

    os.rename(mnt / "tree/a.txt", mnt / "tree/moved.txt")  # CopyObject's ETag comes back unquoted
    with open(mnt / "tree/moved.txt", "ab") as f:  # ... which must not look like a conflict
        f.write(b"more\n")
    os.rename(mnt / "tree", mnt / "renamed")  # a directory: markers, nested directories
    expected = {"renamed/moved.txt": b"alpha\nmore\n", "renamed/sub/b.bin": files["sub/b.bin"]}
    expected["renamed/sub/deeper/c"] = b"c\n"
    assert objects(client, prefix) == expected
    assert sorted(os.listdir(mnt)) == ["renamed"]  # no emptied directory left behind
    run(["rm", "-r", str(mnt / "renamed")])
    assert objects(client, prefix) == {}
    assert os.listdir(mnt) == []


def test_tar_with_symlinks(weed, tmp_path):
    client, prefix, mnt = weed
    src = tmp_path / "pkg"
    (src / "lib").mkdir(parents=True)
    (src / "lib/mod.py").write_text("x = 1\n")
    (src / "current").symlink_to("lib/mod.py")
    archive = tmp_path / "pkg.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(src, arcname="pkg")
    (mnt / "x").mkdir()
    run(["tar", "-xf", str(archive), "-C", str(mnt / "x")])
    assert os.readlink(mnt / "x/pkg/current") == "lib/mod.py"
    assert (mnt / "x/pkg/current").read_text() == "x = 1\n"
    assert objects(client, prefix)["x/pkg/current"] == b"lib/mod.py"  # s3fs-fuse's representation


def test_streamed_write_and_partial_overwrite(weed, tmp_path):
    """Multipart upload while writing, then UploadPartCopy for the unchanged ranges."""
    client, prefix, mnt = weed
    data = bytearray(random.Random(2).randbytes(20 * MIB + 5))
    local = tmp_path / "big.bin"
    local.write_bytes(data)
    run(["dd", f"if={local}", f"of={mnt / 'big.bin'}", "bs=1M", "status=none"])
    assert objects(client, prefix)["big.bin"] == data
    patch = random.Random(3).randbytes(MIB)
    fd = os.open(mnt / "big.bin", os.O_WRONLY)
    try:
        os.pwrite(fd, patch, 9 * MIB)
    finally:
        os.close(fd)
    data[9 * MIB : 10 * MIB] = patch
    assert objects(client, prefix)["big.bin"] == data


def test_attributes(weed):
    client, prefix, mnt = weed
    (mnt / "f.txt").write_bytes(b"f\n")
    os.chmod(mnt / "f.txt", 0o600)
    os.utime(mnt / "f.txt", (1_600_000_000, 1_600_000_000))
    held_changes_saved(mnt)  # both held a moment after the save (semantics.md, Writes)
    meta = client.head_object(Bucket="s3fuse-tests", Key=f"{prefix}/f.txt")["Metadata"]
    assert (meta["mode"], meta["mtime"]) == (str(0o100600), "1600000000")


def test_a_file_changed_behind_the_mount_is_not_renamed(weed):
    """The rename's CopyObject carries the ETag the mount knows (moto ignores it; SeaweedFS does not)."""
    client, prefix, mnt = weed
    (mnt / "f").write_bytes(b"written through the mount")
    client.put_object(Bucket="s3fuse-tests", Key=f"{prefix}/f", Body=b"written by another client meanwhile")
    with pytest.raises(OSError) as err:
        os.rename(mnt / "f", mnt / "g")
    assert err.value.errno == errno.ESTALE
    assert objects(client, prefix) == {"f": b"written by another client meanwhile"}


def test_write_back_journal_survives_sigkill(seaweed, mount, tmp_path):
    """--write-back on SeaweedFS: files closed while every upload is refused (through the fault
    proxy), the daemon killed, and the next mount with the same cache dir uploads them all."""
    client = boto_client(seaweed.url)
    prefix = f"t{next(_prefixes):03d}-{os.getpid()}"
    old = bytearray(random.Random(4).randbytes(12 * MIB))
    client.put_object(Bucket=seaweed.BUCKET, Key=f"{prefix}/old.bin", Body=bytes(old))
    proxy = FaultProxy(seaweed.url)
    try:
        proxy.add(Rule("internal", method="PUT", path=r"^/[^/]+/.*[^/]$"))  # every upload of a file
        spec = f"{seaweed.BUCKET}:{prefix}"
        quick = ("--timeout", "2", "--retries", "2")
        mnt = mount(spec, "--endpoint-url", proxy.url, "--write-back", *quick, endpoint=False)
        files = {"small.txt": b"journal\n", "big.bin": random.Random(5).randbytes(20 * MIB + 3)}
        for name, data in files.items():
            (mnt / name).write_bytes(data)
        with open(mnt / "old.bin", "r+b") as f:  # a changed range: replayed with UploadPartCopy
            f.seek(9 * MIB)
            f.write(b"Y" * 4096)
        old[9 * MIB : 9 * MIB + 4096] = b"Y" * 4096
        files["old.bin"] = bytes(old)
        mount.kill(mnt)
        run(["fusermount3", "-u", str(mnt)])
    finally:
        proxy.close()
    assert set(objects(client, prefix)) == {"old.bin"}  # nothing else reached S3
    journal = tmp_path / "xdg/s3fuse/journal" / seaweed.BUCKET
    again = mount(spec, "--endpoint-url", seaweed.url, endpoint=False)
    assert wait_until(lambda: not list(journal.glob("[0-9]*.json")), 60), mount.log_text(again)
    assert objects(client, prefix) == files
    assert (again / "big.bin").read_bytes() == files["big.bin"]
    mount.check(again)


def test_a_long_listing_keeps_the_inode_limit(seaweed, mount, tmp_path):
    """find of 20,000 keys in one directory under --inode-limit 1000: the kernel is made to forget
    files while the listing runs (short pages let its invalidations through the directory's lock),
    so the daemon never holds more than a few thousand inodes, not the 20,000 it listed."""
    prefix = f"t{next(_prefixes):03d}-{os.getpid()}"
    objects_ = S3Client(boto_client(seaweed.url), seaweed.BUCKET, ClientSettings(endpoint_url=seaweed.url)).direct
    with concurrent.futures.ThreadPoolExecutor(16) as pool:  # a third of boto3's CPU per request
        list(
            pool.map(
                lambda i: objects_.put_object(Bucket=seaweed.BUCKET, Key=f"{prefix}/f{i:05d}", Body=b""), range(20_000)
            )
        )
    mnt = mount(f"{seaweed.BUCKET}:{prefix}", "--endpoint-url", seaweed.url, "--inode-limit", "1000", endpoint=False)
    samples = []
    listed = tmp_path / "listed"
    with open(listed, "wb") as out:
        finder = subprocess.Popen(["find", str(mnt)], stdout=out)
        while finder.poll() is None:
            samples.append(held_inodes(mnt))
    assert finder.returncode == 0 and len(listed.read_bytes().splitlines()) == 20_001
    assert len(samples) > 5 and max(samples) < 4000, samples
