"""No stalls: a seeded random load of 4 processes on one mount (tests/randomload.py).

Sparse writes far past the end, truncates, O_DIRECT, mmap and splice writes, renames,
creates and unlinks in shared directories, and one sparse file all of them write. The
tree must then equal a local model, also after a remount, and the run must end in a
bounded time. ``scripts/randomload`` runs the same load longer, by hand.
"""

from __future__ import annotations

import time

from conftest import keys_of
from randomload import Load, compare_trees, run_load


def test_a_random_load_of_four_processes_finishes_and_matches_a_local_tree(s3, bucket, mount, tmp_path):
    load = Load(seed=7, workers=4, ops=50, max_offset=32 << 20)
    model = tmp_path / "model"
    model.mkdir()
    mnt = mount(bucket)
    started = time.monotonic()
    try:
        # A stall detector, not a speed check: 20-26 s on an idle machine, 93 s under a load of 16
        slow = run_load(load, mnt, model, timeout=150)
        took = time.monotonic() - started
        compare_trees(mnt, model)
        mount.check(mnt)
        compare_trees(mount(bucket, "--posix-metadata"), model)  # modes from HEAD: listings have none
        print(f"{load}: {took:.1f} s; slow operations: {slow}")
    finally:
        for key in keys_of(s3, bucket, internal=True):  # moto keeps objects for the whole session
            s3.delete_object(Bucket=bucket, Key=key)
