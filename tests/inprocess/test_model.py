"""The model-based test in-process: tests/model.py's machines, their calls made on
FuseOperations' handlers through ``InProcess`` (tests/inprocess/client.py), no kernel.

The rules are the mounted test's (tests/mount/test_model.py), unchanged; the
difference is that S3 is compared with the model at the end of each example instead of
after every step, which buys three times the examples in about the time of the mounted
test. Steps per second (steps: rules and initial populations, counted after each; the
test prints them with ``pytest -s``), measured on the shared 2-core development
machine under a load of 4 to 6, the two modules in one run:

    machine                mounted (S3 each step)    in-process (S3 each example)
    everything             63  (3044 steps, 48 s)     170  (8667 steps, 51 s)
    open-files             60  (2059 steps, 34 s)     165  (6211 steps, 38 s)
    xattrs                 51  (1354 steps, 27 s)     114  (4346 steps, 38 s)
    everything-short-ttls  55  (1180 steps, 22 s)     157  (3092 steps, 20 s)

Not the ten times the architecture issue hoped for: the kernel costs the mounted test
next to nothing. With the same settings (everything, 80 examples; other runs, under a
load of 6 to 8) the two run about as fast: mounted 44 and in-process 53 steps/s with S3
compared after each step (a ListObjects, which with moto's answer is most of a step),
208 and 174 with S3 compared per example. The mounted daemon works on the other core,
while in-process s3fuse shares one interpreter lock with hypothesis and boto3. What
the in-process layer adds is the handlers alone: no page cache or writeback cache to
hide a wrong answer, and a failure's traceback in the test.

No rule is left to the mounted test alone. Where the kernel answers before s3fuse
does, InProcess answers as the kernel would (the path walk, O_CREAT and O_EXCL, EISDIR
for a directory opened for writing, EBADF and EINVAL for the access mode, the offset of
an O_APPEND write, rename's and link's own checks), so the rules that name the kernel's
checks (rename_exchange, link) hold here too; a mismatch there is a bug of InProcess,
not of s3fuse. The tests run as root, so the permission checks of default_permissions
refuse nothing in either. What only the kernel does (page cache, writeback cache) is
what the mounted test adds.
"""

from __future__ import annotations

import pytest
import trio
from model import machines, run_model

from inprocess.client import Blocking

MORE_EXAMPLES = 3  # than tests/mount/test_model.py


@pytest.mark.trio
@pytest.mark.parametrize(("machine", "examples", "args"), machines(MORE_EXAMPLES))
async def test_model(filesystem, s3, bucket, tmp_path, machine, examples, args):
    model = tmp_path / "model"
    model.mkdir()
    async with filesystem(*args) as fs:
        client = Blocking(fs, trio.lowlevel.current_trio_token())
        # The machine is not async: it runs in a thread, each call back in this trio loop.
        # S3 is compared with the model at the end of each example, not after each step: a
        # ListObjects per step would be most of a step's time (of the mounted test's too).
        await trio.to_thread.run_sync(run_model, machine, client, model, s3, bucket, examples, False)
