"""Races inside the daemon between requests on one file, through a real mount.

Found by an fsx-style random workload: a read of a file with unsaved changes that
awaits S3 while a write, a truncate or a save of the same file goes on. O_DIRECT
keeps the kernel's page cache out of the way, so each call reaches the daemon when
it is made. Each test runs long enough to hit its race many times before the fix.
"""

from __future__ import annotations

import mmap
import os
import random
import threading

import pytest
from conftest import wait_until

MIB = 1 << 20
BLOCK = 4096


def test_reads_racing_writes_elsewhere_in_the_file_get_the_right_bytes(s3, bucket, mount):
    """Reads of [512 KiB, 1 MiB) alternate between written and unwritten blocks, while
    another thread writes only below 512 KiB. A read used to walk the written ranges
    lazily across its GET of the old bytes: a write meanwhile made it return the old
    object's bytes where new ones were written, or fail (EINVAL from pread, as EIO)."""
    mnt = mount(bucket)
    size, half = MIB, MIB // 2
    bad: list[str] = []
    for round_ in range(2):
        key = f"race{round_}.bin"
        old = random.Random(round_).randbytes(size)
        s3.put_object(Bucket=bucket, Key=key, Body=old)
        want = bytearray(old)
        fd = os.open(mnt / key, os.O_RDWR | os.O_DIRECT)
        buf = mmap.mmap(-1, BLOCK)
        rng = random.Random(100 + round_)
        for offset in range(half, size, 2 * BLOCK):
            buf[:] = rng.randbytes(BLOCK)
            os.pwritev(fd, [buf], offset)
            want[offset : offset + BLOCK] = buf[:]
        stop = threading.Event()

        def writer(fd=fd, seed=round_, stop=stop) -> None:
            w, wbuf = random.Random(seed), mmap.mmap(-1, BLOCK)
            while not stop.is_set():
                wbuf[:] = w.randbytes(BLOCK)
                os.pwritev(fd, [wbuf], w.randrange(half // BLOCK) * BLOCK)

        thread = threading.Thread(target=writer)
        thread.start()
        rbuf = mmap.mmap(-1, 128 << 10)
        try:
            for _ in range(200):
                offset = half + rng.randrange(half // BLOCK) * BLOCK
                length = min(len(rbuf), size - offset)
                try:
                    n = os.preadv(fd, [memoryview(rbuf)[:length]], offset)
                except OSError as exc:
                    bad.append(f"{key} read at {offset}: {exc}")
                    continue
                if n != length or rbuf[:n] != want[offset : offset + n]:
                    bad.append(f"{key} read at {offset}: wrong bytes")
        finally:
            stop.set()
            thread.join()
            os.close(fd)
    assert not bad, f"{len(bad)} of 400 reads: {bad[:5]}"


@pytest.mark.parametrize("mode", ["default", "write-back"])
def test_a_read_racing_a_save_of_the_file_reads_the_file(s3, bucket, mount, mode):
    """A read that fetches unwritten bytes from the object (GET, If-Match) while a save of
    the same file replaces that object got 412 and failed with ESTALE; it reads the file
    as it is now instead. Under --write-back the save is the background upload after
    close(); in the default mode another thread saves with fsync."""
    olds = [random.Random(round_).randbytes(MIB) for round_ in range(12)]
    for round_, old in enumerate(olds):  # before the mount: a name another client adds is seen after a TTL
        s3.put_object(Bucket=bucket, Key=f"save{round_}.bin", Body=old)
    mnt = mount(bucket, *(["--write-back"] if mode == "write-back" else []))
    rbuf, failures, reads = mmap.mmap(-1, 64 << 10), [], 0
    for round_, old in enumerate(olds):
        key = f"save{round_}.bin"
        fd = os.open(mnt / key, os.O_RDWR)
        os.pwrite(fd, b"A" * BLOCK, 0)
        stop = threading.Event()
        if mode == "write-back":
            os.close(fd)  # journaled: the upload runs in the background from now on
            thread = None
        else:

            def saver(fd=fd, stop=stop) -> None:
                turn = 0
                while not stop.is_set():
                    os.pwrite(fd, bytes([turn % 256]) * BLOCK, 0)
                    os.fsync(fd)
                    turn += 1

            thread = threading.Thread(target=saver)
            thread.start()
        rfd = os.open(mnt / key, os.O_RDONLY | os.O_DIRECT)
        try:
            for offset in range(64 << 10, MIB, 64 << 10):  # never the first block, which changes
                try:
                    n = os.preadv(rfd, [rbuf], offset)
                    reads += 1
                    if rbuf[:n] != old[offset : offset + n]:
                        failures.append(f"{key} at {offset}: wrong bytes")
                except OSError as exc:
                    failures.append(f"{key} at {offset}: {exc}")
        finally:
            stop.set()
            if thread is not None:
                thread.join()
                os.close(fd)
            os.close(rfd)
    assert not failures, f"{len(failures)} of {reads + len(failures)} reads: {failures[:5]}"


def test_reopening_a_journaled_file_keeps_its_streamed_parts_reading_their_file(s3, bucket, mount):
    """--write-back, one upload at a time: a big file's upload holds the slot while a
    streamed file is closed and at once reopened for writing, which moves it to a copy
    of its spill file. Its parts still waiting used to read the closed descriptor (EBADF,
    or another file's bytes once the number was reused); they hold their file now."""
    mnt = mount(bucket, "--write-back", "--write-back-uploads", "1")
    big = random.Random(1).randbytes(64 * MIB)
    streamed = bytearray(random.Random(2).randbytes(40 * MIB + 1))
    try:
        (mnt / "big.bin").write_bytes(big)  # its upload takes the only slot for a while
        with open(mnt / "streamed.bin", "wb") as f:  # parts go while it is written
            for offset in range(0, len(streamed), MIB):
                f.write(streamed[offset : offset + MIB])
        with open(mnt / "streamed.bin", "r+b") as f:  # reopened at once: the spill file is forked
            f.seek(len(streamed) - 1)
            f.write(b"A")
            streamed[-1:] = b"A"
            others = []
            for k in range(4):  # new spill files, which may take the closed descriptor's number
                other = open(mnt / f"other{k}.bin", "wb")  # noqa: SIM115
                other.truncate(16 * MIB)
                other.write(b"C" * MIB)
                others.append(other)
            for other in others:
                other.close()

        def uploaded(key: str, data: bytes) -> bool:
            try:
                return s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
            except s3.exceptions.NoSuchKey:
                return False

        assert wait_until(lambda: uploaded("streamed.bin", bytes(streamed)), 120)
        assert wait_until(lambda: uploaded("big.bin", big), 120)
        assert (mnt / "streamed.bin").read_bytes() == streamed
    finally:
        for key in ("big.bin", "streamed.bin", *(f"other{k}.bin" for k in range(4))):
            s3.delete_object(Bucket=bucket, Key=key)  # moto keeps objects for the whole session
    # teardown: no traceback in the daemon's log ("sending part N failed")
