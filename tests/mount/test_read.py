"""Reading file contents (sequential, random, replaced objects); read-only mounts refuse writes."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import random
import threading
import time

import pytest
from conftest import keys_of, run, unique_bucket_name

MIB = 1 << 20
BIG_SIZE = 64 * MIB + 12_345  # >= 64 MiB, and the last block is partial for any power-of-two block size


@pytest.fixture(scope="module")
def big_object(s3, tmp_path_factory):
    """(bucket, key, local copy path, bytes) of a random object of BIG_SIZE bytes."""
    data = random.Random(20261124).randbytes(BIG_SIZE)
    name = unique_bucket_name("big-object")
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="data/big.bin", Body=data)
    local = tmp_path_factory.mktemp("big") / "big.bin"
    local.write_bytes(data)
    return name, "data/big.bin", local, data


BLOCK_VARIANTS = {
    "default-blocks": (8 * MIB, []),
    "1M-blocks": (MIB, ["--block-size", "1M", "--read-ahead", "4M", "--cache-size", "16M"]),
    # read by blocks only, each kept on disk; a random read fetches the rest in the background
    "disk-cache": (
        MIB,
        ["--block-size", "1M", "--read-ahead", "4M", "--cache-size", "16M", "--disk-cache-size", "256M"],
    ),
}


@pytest.mark.parametrize("variant", list(BLOCK_VARIANTS))
def test_sequential_read_of_big_object(big_object, mount, tmp_path, variant):
    bucket, key, local, data = big_object
    _, args = BLOCK_VARIANTS[variant]
    mnt = mount(bucket, *args)
    path = mnt / key
    assert os.stat(path).st_size == BIG_SIZE
    copy = tmp_path / "copy.bin"
    run(["dd", f"if={path}", f"of={copy}", "bs=1M", "status=none"])
    run(["cmp", str(copy), str(local)])
    assert run(["md5sum", str(path)], text=True).stdout.split()[0] == hashlib.md5(data).hexdigest()
    # odd-sized sequential reads that straddle every block boundary
    digest = hashlib.md5()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(3 * MIB + 4097):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.md5(data).hexdigest()


def test_mmap_and_small_reads(s3, bucket, mount):
    body = random.Random(6).randbytes(3 * MIB + 17)
    s3.put_object(Bucket=bucket, Key="m.bin", Body=body)
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    mnt = mount(bucket, "--block-size", "1M")
    with open(mnt / "m.bin", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert len(m) == len(body)
        assert m[MIB - 5 : MIB + 5] == body[MIB - 5 : MIB + 5]
        assert m[-17:] == body[-17:]
        assert hashlib.md5(m).hexdigest() == hashlib.md5(body).hexdigest()
    assert (mnt / "empty").read_bytes() == b""
    assert run(["head", "-c", "10", str(mnt / "m.bin")]).stdout == body[:10]
    assert run(["tail", "-c", "10", str(mnt / "m.bin")]).stdout == body[-10:]


def read_offsets(block_size: int, size: int) -> list[tuple[int, int]]:
    """~50 (offset, length) pairs: random ones, block boundaries, the last partial block, EOF."""
    rng = random.Random(block_size)
    out = [(rng.randrange(size), rng.choice([1, 100, 4096, 65536, 200_000, MIB + 3])) for _ in range(30)]
    for i in rng.sample(range(1, size // block_size), min(8, size // block_size - 1)):
        out.append((i * block_size - rng.randrange(1, 5000), rng.randrange(5001, 3 * block_size // 2)))
    last = (size // block_size) * block_size
    out += [
        (last, size - last),  # exactly the last partial block
        (last - 10, 4096),  # crossing into it
        (last + 5, 100_000),  # inside it, past EOF
        (size - 1, 10),
        (size - 4096, 4096),
        (size, 100),  # at EOF
        (size + 12345, 10),  # beyond EOF
        (0, 1),
        (block_size - 1, 2),
        (block_size, block_size),
        (2 * block_size - 3, block_size + 6),
        (rng.randrange(size), 3 * block_size),  # spans several blocks
    ]
    return out


@pytest.mark.parametrize("variant", list(BLOCK_VARIANTS))
def test_random_reads_of_big_object(big_object, mount, variant):
    bucket, key, _, data = big_object
    block_size, args = BLOCK_VARIANTS[variant]
    mnt = mount(bucket, *args)
    path = mnt / key
    offsets = read_offsets(block_size, BIG_SIZE)
    # O_DIRECT: the offsets and lengths reach s3fuse unchanged (no page cache, no kernel read-ahead)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        for off, length in offsets:
            assert os.pread(fd, length, off) == data[off : off + length], (off, length)
    finally:
        os.close(fd)
    # and through the page cache, in a different order
    with open(path, "rb", buffering=0) as f:
        for off, length in reversed(offsets):
            assert os.pread(f.fileno(), length, off) == data[off : off + length], (off, length)


@pytest.mark.parametrize(
    ("new_size", "extra"),
    [(20 * MIB, []), (8 * MIB, []), (20 * MIB, ["--disk-cache-size", "64M"])],
    ids=["grown", "shrunk", "grown-disk-cache"],  # with a disk cache: by blocks, the rest fetched in the background
)
def test_object_replaced_while_open(s3, bucket, mount, new_size, extra):
    old = random.Random(1).randbytes(16 * MIB)
    new = random.Random(2).randbytes(new_size)
    s3.put_object(Bucket=bucket, Key="f.bin", Body=old)
    mnt = mount(bucket, "--block-size", "1M", "--read-ahead", "1M", "--attr-ttl", "1", *extra)
    path = mnt / "f.bin"

    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.read(fd, 4096) == old[:4096]
        s3.put_object(Bucket=bucket, Key="f.bin", Body=new)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        for off in (12 * MIB, 15 * MIB + 1000):  # never read before: in no cache
            with pytest.raises(OSError) as err:
                got = os.pread(fd, 65536, off)
                pytest.fail(f"read at {off} returned {len(got)} bytes (of the new object: {got in new})")
            assert err.value.errno == errno.EIO
    finally:
        os.close(fd)
    assert "changed or vanished in S3 while open" in mount.log_text(mnt)

    time.sleep(1.5)  # past the attribute TTL: the next open sees the new object
    assert os.stat(path).st_size == len(new)
    with open(path, "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == hashlib.md5(new).hexdigest()
    assert run(["md5sum", str(path)], text=True).stdout.split()[0] == hashlib.md5(new).hexdigest()


def test_reopen_after_change_reads_new_object(s3, bucket, mount):
    """Once a read failed because the object changed, the next open asks S3 again (TTL or not)."""
    old = random.Random(4).randbytes(16 * MIB)
    new = random.Random(5).randbytes(20 * MIB)
    s3.put_object(Bucket=bucket, Key="f.bin", Body=old)
    mnt = mount(bucket, "--block-size", "1M", "--read-ahead", "1M")  # the default 30 s attribute TTL
    path = mnt / "f.bin"
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.pread(fd, 4096, 0) == old[:4096]
        s3.put_object(Bucket=bucket, Key="f.bin", Body=new)
        # another open within the TTL still reads the version it saw: old bytes or EIO, never new ones
        res = run(["cat", str(path)], check=False)
        assert (res.returncode, res.stdout) == (0, old) or (res.returncode != 0 and old.startswith(res.stdout))
        with pytest.raises(OSError) as err:
            os.pread(fd, 4096, 12 * MIB)
        assert err.value.errno == errno.EIO
    finally:
        os.close(fd)
    assert run(["md5sum", str(path)], text=True).stdout.split()[0] == hashlib.md5(new).hexdigest()
    assert os.stat(path).st_size == len(new)


def test_concurrent_readers(big_object, mount):
    """Threads reading the same object at once (shared blocks, read-ahead, random reads) all get its bytes."""
    bucket, key, _, data = big_object
    mnt = mount(bucket, "--block-size", "1M", "--read-ahead", "4M", "--cache-size", "8M")
    path = mnt / key
    errors = []

    def sequential(start: int, step: int) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            for off in range(start, min(start + 12 * MIB, BIG_SIZE), step):
                got = os.pread(fd, step, off)
                if got != data[off : off + step]:
                    errors.append((start, off))
        finally:
            os.close(fd)

    def scattered(seed: int) -> None:
        rng = random.Random(seed)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            for _ in range(20):
                off, size = rng.randrange(BIG_SIZE), rng.randrange(1, 300_000)
                if os.pread(fd, size, off) != data[off : off + size]:
                    errors.append((seed, off, size))
        finally:
            os.close(fd)

    threads = [threading.Thread(target=sequential, args=(s, 256 * 1024)) for s in (0, 0, 4 * MIB, 40 * MIB)]
    threads += [threading.Thread(target=sequential, args=(MIB + 7, 100_003))]
    threads += [threading.Thread(target=scattered, args=(seed,)) for seed in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_object_deleted_while_open(s3, bucket, mount):
    body = random.Random(3).randbytes(4 * MIB)
    s3.put_object(Bucket=bucket, Key="gone.bin", Body=body)
    mnt = mount(bucket, "--block-size", "1M", "--read-ahead", "1M")
    fd = os.open(mnt / "gone.bin", os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.pread(fd, 4096, 0) == body[:4096]
        s3.delete_object(Bucket=bucket, Key="gone.bin")
        with pytest.raises(OSError) as err:
            os.pread(fd, 4096, 3 * MIB)
        assert err.value.errno == errno.EIO
    finally:
        os.close(fd)


def expect_erofs(fn, *args) -> None:
    with pytest.raises(OSError) as err:
        fn(*args)
    assert err.value.errno == errno.EROFS, (fn, args, err.value)


@pytest.mark.parametrize("args", [["--read-only"], ["-o", "ro"]], ids=["read-only", "o-ro"])
def test_writes_are_refused_on_read_only_mounts(s3, bucket, mount, args):
    s3.put_object(Bucket=bucket, Key="dir/file.txt", Body=b"original\n")
    s3.put_object(Bucket=bucket, Key="top.txt", Body=b"top\n")
    before = {k: v["ETag"] for k, v in keys_of(s3, bucket).items()}
    mnt = mount(bucket, *args)

    expect_erofs(os.open, mnt / "new.txt", os.O_CREAT | os.O_WRONLY, 0o644)
    expect_erofs(os.open, mnt / "top.txt", os.O_WRONLY)
    expect_erofs(os.open, mnt / "top.txt", os.O_RDWR)
    expect_erofs(os.open, mnt / "top.txt", os.O_RDONLY | os.O_TRUNC)
    expect_erofs(os.truncate, mnt / "top.txt", 0)
    expect_erofs(os.mkdir, mnt / "newdir")
    expect_erofs(os.unlink, mnt / "top.txt")
    expect_erofs(os.rmdir, mnt / "dir")
    expect_erofs(os.rename, mnt / "top.txt", mnt / "moved.txt")
    expect_erofs(os.rename, mnt / "dir", mnt / "moved-dir")
    expect_erofs(os.symlink, "top.txt", mnt / "link")
    expect_erofs(os.link, mnt / "top.txt", mnt / "hardlink")
    expect_erofs(os.chmod, mnt / "top.txt", 0o600)
    expect_erofs(os.setxattr, mnt / "top.txt", "user.test", b"x")
    expect_erofs(os.removexattr, mnt / "top.txt", "user.test")
    expect_erofs(os.setxattr, mnt, "s3.tags", b"{}")
    expect_erofs(os.utime, mnt / "top.txt", (1, 1))
    expect_erofs(os.chown, mnt / "top.txt", 1, 1)
    expect_erofs(os.open, mnt / ".s3" / "cors", os.O_CREAT | os.O_WRONLY, 0o644)
    expect_erofs(os.unlink, mnt / ".s3" / "website")
    for cmd in (
        ["touch", str(mnt / "new2.txt")],
        ["mkdir", str(mnt / "newdir2")],
        ["rm", "-f", str(mnt / "dir/file.txt")],
        ["mv", str(mnt / "top.txt"), str(mnt / "dir/")],
        ["cp", "/etc/hostname", str(mnt / "copied")],
    ):
        res = run(cmd, check=False, text=True)
        assert res.returncode != 0, cmd
        assert "Read-only file system" in res.stderr, (cmd, res.stderr)

    assert {k: v["ETag"] for k, v in keys_of(s3, bucket).items()} == before
    assert (mnt / "top.txt").read_bytes() == b"top\n"
    assert sorted(os.listdir(mnt)) == ["dir", "top.txt"]
