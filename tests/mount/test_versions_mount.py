"""Old versions through a real mount: ``.versions/``, recovery with cp, and ``--at`` time travel.

Everything is done with shell tools on the mount against moto (versioning switched on
through ``.s3/versioning``); boto3 is the ground truth. moto dates versions to the
second, so the writes are a little over a second apart.
"""

from __future__ import annotations

import datetime
import errno
import os
import re
import stat
import time
from pathlib import Path

import pytest
from conftest import run

VERSION = re.compile(r"^(\d{8}T\d{6}Z)_(.+?)(\.deleted)?$")


def write_versions(mnt: Path) -> list[datetime.datetime]:
    """v1, v2, v3 of docs/a.txt through the mount (shell redirections), then rm; the instant after each."""
    run(["sh", "-c", f'echo \'{{"Status": "Enabled"}}\' > {mnt}/.s3/versioning'])
    (mnt / "docs").mkdir()
    instants = []
    for text in ("v1", "v2", "v3"):
        run(["sh", "-c", f"echo {text} > {mnt}/docs/a.txt"])
        time.sleep(1.1)
        instants.append(datetime.datetime.now(datetime.UTC))
        time.sleep(1.1)
    run(["rm", f"{mnt}/docs/a.txt"])
    return instants


def test_history_recover_and_time_travel(s3, bucket, mount):
    mnt = Path(mount(bucket, "--dir-ttl", "0", "--attr-ttl", "0", "--negative-ttl", "0"))
    instants = write_versions(mnt)

    names = run(["ls", f"{mnt}/.versions/docs/a.txt/"]).stdout.decode().split()
    matches = [VERSION.match(name) for name in names]
    assert all(matches), names
    assert [bool(m.group(3)) for m in matches] == [False, False, False, True]  # 3 versions, then the delete
    assert [m.group(1) for m in matches] == sorted(m.group(1) for m in matches)  # ls order is time order
    history = mnt / ".versions" / "docs" / "a.txt"
    assert [(history / n).read_bytes() for n in names[:3]] == [b"v1\n", b"v2\n", b"v3\n"]
    marker = history / names[3]
    assert marker.stat().st_size == 0 and stat.S_IMODE(marker.stat().st_mode) == 0
    assert not (history / "latest").exists()  # deleted now
    assert os.getxattr(history / names[0], "s3.version_id").decode() == matches[0].group(2)
    assert os.getxattr(history / names[2], "s3.is_latest") == b"0"

    # Recover v1 with cp: an undelete.
    run(["cp", str(history / names[0]), f"{mnt}/docs/a.txt"])
    assert s3.get_object(Bucket=bucket, Key="docs/a.txt")["Body"].read() == b"v1\n"
    target = os.readlink(history / "latest")  # the version cp just made
    assert target not in names and VERSION.match(target) and not target.endswith(".deleted")
    assert (history / "latest").read_bytes() == b"v1\n"

    # A time-travel view inside the mount, and a whole mount at an instant.
    view = mnt / ".versions" / f"@{instants[1].strftime('%Y-%m-%dT%H:%M:%SZ')}"
    assert (view / "docs" / "a.txt").read_bytes() == b"v2\n"
    at = Path(mount(bucket, "--at", instants[0].isoformat()))
    assert (at / "docs" / "a.txt").read_bytes() == b"v1\n"
    assert os.listdir(at / "docs") == ["a.txt"]


def test_versions_are_read_only_and_hidden(s3, bucket, mount):
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=bucket, Key="f", Body=b"one")
    mnt = Path(mount(bucket))
    assert os.listdir(mnt) == ["f"]
    [name, latest] = sorted(os.listdir(mnt / ".versions" / "f"))
    assert latest == "latest"
    version = mnt / ".versions" / "f" / name
    for action in (
        lambda: version.write_bytes(b"x"),
        version.unlink,
        lambda: (mnt / ".versions" / "new").mkdir(),
        lambda: os.setxattr(version, "user.x", b"1"),
        lambda: version.chmod(0o600),
    ):
        with pytest.raises(OSError) as info:
            action()
        assert info.value.errno == errno.EROFS
    at = Path(mount(bucket, "--at", "2000-01-01T00:00:00Z"))
    assert os.listdir(at) == []
    with pytest.raises(OSError) as info:
        (at / "new").write_bytes(b"x")
    assert info.value.errno == errno.EROFS
