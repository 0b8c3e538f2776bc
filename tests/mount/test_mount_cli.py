"""The s3fuse command: start-up errors, detaching, signals, -o options, prefixes, demo, logs."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys

import pytest
from conftest import (
    EXIT_TIMEOUT,
    ROOT,
    TRACEBACK,
    MotoServer,
    base_env,
    boto_client,
    free_port,
    is_mounted,
    mount_fstype,
    pid_alive,
    put_objects,
    run,
    unique_bucket_name,
    wait_until,
)

import s3fuse

START_TIMEOUT = 15  # a failing start-up must end within this, not hang


def s3fuse_cmd(*args: str, tmp_path, env: dict | None = None, timeout: float = START_TIMEOUT):
    """Run the s3fuse command (detaching unless told otherwise) and return its CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "s3fuse", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        env=base_env(XDG_CACHE_HOME=str(tmp_path / "xdg"), **(env or {})),
    )


def one_error_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert TRACEBACK not in res.stderr
    return lines[0]


# ---------------------------------------------------------------- start-up failures


@pytest.mark.parametrize("foreground", [False, True], ids=["detached", "foreground"])
def test_missing_bucket(moto, tmp_path, daemons_of, foreground):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    name = unique_bucket_name("no-such-bucket")
    args = [name, str(mnt), "--endpoint-url", moto.url, *(["--foreground"] if foreground else [])]
    line = one_error_line(s3fuse_cmd(*args, tmp_path=tmp_path))
    assert line.startswith("s3fuse: ")
    assert repr(name) in line and "does not exist" in line
    assert not is_mounted(mnt)
    assert daemons_of(mnt) == []


def test_unreachable_endpoint(bucket, tmp_path, daemons_of):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    line = one_error_line(s3fuse_cmd(bucket, str(mnt), "--endpoint-url", url, tmp_path=tmp_path))
    assert url in line and "cannot connect" in line
    assert not is_mounted(mnt)
    assert daemons_of(mnt) == []


def test_wrong_credentials(tmp_path, daemons_of):
    # moto checks access keys once INITIAL_NO_AUTH_ACTION_COUNT actions have been made:
    # the first one (creating the bucket) is free, every later one needs a known key.
    server = MotoServer(tmp_path, env={"INITIAL_NO_AUTH_ACTION_COUNT": "1"})
    try:
        name = unique_bucket_name("auth")
        boto_client(server.url).create_bucket(Bucket=name)
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        res = s3fuse_cmd(
            name,
            str(mnt),
            "--endpoint-url",
            server.url,
            tmp_path=tmp_path,
            env={"AWS_ACCESS_KEY_ID": "AKIAUNKNOWNKEY000000"},
        )
        line = one_error_line(res)
        assert repr(name) in line and "denied" in line and "credentials" in line
        assert not is_mounted(mnt)
        assert daemons_of(mnt) == []
    finally:
        server.stop()


def test_mount_point_problems(bucket, moto, mount, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    res = s3fuse_cmd(bucket, str(not_a_dir), "--endpoint-url", moto.url, tmp_path=tmp_path)
    assert "is not a directory" in one_error_line(res)
    res = s3fuse_cmd(bucket, str(tmp_path / "nowhere"), "--endpoint-url", moto.url, tmp_path=tmp_path)
    assert "is not a directory" in one_error_line(res)

    mnt = mount(bucket)
    res = s3fuse_cmd(bucket, str(mnt), "--endpoint-url", moto.url, tmp_path=tmp_path)
    assert "already a mount point" in one_error_line(res)
    assert is_mounted(mnt)  # the first mount is untouched
    assert os.listdir(mnt) == []


# ---------------------------------------------------------------- detaching and stopping


def test_detached_mount_and_fusermount(s3, bucket, moto, tmp_path, daemons_of):
    s3.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = s3fuse_cmd(bucket, str(mnt), "--endpoint-url", moto.url, tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert is_mounted(mnt)  # mounted by the time the command returns
    assert mount_fstype(mnt) == "fuse.s3fuse"
    (pid,) = daemons_of(mnt)
    assert (mnt / "hello.txt").read_bytes() == b"hello\n"

    run(["fusermount3", "-u", str(mnt)])
    assert wait_until(lambda: not pid_alive(pid), EXIT_TIMEOUT), "the daemon outlived its mount"
    assert not is_mounted(mnt)
    log = (tmp_path / "xdg/s3fuse/s3fuse.log").read_text()  # the default log of a detached mount
    assert f"mounted s3://{bucket}/" in log and f"unmounted {mnt}" in log
    assert TRACEBACK not in log


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_signal_unmounts_cleanly(s3, bucket, mount, signum):
    s3.put_object(Bucket=bucket, Key="f", Body=b"data")
    mnt = mount(bucket)
    assert (mnt / "f").read_bytes() == b"data"
    proc = mount.get(mnt).proc
    proc.send_signal(signum)
    assert proc.wait(EXIT_TIMEOUT) == 0
    assert not is_mounted(mnt)
    log = mount.log_text(mnt)
    assert f"received {signum.name}; saving open files and unmounting" in log
    assert TRACEBACK not in log


def test_signal_while_reading(s3, bucket, mount):
    """SIGTERM while a file is open and being read: the daemon still exits cleanly."""
    s3.put_object(Bucket=bucket, Key="f", Body=os.urandom(3 << 20))
    mnt = mount(bucket, "--block-size", "1M")
    fd = os.open(mnt / "f", os.O_RDONLY)
    try:
        assert len(os.read(fd, 100_000)) == 100_000
        proc = mount.get(mnt).proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(EXIT_TIMEOUT) == 0
        assert not is_mounted(mnt)
    finally:
        with contextlib.suppress(OSError):  # ENOTCONN: the file system is gone
            os.close(fd)


# ---------------------------------------------------------------- options


def test_fstab_style_options(s3, bucket, moto, mount):
    s3.put_object(Bucket=bucket, Key="d/f.txt", Body=b"via -o\n")
    mnt = mount(
        bucket, "-o", f"ro,attr_ttl=5,endpoint_url={moto.url},noatime,nodev,x-systemd.automount", endpoint=False
    )
    assert (mnt / "d/f.txt").read_bytes() == b"via -o\n"
    with open("/proc/self/mounts") as f:
        (line,) = [entry for entry in f if entry.split()[1] == str(mnt)]
    assert "ro" in line.split()[3].split(",")
    with pytest.raises(OSError):
        os.mkdir(mnt / "new")

    mnt2 = mount(bucket, f"-oendpoint_url={moto.url}", "-o", "block_size=1M", "-o", "read_only", endpoint=False)
    assert (mnt2 / "d/f.txt").read_bytes() == b"via -o\n"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("bogus", "unknown mount option: -o bogus"),
        ("ro,attr_tll=5", "unknown mount option: -o attr_tll=5"),
        ("block_size=12", "--block-size must be at least 64K"),
        ("block_size=lots", "not a size: 'lots'"),
    ],
)
def test_bad_options(bucket, moto, tmp_path, option, message):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = s3fuse_cmd(bucket, str(mnt), "--endpoint-url", moto.url, "-o", option, tmp_path=tmp_path)
    assert res.returncode == 2
    assert message in res.stderr
    assert res.stderr.startswith("usage: s3fuse")
    assert not is_mounted(mnt)


def test_endpoint_without_a_scheme(bucket, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = s3fuse_cmd(bucket, str(mnt), "--endpoint-url", "minio.local:9000", tmp_path=tmp_path)
    assert one_error_line(res).startswith("s3fuse: invalid S3 endpoint 'minio.local:9000': ")
    assert not is_mounted(mnt)


def test_version_and_help(tmp_path):
    res = s3fuse_cmd("--version", tmp_path=tmp_path)
    assert res.returncode == 0
    assert res.stdout.strip() == f"s3fuse {s3fuse.__version__}"
    res = s3fuse_cmd("--help", tmp_path=tmp_path)
    assert res.returncode == 0
    assert res.stdout.startswith("usage: s3fuse")
    for text in ("BUCKET[:PREFIX]", "MOUNTPOINT", "--endpoint-url", "--block-size", "--attr-ttl", "-o", "s3fuse demo"):
        assert text in res.stdout, text
    res = s3fuse_cmd(tmp_path=tmp_path)
    assert res.returncode == 2 and "usage: s3fuse" in res.stderr


@pytest.mark.parametrize("spec", ["inside", "inside/", "/inside/", "inside//"])
def test_bucket_prefix(s3, bucket, mount, spec):
    put_objects(
        s3,
        bucket,
        {
            "inside/": b"",
            "inside/a.txt": b"a\n",
            "inside/sub/b.txt": b"b\n",
            "inside-not/c.txt": b"c\n",
            "insideX": b"x\n",
            "outside.txt": b"o\n",
        },
    )
    mnt = mount(f"{bucket}:{spec}")
    found = run(["find", str(mnt), "-mindepth", "1", "-printf", r"%P\n"], text=True).stdout.split()
    assert sorted(found) == ["a.txt", "sub", "sub/b.txt"]
    assert (mnt / "a.txt").read_bytes() == b"a\n"
    assert (mnt / "sub/b.txt").read_bytes() == b"b\n"
    for outside in ("outside.txt", "inside", "inside-not", "insideX", "c.txt"):
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / outside)


def test_nested_prefix_of_a_marker_only_directory(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="deep/er/", Body=b"")
    s3.put_object(Bucket=bucket, Key="deep/er/f", Body=b"f")
    mnt = mount(f"{bucket}:deep/er")
    assert os.listdir(mnt) == ["f"]


# ---------------------------------------------------------------- demo


def test_demo(tmp_path, daemons_of):
    mnt = tmp_path / "demo"
    mnt.mkdir()
    res = s3fuse_cmd("demo", str(mnt), tmp_path=tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr
    assert is_mounted(mnt)
    (pid,) = daemons_of(mnt)
    assert run(["cat", str(mnt / "hello.txt")]).stdout == b"Hello from S3!\n"
    assert sorted(os.listdir(mnt)) == ["README.txt", "data", "docs", "hello.txt"]
    assert os.listdir(mnt / "docs/empty-dir") == []
    assert os.stat(mnt / "data/random.bin").st_size == 4 << 20
    assert run(["md5sum", str(mnt / "data/random.bin")]).returncode == 0
    run(["fusermount3", "-u", str(mnt)])
    assert wait_until(lambda: not pid_alive(pid), EXIT_TIMEOUT)
    assert not is_mounted(mnt)
    assert TRACEBACK not in (tmp_path / "xdg/s3fuse/s3fuse.log").read_text()


def test_bucket_named_demo(s3, mount):
    """'s3fuse demo MNT' is the demo subcommand; a real bucket named demo is mounted as 'demo:'."""
    if "demo" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket="demo")
    s3.put_object(Bucket="demo", Key="mine.txt", Body=b"my own demo bucket\n")
    mnt = mount("demo:")
    assert (mnt / "mine.txt").read_bytes() == b"my own demo bucket\n"
    assert not (mnt / "hello.txt").exists()


def test_demo_usage(tmp_path):
    res = s3fuse_cmd("demo", tmp_path=tmp_path)
    assert res.returncode == 2 and "usage: s3fuse demo MOUNTPOINT" in res.stderr


# ---------------------------------------------------------------- logs


def test_secret_never_logged(s3, bucket, mount):
    secret = secrets.token_urlsafe(30)[:40]
    assert len(secret) == 40
    put_objects(s3, bucket, {f"d/f{i}": b"x" * i for i in range(5)})
    token = secrets.token_urlsafe(60)  # sent as X-Amz-Security-Token, which botocore's debug lines show
    mnt = mount(bucket, "--log-level", "debug", env={"AWS_SECRET_ACCESS_KEY": secret, "AWS_SESSION_TOKEN": token})
    run(["ls", "-lR", str(mnt)])
    run(["cat", *(str(mnt / f"d/f{i}") for i in range(5))])
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "missing")
    mount.check(mnt)
    log = mount.log_text(mnt)
    assert "DEBUG" in log and "botocore" in log  # debug logging really was on
    assert "X-Amz-Security-Token" in log  # the start-up checks' requests were logged, with the header
    for hidden in (secret, token):
        assert hidden not in log
        assert hidden not in mount.get(mnt).output_text()


def test_log_to_syslog(s3, bucket, mount):
    """--log-file syslog: the lines reach /dev/log (a stand-in syslog daemon here, if the machine has none)."""
    if os.path.exists("/dev/log"):
        pytest.skip("this machine's syslog owns /dev/log; the lines cannot be read back")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind("/dev/log")
        try:
            syslog.settimeout(10)
            mnt = mount(bucket, "--log-file", "syslog")
            mount.check(mnt)
            lines = []
            with contextlib.suppress(TimeoutError):
                while not any(b"unmounted" in line for line in lines):
                    lines.append(syslog.recv(65536))
        finally:
            os.unlink("/dev/log")
    # <priority> = facility daemon (3) * 8 + info (6)
    assert any(line.startswith(b"<30>s3fuse[") and f"mounted s3://{bucket}/".encode() in line for line in lines)
    assert any(f"unmounted {mnt}".encode() in line for line in lines)


def test_syslog_missing(bucket, moto, tmp_path):
    if os.path.exists("/dev/log"):
        pytest.skip("this machine has a syslog")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = s3fuse_cmd(bucket, str(mnt), "--endpoint-url", moto.url, "--log-file", "syslog", tmp_path=tmp_path)
    assert one_error_line(res) == ("s3fuse: cannot log to syslog: /dev/log is not there (no syslog daemon or journald)")
