"""The disk cache of blocks (--disk-cache-size) through real mounts: a remount re-reads from disk
without a GET, a corrupted block is fetched again, a changed object is never served from it, the
cap holds, and ``s3fuse cleanup --disk-cache`` trims it."""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import random
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, base_env, run, wait_until

from s3fuse.diskcache import HEADER_SIZE

MIB = 1 << 20
KIB = 1 << 10


def disk_args(cache: Path, size: str = "64M") -> list[str]:
    return ["--cache-dir", str(cache), "--disk-cache-size", size, "--block-size", "1M", "--read-ahead", "4M"]


def block_files(cache: Path) -> list[Path]:
    return [p for p in (cache / "blocks").rglob("*") if not p.name.endswith(".tmp") and p.is_file()]


def cached_bytes(cache: Path) -> int:
    """The bytes of the block files (a file the daemon evicts meanwhile counts 0)."""
    total = 0
    for path in block_files(cache):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def gets(moto, mark: int, bucket: str) -> list[str]:
    """The GetObject requests since mark (not listings)."""
    return [r.key for r in moto.requests(mark, bucket) if r.method == "GET" and r.key]


def read_direct(path: Path) -> bytes:
    """The file's bytes from the daemon, not the kernel's page cache."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        out = bytearray()
        while chunk := os.read(fd, MIB):
            out += chunk
        return bytes(out)
    finally:
        os.close(fd)


def test_a_remount_rereads_from_disk_without_a_get(s3, bucket, mount, moto, tmp_path):
    rng = random.Random(27)
    objects = {
        "small": rng.randbytes(10 * KIB),
        "dir/three": rng.randbytes(3 * MIB + 5),
        "dir/random": rng.randbytes(9 * MIB + 7),
    }
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    cache = tmp_path / "cache"
    mnt = mount(bucket, *disk_args(cache))
    assert (mnt / "small").read_bytes() == objects["small"]
    assert (mnt / "dir/three").read_bytes() == objects["dir/three"]
    # A few random reads: the rest of the object is fetched in the background, all 10 blocks.
    body = objects["dir/random"]
    fd = os.open(mnt / "dir/random", os.O_RDONLY | os.O_DIRECT)
    try:
        for offset in (8 * MIB, 2 * MIB + 4096, 5 * MIB):
            assert os.pread(fd, 4096, offset) == body[offset : offset + 4096]
        assert wait_until(lambda: len(block_files(cache)) == 1 + 4 + 10, 20)
        for offset in (0, 6 * MIB):  # from the cache now
            assert os.pread(fd, 4096, offset) == body[offset : offset + 4096]
    finally:
        os.close(fd)
    mount.check(mnt)

    mnt = mount(bucket, *disk_args(cache))
    mark = moto.mark()
    fd = os.open(mnt / "dir/random", os.O_RDONLY | os.O_DIRECT)
    try:  # random reads: just their chunks from disk
        for offset in (7 * MIB + 12288, 1 * MIB - 4096, 9 * MIB):
            assert os.pread(fd, 8192, offset) == body[offset : offset + 8192]
    finally:
        os.close(fd)
    for key, body in objects.items():
        assert read_direct(mnt / key) == body
    assert gets(moto, mark, bucket) == []


def test_a_corrupted_block_is_fetched_again(s3, bucket, mount, moto, tmp_path):
    body = random.Random(28).randbytes(3 * MIB + 100)
    s3.put_object(Bucket=bucket, Key="f.bin", Body=body)
    cache = tmp_path / "cache"
    mnt = mount(bucket, *disk_args(cache))
    assert (mnt / "f.bin").read_bytes() == body
    mount.check(mnt)
    files = block_files(cache)
    assert len(files) == 4
    with open(files[0], "r+b") as f:  # one bit of the data
        f.seek(-1, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([byte[0] ^ 1]))
    with open(files[1], "r+b") as f:  # torn
        f.truncate(HEADER_SIZE + 10)

    mnt = mount(bucket, *disk_args(cache))
    mark = moto.mark()
    assert read_direct(mnt / "f.bin") == body
    assert len(gets(moto, mark, bucket)) == 2  # the two damaged blocks, no others
    assert "torn or corrupted" in mount.log_text(mnt)
    mount.check(mnt)

    mnt = mount(bucket, *disk_args(cache))  # written again whole
    mark = moto.mark()
    assert read_direct(mnt / "f.bin") == body
    assert gets(moto, mark, bucket) == []


def test_a_changed_object_is_never_served_from_the_disk_cache(s3, bucket, mount, moto, tmp_path):
    rng = random.Random(29)
    versions = [rng.randbytes(2 * MIB + 3) for _ in range(3)]  # one size: only the ETag tells them apart
    s3.put_object(Bucket=bucket, Key="f.bin", Body=versions[0])
    cache = tmp_path / "cache"
    mnt = mount(bucket, *disk_args(cache), "--attr-ttl", "0.5")
    assert read_direct(mnt / "f.bin") == versions[0]
    s3.put_object(Bucket=bucket, Key="f.bin", Body=versions[1])  # while mounted
    time.sleep(0.7)
    assert read_direct(mnt / "f.bin") == versions[1]
    mount.check(mnt)
    s3.put_object(Bucket=bucket, Key="f.bin", Body=versions[2])  # while unmounted
    mnt = mount(bucket, *disk_args(cache))
    mark = moto.mark()
    assert read_direct(mnt / "f.bin") == versions[2]
    assert gets(moto, mark, bucket)


def resident_pages(path: Path) -> tuple[int, int]:
    """(pages of the file in the kernel's page cache, pages of the file): mincore(2) of a mapping,
    which reads nothing."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert address != ctypes.c_void_p(-1).value, os.strerror(ctypes.get_errno())
        try:
            vector = (ctypes.c_ubyte * pages)()
            assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
            return sum(v & 1 for v in vector), pages
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)


@pytest.mark.parametrize("disk", ["disk-cache", "memory"])
def test_random_reads_put_the_whole_object_in_the_page_cache(s3, bucket, mount, moto, tmp_path, disk):
    """Random reads of an object that fits the disk cache (or --random-fetch-max without one): the rest
    is fetched in the background and put in the kernel's page cache, whose reads never reach the
    daemon; right bytes, and a write afterwards is neither undone by it nor lost."""
    body = random.Random(31).randbytes(6 * MIB + 5)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=body)
    if disk == "disk-cache":
        mnt = mount(bucket, *disk_args(tmp_path / "cache"))
    else:  # blocks of 1 MiB and 2 MiB of memory cache: the object cannot be in the daemon's memory
        mnt = mount(bucket, "--block-size", "1M", "--cache-size", "2M", "--random-fetch-max", "8M")
    path = mnt / "big.bin"
    with open(path, "rb", buffering=0) as f:
        for offset in (5 * MIB, 3 * MIB, 1 * MIB + 8192):
            assert os.pread(f.fileno(), 4096, offset) == body[offset : offset + 4096]
        # every page, the last partial one too, without a read of them by the test
        assert wait_until(lambda: resident_pages(path)[0] == resident_pages(path)[1], 20), resident_pages(path)
        mark = moto.mark()
        assert f.read() == body
        assert gets(moto, mark, bucket) == []
        # pages the kernel let go (fio drops a file's pages before each pass): the next random read
        # that reaches the daemon puts all of them back (from the disk cache, else from S3)
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert resident_pages(path)[0] < resident_pages(path)[1]
        far = 5 * MIB + 512 * 1024  # more than SEQUENTIAL_SLACK from the last read the daemon saw: random
        assert os.pread(f.fileno(), 4096, far) == body[far : far + 4096]
        assert wait_until(lambda: resident_pages(path)[0] == resident_pages(path)[1], 20), resident_pages(path)
        f.seek(0)
        assert f.read() == body
    with open(path, "r+b") as f:
        f.seek(2 * MIB)
        f.write(b"written after the fill")
    expected = body[: 2 * MIB] + b"written after the fill" + body[2 * MIB + 22 :]
    assert path.read_bytes() == expected
    mount.check(mnt)
    assert s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == expected


def test_an_o_direct_reader_fetches_just_its_bytes(s3, bucket, mount, moto):
    """O_DIRECT reads pass the kernel's page cache by: its reader fills nothing there, so it neither
    fetches the whole object nor takes each of its reads for pages the kernel let go (which would
    fetch all of it again and again)."""
    body = random.Random(32).randbytes(6 * MIB)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=body)
    mnt = mount(bucket, "--block-size", "1M", "--cache-size", "2M", "--random-fetch-max", "8M")
    rng = random.Random(5)
    buf = mmap.mmap(-1, 4096)  # O_DIRECT wants an aligned buffer
    fd = os.open(mnt / "big.bin", os.O_RDONLY | os.O_DIRECT)
    try:
        mark = moto.mark()
        for _ in range(40):
            offset = rng.randrange(6 * MIB // 4096) * 4096
            assert os.preadv(fd, [buf], offset) == 4096
            assert buf[:] == body[offset : offset + 4096]
            time.sleep(0.02)  # room for background fetches to start, were there any
    finally:
        os.close(fd)
    assert len(gets(moto, mark, bucket)) <= 40  # a ranged GET per read at most, none of the whole object


def test_the_cap_holds_and_cleanup_empties_the_cache(s3, bucket, mount, tmp_path):
    rng = random.Random(30)
    objects = {f"f{i}": rng.randbytes(MIB + MIB // 2) for i in range(6)}  # 9 MiB in all
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    cache = tmp_path / "cache"
    cap = 4 * MIB
    mnt = mount(bucket, *disk_args(cache, "4M"))
    for key, body in objects.items():
        assert read_direct(mnt / key) == body
        # over for a moment at most: while a read-ahead's block is written and before the trim it starts
        assert wait_until(lambda: cached_bytes(cache) <= cap, 10)
    mount.check(mnt)
    files = block_files(cache)
    assert files and sum(p.stat().st_size for p in files) <= cap

    res = run(
        [sys.executable, "-m", "s3fuse", "cleanup", "--disk-cache", "0", "--cache-dir", str(cache)],
        env=base_env(),
        cwd=ROOT,
        text=True,
    )
    assert "holds 0.0 MiB" in res.stdout
    assert block_files(cache) == []


def test_two_mounts_share_the_disk_cache(s3, bucket, mount, moto, tmp_path):
    rng = random.Random(31)
    objects = {f"f{i}": rng.randbytes(MIB + MIB // 2) for i in range(5)}  # 7.5 MiB, over the cap
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    cache = tmp_path / "cache"
    cap = 4 * MIB
    a = mount(bucket, *disk_args(cache, "4M"))
    b = mount(bucket, *disk_args(cache, "4M"))
    assert read_direct(a / "f0") == objects["f0"]
    assert wait_until(lambda: len(block_files(cache)) == 2, 10)
    mark = moto.mark()
    assert read_direct(b / "f0") == objects["f0"]  # what a kept
    assert gets(moto, mark, bucket) == []

    # Both read everything at once, again and again: each writes, evicts the other's blocks, and
    # finds files vanish under it; every byte stays right.
    failures = []

    def reader(mnt: Path, order: list[str]) -> None:
        try:
            for _ in range(3):
                for key in order:
                    assert read_direct(mnt / key) == objects[key], key
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)

    keys = list(objects)
    threads = [threading.Thread(target=reader, args=(a, keys)), threading.Thread(target=reader, args=(b, keys[::-1]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures
    # Each mount trims when what it wrote since its last scan passes the cap: two hold at most twice it.
    assert cached_bytes(cache) <= 2 * cap
