"""Crash battery over every kind of change: SIGKILL the daemon at a random moment of the mixed
workload of tests/crashload.py (create, overwrite, append, truncate, chmod, chown, utimens,
symlink, mkdir, renames of files and of a directory of 200 keys, unlink, rmdir), recover
what a write-back mount journaled, remount, and check the tree through the new mount against
the model of what the writer was told was done."""

from __future__ import annotations

import collections
import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import crashload
import pytest
from conftest import fusermount_u, keys_of, put_objects, wait_until
from faultproxy import Rule

from mount.test_crash import kill_while_working, recover_after_kill

# CI: 2 a mode (8-20 s a point); by hand (scripts/crash-battery): 200 or more
CRASH_POINTS = int(os.environ.get("S3FUSE_CRASH_POINTS", "2"))
WRITER = Path(crashload.__file__)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "write-back"])
def test_sigkill_in_a_mixed_workload_loses_no_acknowledged_change(s3, bucket, mount, tmp_path, mode):
    args = ("--write-back",) if mode == "write-back" else ()
    cache = tmp_path / "xdg"
    rng = random.Random(20261207)
    cut_short: collections.Counter[str] = collections.Counter()  # the kinds of change the kills cut
    half_done = []
    changes_done = 0
    for point in range(CRASH_POINTS):
        prefix = f"p{point:03d}/"
        put_objects(s3, bucket, {prefix + key: data for key, data in crashload.seeded().items()})
        mnt = mount(bucket, *args)
        log = tmp_path / f"changes-{point}.jsonl"
        writer = subprocess.Popen([sys.executable, str(WRITER), str(mnt / prefix), str(log), str(point)])
        kill_while_working(mount, mnt, writer, rng.uniform(0.2, 3.0))
        again = recover_after_kill(mount, bucket, args, cache, point) or mount(bucket, *args)

        model, pending = crashload.Model.of_log(point, log)
        actual = crashload.observed(again / prefix)
        found = crashload.problems(actual, model, pending)
        assert not found, f"crash point {point}, cut short: {pending}\n" + "\n".join(found)
        changes_done += sum(1 for line in log.read_text().splitlines() if '"done"' in line)
        print(f"crash point {point}: cut short {pending and pending[1]}")  # a long run's progress, with -s
        if pending is not None:
            cut_short[pending[1][0]] += 1
            if crashload.half_done(actual, pending):
                half_done.append(f"point {point}: {pending[1]}")
        mount.check(again)

    print(f"{CRASH_POINTS} crash points, {changes_done} changes done; cut short: {dict(cut_short)}")
    print(f"renames seen at both names after the crash: {len(half_done)}", *half_done, sep="\n  ")
    assert changes_done > CRASH_POINTS  # the kills came after work was done, not only before


def test_attributes_of_a_renamed_directory_survive_a_kill_right_after(bucket, mount):
    """The moved entries reach the new directory's attribute index only seconds after ``mv``
    returned (batched): a kill meanwhile must not leave the next mount showing a symlink as a file
    and a chmod undone, which it did while the new directory had no index object to make it HEAD
    what the index did not vouch for."""
    mnt = mount(bucket)
    (mnt / "d").mkdir()
    (mnt / "d" / "f").write_bytes(b"data")
    (mnt / "d" / "f").chmod(0o700)
    (mnt / "d" / "l").symlink_to("target")
    time.sleep(3)  # the index of d has its entries
    (mnt / "d").rename(mnt / "e")
    mount.kill(mnt)
    fusermount_u(mnt)
    again = mount(bucket)
    assert stat.S_IMODE((again / "e" / "f").stat().st_mode) == 0o700
    assert os.readlink(again / "e" / "l") == "target"
    mount.check(again)


def test_a_directory_rename_cut_short_is_finished_by_the_next_mount(s3, bucket, mount, faulty):
    """A kill in the middle of `mv d e` (half its keys copied, copies stalled) leaves the keys split
    between the names; the next mount with the same cache dir reports it and moves the rest, before
    it serves anything: every key under e/ with its bytes, none under d/."""
    put_objects(s3, bucket, {f"d/k{i:03d}": f"key {i}\n".encode() for i in range(60)})
    mnt = mount(bucket, "--endpoint-url", faulty.url, endpoint=False)
    faulty.add(Rule("stall", method="PUT", header="x-amz-copy-source", p=0.5, seconds=60))
    mv = subprocess.Popen(["mv", str(mnt / "d"), str(mnt / "e")], stderr=subprocess.DEVNULL)
    assert wait_until(lambda: len(keys_of(s3, bucket, "e/")) >= 10, 30)
    mount.kill(mnt)
    mv.wait(30)
    fusermount_u(mnt)
    faulty.clear()
    assert keys_of(s3, bucket, "d/")  # split between the two names
    again = mount(bucket)
    assert "the rename of 'd' to 'e' was cut short" in mount.log_text(again)
    assert not (again / "d").exists()
    assert sorted(os.listdir(again / "e")) == [f"k{i:03d}" for i in range(60)]
    assert (again / "e" / "k042").read_bytes() == b"key 42\n"
    assert keys_of(s3, bucket, "d/") == {}
    mount.check(again)
