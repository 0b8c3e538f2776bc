"""The model-based test through a real mount: tests/model.py's machines, their calls made
by os calls on a directory of the mount (``OsClient``), so that the kernel (page cache,
writeback cache, its own checks) is between them and s3fuse.

tests/inprocess/test_model.py runs the same machines without the kernel, many times
faster; the steps per second of both are in its docstring.
"""

from __future__ import annotations

import hypothesis.internal.conjecture.engine
import pytest
from conftest import is_mounted
from model import OsClient, machines, run_model


class MountPoint(OsClient):
    def within(self, directory: str) -> OsClient:
        # Each example starts here: on a mount that is gone, its calls would go to the bare directory.
        assert is_mounted(self.root), "the mount is gone"
        return super().within(directory)


@pytest.mark.parametrize(("machine", "examples", "args"), machines())
def test_model(mount, s3, bucket, tmp_path, monkeypatch, machine, examples, args):
    # Shrinking a failure replays many sequences, each through the mount: cap it, so that a
    # failing run ends (with the smallest sequence found so far) before conftest's watchdog
    # (180 s per test) kills the daemon. A private knob of hypothesis; harmless if it goes.
    monkeypatch.setattr(hypothesis.internal.conjecture.engine, "MAX_SHRINKING_SECONDS", 60, raising=False)
    mnt = mount(bucket, *args)
    model = tmp_path / "model"
    model.mkdir()
    run_model(machine, MountPoint(mnt), model, s3, bucket, examples)
    mount.check(mnt)
