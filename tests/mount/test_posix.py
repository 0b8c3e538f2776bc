"""POSIX completeness on a real mount: special files, times, name lengths, link counts, hard links.

Special files and times are stored as s3fs-fuse stores them (an empty object whose
x-amz-meta-mode has the file type; x-amz-meta-mtime and -atime as seconds with nine
decimals when they have any), plus x-amz-meta-rdev for a device's number, and must
come back exactly after a remount. boto3 is the ground truth of what is stored.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import tarfile
import threading
import time
from pathlib import Path

from conftest import boto_client, held_changes_saved, run, wait_until

NS = 1_000_000_000
# Times utimensat(2) takes: before 1970, past 2038 (64-bit seconds), with nanoseconds.
PAST_NS = -86_400 * NS - 250_000_000  # 1969-12-30 23:59:59.75
FUTURE_NS = 4_102_444_800 * NS + 123_456_789  # 2100-01-01 00:00:00.123456789
RECENT_NS = 1_700_000_000 * NS + 987_654_321
NAME_MAX = 255


def meta_of(client, bucket: str, key: str) -> dict[str, str]:
    return client.head_object(Bucket=bucket, Key=key)["Metadata"]


def errno_of(call, *args, **kwargs) -> int | None:
    try:
        call(*args, **kwargs)
    except OSError as exc:
        return exc.errno
    return None


def make_special_files(mnt: Path) -> None:
    """A FIFO, a character and a block device, and a socket bound by a program."""
    os.mkfifo(mnt / "fifo", 0o640)
    os.mknod(mnt / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(mnt / "disk", stat.S_IFBLK | 0o660, os.makedev(259, 65_537))  # a minor above 255
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(mnt / "sock"))


def check_special_files(mnt: Path) -> None:
    kinds = {name: stat.S_IFMT(os.lstat(mnt / name).st_mode) for name in ("fifo", "null", "disk", "sock")}
    assert kinds == {"fifo": stat.S_IFIFO, "null": stat.S_IFCHR, "disk": stat.S_IFBLK, "sock": stat.S_IFSOCK}
    assert stat.S_IMODE(os.lstat(mnt / "fifo").st_mode) == 0o640
    assert os.lstat(mnt / "null").st_rdev == os.makedev(1, 3)
    assert os.lstat(mnt / "disk").st_rdev == os.makedev(259, 65_537)
    assert os.lstat(mnt / "fifo").st_rdev == 0


def check_special_objects(client, bucket: str, prefix: str = "") -> None:
    """What s3fs-fuse writes for mknod: an empty object, the type in x-amz-meta-mode."""
    for name, kind in (("fifo", stat.S_IFIFO), ("null", stat.S_IFCHR), ("disk", stat.S_IFBLK), ("sock", stat.S_IFSOCK)):
        head = client.head_object(Bucket=bucket, Key=prefix + name)
        assert head["ContentLength"] == 0
        assert stat.S_IFMT(int(head["Metadata"]["mode"])) == kind, name
        assert ("rdev" in head["Metadata"]) == (kind in (stat.S_IFCHR, stat.S_IFBLK)), name
    assert meta_of(client, bucket, prefix + "null")["rdev"] == str(os.makedev(1, 3))


def pipe_through(fifo: Path, data: bytes) -> bytes:
    """Write data into a FIFO from a thread while this one reads it: the kernel does the piping."""
    writer = threading.Thread(target=fifo.write_bytes, args=(data,))
    writer.start()
    try:
        return fifo.read_bytes()
    finally:
        writer.join(10)


# ---------------------------------------------------------------- special files


def test_special_files_are_stored_as_s3fs_fuse_does_and_survive_a_remount(s3, bucket, mount):
    mnt = mount(bucket)
    make_special_files(mnt)
    check_special_files(mnt)
    check_special_objects(s3, bucket)
    assert sorted(os.listdir(mnt)) == ["disk", "fifo", "null", "sock"]
    assert pipe_through(mnt / "fifo", b"through the kernel\n") == b"through the kernel\n"
    # FUSE mounts are nodev: the kernel refuses to open a device node, s3fuse is not asked
    assert errno_of(os.open, mnt / "null", os.O_RDONLY) == errno.EACCES

    os.chmod(mnt / "fifo", 0o600)
    os.chown(mnt / "null", 1234, 5678)
    os.utime(mnt / "disk", ns=(RECENT_NS, RECENT_NS))
    os.rename(mnt / "fifo", mnt / "renamed-fifo")
    os.unlink(mnt / "sock")
    assert sorted(os.listdir(mnt)) == ["disk", "null", "renamed-fifo"]
    assert stat.S_ISFIFO(os.lstat(mnt / "renamed-fifo").st_mode)
    assert meta_of(s3, bucket, "renamed-fifo")["mode"] == str(stat.S_IFIFO | 0o600)
    assert (meta_of(s3, bucket, "null")["uid"], meta_of(s3, bucket, "null")["gid"]) == ("1234", "5678")
    assert meta_of(s3, bucket, "null")["rdev"] == str(os.makedev(1, 3))  # a chown keeps the device number
    mount.check(mnt)

    mnt = mount(bucket, "--posix-metadata")
    assert stat.S_ISFIFO(os.lstat(mnt / "renamed-fifo").st_mode)
    assert stat.S_IMODE(os.lstat(mnt / "renamed-fifo").st_mode) == 0o600
    st = os.lstat(mnt / "null")
    assert (stat.S_IFMT(st.st_mode), st.st_rdev, st.st_uid, st.st_gid) == (stat.S_IFCHR, os.makedev(1, 3), 1234, 5678)
    st = os.lstat(mnt / "disk")
    assert (st.st_rdev, st.st_mtime_ns) == (os.makedev(259, 65_537), RECENT_NS)
    assert run(["find", str(mnt), "-type", "p", "-printf", "%P\n"], text=True).stdout == "renamed-fifo\n"
    assert pipe_through(mnt / "renamed-fifo", b"again\n") == b"again\n"


def test_special_files_and_times_on_seaweedfs(seaweed, mount):
    """SeaweedFS keeps the x-amz-meta-* headers as moto does: the same objects, the same remount."""
    client = boto_client(seaweed.url)
    spec = f"{seaweed.BUCKET}:posix-{os.getpid()}"
    mnt = mount(spec, "--endpoint-url", seaweed.url, endpoint=False)
    make_special_files(mnt)
    (mnt / "file").write_bytes(b"file")
    os.utime(mnt / "file", ns=(FUTURE_NS, PAST_NS))
    check_special_objects(client, seaweed.BUCKET, f"posix-{os.getpid()}/")
    mount.check(mnt)

    mnt = mount(spec, "--endpoint-url", seaweed.url, "--posix-metadata", endpoint=False)
    check_special_files(mnt)
    st = os.stat(mnt / "file")
    assert (st.st_atime_ns, st.st_mtime_ns) == (FUTURE_NS, PAST_NS)
    run(["rm", "-r", *(str(path) for path in mnt.iterdir())])


def test_o_tmpfile_is_not_supported_so_programs_fall_back(bucket, mount):
    mnt = mount(bucket)
    assert errno_of(os.open, mnt, os.O_TMPFILE | os.O_WRONLY, 0o600) == errno.EOPNOTSUPP
    assert os.listdir(mnt) == []


# ---------------------------------------------------------------- times


def test_utimensat_times_are_exact_to_the_nanosecond_after_a_remount(s3, bucket, mount):
    mnt = mount(bucket)
    for name in ("past", "future", "now", "omit-atime", "omit-mtime", "open", "libfuse"):
        (mnt / name).write_bytes(name.encode())
    os.utime(mnt / "past", ns=(RECENT_NS, PAST_NS))
    os.utime(mnt / "future", ns=(FUTURE_NS, FUTURE_NS))
    before = time.time_ns()
    os.utime(mnt / "now")  # utime(path, NULL): both times UTIME_NOW
    after = time.time_ns()
    os.utime(mnt / "omit-atime", ns=(RECENT_NS, RECENT_NS))
    run(["touch", "-m", "-d", "@1600000000.5", str(mnt / "omit-atime")])  # the atime is UTIME_OMIT
    os.utime(mnt / "omit-mtime", ns=(RECENT_NS, RECENT_NS))
    run(["touch", "-a", "-d", "@1600000000.25", str(mnt / "omit-mtime")])  # the mtime is UTIME_OMIT
    with open(mnt / "open", "r+b", buffering=0) as f:  # futimens on an open, written file: saved with it
        f.write(b"OPEN")
        os.utime(f.fileno(), ns=(FUTURE_NS, PAST_NS))
    os.utime(mnt / "libfuse", (987631200, 123116400))  # libfuse's test_syscalls test_utime

    expected = {
        "past": (RECENT_NS, PAST_NS),
        "future": (FUTURE_NS, FUTURE_NS),
        "omit-atime": (RECENT_NS, 1_600_000_000 * NS + 500_000_000),
        "omit-mtime": (1_600_000_000 * NS + 250_000_000, RECENT_NS),
        "open": (FUTURE_NS, PAST_NS),
        "libfuse": (987631200 * NS, 123116400 * NS),
    }

    def check(mnt: Path) -> None:
        for name, times in expected.items():
            st = os.stat(mnt / name)
            assert (st.st_atime_ns, st.st_mtime_ns) == times, name
        st = os.stat(mnt / "now")
        assert before - NS <= st.st_mtime_ns <= after and before - NS <= st.st_atime_ns <= after

    check(mnt)
    mount.check(mnt)  # unmounted: the changes held after the files' saves are in S3 (semantics.md, Writes)
    # s3fs-fuse's form: whole seconds, or exactly nine decimals; before 1970 rclone's signed form
    assert meta_of(s3, bucket, "past")["mtime"] == "-86400.250000000"
    assert meta_of(s3, bucket, "past")["atime"] == "1700000000.987654321"
    assert meta_of(s3, bucket, "future")["mtime"] == "4102444800.123456789"
    assert meta_of(s3, bucket, "libfuse")["atime"] == "987631200"
    assert s3.get_object(Bucket=bucket, Key="open")["Body"].read() == b"OPEN"

    check(mount(bucket, "--posix-metadata"))


def test_reads_do_not_change_the_atime_or_cost_a_request(s3, bucket, mount, moto):
    mnt = mount(bucket)
    (mnt / "f").write_bytes(b"read me")
    os.utime(mnt / "f", ns=(RECENT_NS, RECENT_NS))
    held_changes_saved(mnt)
    mark = moto.mark()
    for _ in range(3):
        assert (mnt / "f").read_bytes() == b"read me"
    assert os.stat(mnt / "f").st_atime_ns == RECENT_NS  # noatime
    assert {r.method for r in moto.requests(mark, bucket)} <= {"GET"}


def test_rsync_sees_exact_times_after_a_remount(bucket, mount, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i, name in enumerate(("a", "sub/b", "sub/c")):
        (src / name).write_bytes(name.encode() * 100)
        os.utime(src / name, ns=(RECENT_NS + i, RECENT_NS + i * 7))  # rsync compares nanoseconds
    mnt = mount(bucket)
    run(["rsync", "-a", f"{src}/", f"{mnt}/dst/"])
    mount.check(mnt)
    mnt = mount(bucket, "--posix-metadata")
    again = run(["rsync", "-a", "--itemize-changes", f"{src}/", f"{mnt}/dst/"], text=True)
    assert [line for line in again.stdout.splitlines() if not line.startswith(".d")] == []


# ---------------------------------------------------------------- names and link counts


def test_names_over_255_bytes_are_enametoolong_without_a_request(s3, bucket, mount, moto):
    s3.put_object(Bucket=bucket, Key="file", Body=b"x")
    s3.put_object(Bucket=bucket, Key="dir/", Body=b"")
    mnt = mount(bucket)
    listed = moto.mark()
    os.listdir(mnt)
    # the listing ahead of dir/ (dirprefetch.py) is a background request: let it come before the mark
    assert wait_until(
        lambda: any(r.is_list and r.query["prefix"] == ["dir/"] for r in moto.requests(listed, bucket)), 10
    )
    long = "é" * 128  # 256 bytes
    calls = {
        "stat": (os.stat, mnt / long),
        "lstat": (os.lstat, mnt / "dir" / long / "below"),
        "create": (os.open, mnt / long, os.O_CREAT | os.O_WRONLY, 0o644),
        "mkdir": (os.mkdir, mnt / long),
        "mkfifo": (os.mkfifo, mnt / long),
        "symlink": (os.symlink, "target", mnt / long),
        "rename to": (os.rename, mnt / "file", mnt / long),
        "rename from": (os.rename, mnt / long, mnt / "other"),
        "unlink": (os.unlink, mnt / long),
        "rmdir": (os.rmdir, mnt / long),
        "setxattr": (os.setxattr, mnt / long, "user.x", b"1"),
        "utime": (os.utime, mnt / long),
    }
    mark = moto.mark()
    got = {what: errno_of(*call) for what, call in calls.items()}
    assert got == dict.fromkeys(calls, errno.ENAMETOOLONG)
    assert moto.requests(mark, bucket) == []


def test_an_unlinked_open_file_has_no_links(bucket, mount):
    mnt = mount(bucket)
    (mnt / "saved").write_bytes(b"saved")
    with open(mnt / "saved", "rb") as reading, open(mnt / "new", "wb") as writing:
        writing.write(b"unsaved")
        assert os.fstat(reading.fileno()).st_nlink == 1
        os.unlink(mnt / "saved")
        os.unlink(mnt / "new")
        assert os.fstat(reading.fileno()).st_nlink == 0
        assert os.fstat(writing.fileno()).st_nlink == 0


def test_directory_link_counts_and_find_after_a_remount(s3, bucket, mount):
    keys = ["top.txt", "a/1", "a/b/2", "a/b/c/3", "a/d/4", "e/", "f/g/h/5"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"" if key.endswith("/") else b"x")
    mnt = mount(bucket, "--attr-ttl", "0")  # every stat asks the daemon: the count as it is now
    assert os.stat(mnt / "a").st_nlink == 1  # no listing yet: unknown, as find understands it
    os.listdir(mnt / "a")
    assert os.stat(mnt / "a").st_nlink == 4  # 2 + b and d
    os.mkdir(mnt / "a/new")
    assert os.stat(mnt / "a").st_nlink == 5
    os.rmdir(mnt / "a/new")
    os.listdir(mnt / "e")
    assert os.stat(mnt / "e").st_nlink == 2
    mount.check(mnt)

    mnt = mount(bucket)
    found = run(["find", str(mnt), "-mindepth", "1", "-printf", "%y %P\n"], text=True).stdout.splitlines()
    directories = {"a", "a/b", "a/b/c", "a/d", "e", "f", "f/g", "f/g/h"}
    files = {key for key in keys if not key.endswith("/")}
    assert sorted(found) == sorted([f"d {d}" for d in directories] + [f"f {f}" for f in files])
    # again, now that the listings (and so the counts) are cached
    again = run(["find", str(mnt), "-mindepth", "1", "-printf", "%y %P\n"], text=True).stdout.splitlines()
    assert sorted(again) == sorted(found)
    assert run(["find", str(mnt), "-type", "d", "-name", "c"], text=True).stdout == f"{mnt}/a/b/c\n"


# ---------------------------------------------------------------- hard links


def hard_linked_tree(src: Path) -> None:
    (src / "sub").mkdir(parents=True)
    (src / "one").write_bytes(b"one and the same\n")
    os.link(src / "one", src / "sub/two")
    (src / "plain").write_bytes(b"plain\n")


def test_hard_links_are_refused_with_eperm_and_tools_carry_on(s3, bucket, mount, tmp_path):
    """git falls back to rename(2) on any link(2) failure. rsync -H, cp -a and tar have no
    fallback for any errno: they report the link, copy everything else and exit non-zero."""
    src = tmp_path / "src"
    hard_linked_tree(src)
    mnt = mount(bucket)
    (mnt / "x").write_bytes(b"x")
    assert errno_of(os.link, mnt / "x", mnt / "y") == errno.EPERM
    assert errno_of(os.link, mnt / "missing", mnt / "y") == errno.ENOENT
    linked = b"one and the same\n"

    def copied(top: str) -> dict[str, bytes]:
        return {str(p.relative_to(mnt / top)): p.read_bytes() for p in (mnt / top).rglob("*") if p.is_file()}

    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(src, arcname="tar")
    for command in (
        ["rsync", "-aH", f"{src}/", f"{mnt}/rsync/"],
        ["cp", "-a", str(src), str(mnt / "cp")],
        ["tar", "-xf", str(archive), "-C", str(mnt)],
    ):
        res = run(command, check=False, text=True)
        top = Path(command[-1]).name if command[0] != "tar" else "tar"
        assert res.returncode != 0 and "Operation not permitted" in res.stderr, (command, res.stderr)
        files = copied(top)
        # one name of the linked pair arrives (which one is the tool's choice), the rest is copied
        assert files.pop("plain") == b"plain\n" and list(files.values()) == [linked], (command, files)

    # git: link() of each new object file fails, git renames the file instead
    repo = mnt / "repo"
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env |= {"GIT_COMMITTER_EMAIL": "t@t", "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}
    run(["git", "init", "-q", str(repo)], env=env)
    (repo / "file").write_bytes(b"tracked\n")
    run(["git", "-C", str(repo), "add", "file"], env=env)
    run(["git", "-C", str(repo), "commit", "-q", "-m", "first"], env=env)
    run(["git", "clone", "-q", str(repo), str(mnt / "clone")], env=env)
    assert (mnt / "clone/file").read_bytes() == b"tracked\n"
    assert run(["git", "-C", str(mnt / "clone"), "log", "--format=%s"], env=env, text=True).stdout == "first\n"
