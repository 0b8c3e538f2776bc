"""Crash battery over every kind of change: SIGKILL the daemon at a random moment, remount, and
check what the next mount shows."""

from __future__ import annotations

import os
import stat
import time

from conftest import fusermount_u


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
