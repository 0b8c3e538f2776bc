"""Installing and mounting the way a system does: a built wheel, ``mount -t fuse.s3fuse``, an fstab line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    EXIT_TIMEOUT,
    ROOT,
    TRACEBACK,
    base_env,
    daemon_pids,
    is_mounted,
    mount_fstype,
    pid_alive,
    run,
    wait_until,
)

# mount.fuse3 runs the file system's program with PATH reset to the standard one
STANDARD_PATH_ENTRY = Path("/usr/local/bin/s3fuse")
OURS = Path(sys.prefix) / "bin" / "s3fuse"


@pytest.fixture
def s3fuse_on_standard_path() -> Iterator[None]:
    """/usr/local/bin/s3fuse as the installation docs/quickstart.md describes (scripts/setup makes it)."""
    if STANDARD_PATH_ENTRY.resolve() == OURS.resolve():
        yield
        return
    # another s3fuse (another checkout's, or an installed one) steps aside for the test
    aside = STANDARD_PATH_ENTRY.with_name(".s3fuse-aside-during-tests")
    had_other = STANDARD_PATH_ENTRY.exists() or STANDARD_PATH_ENTRY.is_symlink()
    if had_other:
        STANDARD_PATH_ENTRY.rename(aside)
    STANDARD_PATH_ENTRY.symlink_to(OURS)
    try:
        yield
    finally:
        STANDARD_PATH_ENTRY.unlink()
        if had_other:
            aside.rename(STANDARD_PATH_ENTRY)


def system_mount(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["mount", *args], capture_output=True, text=True, timeout=60, env=base_env(HOME=str(tmp_path))
    )


def unmount_and_wait(mnt: Path, log: Path) -> None:
    """umount(8), as root; the detached daemon must then exit cleanly on its own."""
    pids = daemon_pids(mnt)
    assert pids, "no daemon names the mount point"
    res = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert not is_mounted(mnt)
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), EXIT_TIMEOUT), "the daemon outlived umount"
    text = log.read_text()
    assert f"unmounted {mnt}" in text and TRACEBACK not in text, text


def test_mount_t_fuse_s3fuse(s3, bucket, moto, tmp_path, s3fuse_on_standard_path):
    s3.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello from mount -t\n")
    mnt, log = tmp_path / "mnt", tmp_path / "s3fuse.log"
    mnt.mkdir()
    res = system_mount(
        "-t", "fuse.s3fuse", bucket, str(mnt), "-o",
        f"endpoint_url={moto.url},log_file={log},allow_other,fsname=backup-{bucket},default_permissions",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert is_mounted(mnt) and mount_fstype(mnt) == "fuse.s3fuse"
    assert (mnt / "hello.txt").read_bytes() == b"hello from mount -t\n"
    (mnt / "written.txt").write_bytes(b"and back\n")
    assert s3.get_object(Bucket=bucket, Key="written.txt")["Body"].read() == b"and back\n"
    with open("/proc/self/mounts") as mounts:
        source, _, _, options = next(line.split()[:4] for line in mounts if line.split()[1] == str(mnt))
    assert "allow_other" in options.split(",")
    assert source == f"backup-{bucket}"  # what test tools and df identify the file system by
    unmount_and_wait(mnt, log)


def test_fstab_line(s3, bucket, moto, tmp_path, s3fuse_on_standard_path):
    """The line docs/quickstart.md gives for /etc/fstab, mounted by its mount point as systemd would."""
    s3.put_object(Bucket=bucket, Key="logs/today.txt", Body=b"from fstab\n")
    mnt, log, cache = tmp_path / "mnt", tmp_path / "s3fuse.log", tmp_path / "cache"
    mnt.mkdir()
    fstab = tmp_path / "fstab"
    options = f"_netdev,noauto,nofail,x-systemd.automount,endpoint_url={moto.url},cache_dir={cache},log_file={log},ro"
    fstab.write_text(f"# s3fuse test\n{bucket}:logs {mnt} fuse.s3fuse {options} 0 0\n")
    res = system_mount("--fstab", str(fstab), str(mnt), tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    assert os.listdir(mnt) == ["today.txt"]  # the prefix is the root
    assert (mnt / "today.txt").read_bytes() == b"from fstab\n"
    with pytest.raises(OSError):
        (mnt / "new.txt").write_bytes(b"read-only")
    unmount_and_wait(mnt, log)


@pytest.mark.slow
def test_wheel_installs_a_working_command(tmp_path):
    """A wheel built from the checkout holds the whole package and its command."""
    # From a copy of what the build reads: a build/ left in the checkout by an earlier build
    # would add the modules it held then.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "s3fuse", source / "s3fuse", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        timeout=300)  # fmt: skip
    (wheel,) = wheels.glob("s3fuse-*.whl")
    target = tmp_path / "site"
    run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], timeout=300)
    shipped = {p.relative_to(target).as_posix() for p in (target / "s3fuse").rglob("*.py")}
    assert shipped == {p.relative_to(ROOT).as_posix() for p in (ROOT / "s3fuse").rglob("*.py")}
    assert "s3fuse/write/writeback.py" in shipped  # the subpackages too
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = tmp_path / "out"
    out.mkdir()
    for cmd in ([str(target / "bin" / "s3fuse"), "--help"], [sys.executable, "-m", "s3fuse", "--help"]):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=out)
        assert res.returncode == 0, res.stderr
        assert "usage: s3fuse" in res.stdout and "s3fuse stats MOUNTPOINT" in res.stdout
    # the command came from the wheel, not the checkout
    res = subprocess.run([sys.executable, "-c", "import s3fuse; print(s3fuse.__file__)"], capture_output=True,
                         text=True, env=env, cwd=out)  # fmt: skip
    assert res.stdout.startswith(str(target)), res.stdout
    assert shutil.which("s3fuse", path=str(target / "bin"))
