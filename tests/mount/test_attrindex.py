"""Exact POSIX attributes after a remount, at listing speed: the attribute index (attrindex.py).

Real mounts on moto and SeaweedFS: what chmod, chown, utimens, symlink and mkdir set comes
back after an unmount and on a second mount with an empty cache dir (another machine),
with no HEAD per entry; rsync -a and tar round trips report nothing to do; the index never
overrides what an object's own headers say.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from conftest import boto_client, keys_of, run, wait_until
from faultproxy import Rule

from s3fuse.attrindex import index_key
from s3fuse.metadata import parse_seconds_ns

MIB = 1 << 20
OLD = 1_500_000_000  # 2017: a time no mount would make up


def snapshot(root: Path) -> dict[str, tuple]:
    """path -> (type, mode, uid, gid, mtime in seconds, size or link target) of everything below root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            what = os.readlink(path) if stat.S_ISLNK(st.st_mode) else (0 if stat.S_ISDIR(st.st_mode) else st.st_size)
            out[str(path.relative_to(root))] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                int(st.st_mtime),
                what,
            )
    return out


def make_tree(root: Path) -> None:
    """Symlinks, modes 600/640/700/755/444, another owner, old times, nested directories."""
    (root / "sub/deeper").mkdir(parents=True)
    files = {"private": 0o600, "group": 0o640, "script": 0o700, "tool": 0o755, "readonly": 0o444}
    for i, (name, mode) in enumerate(files.items()):
        for where in (root, root / "sub"):
            path = where / name
            path.write_bytes(name.encode() * (i + 1))
            path.chmod(mode)
            os.utime(path, (OLD + i, OLD + i))
    (root / "sub/deeper/big").write_bytes(os.urandom(6 * MIB))
    os.chown(root / "sub/group", 1234, 5678)
    os.symlink("private", root / "link")
    os.symlink("../tool", root / "sub/uplink")
    os.symlink("/nowhere/at/all", root / "sub/deeper/dangling")
    # Old times everywhere: a time within a second of the write could also be the kernel's own
    # stamp of it, which s3fuse keeps in memory only (docs/semantics.md, utimes on files).
    os.utime(root / "sub/deeper/big", (OLD + 50, OLD + 50))
    for link in ("link", "sub/uplink", "sub/deeper/dangling"):
        os.utime(root / link, (OLD + 60, OLD + 60), follow_symlinks=False)
    os.chmod(root / "sub/deeper", 0o750)
    for path in (root / "sub/deeper", root / "sub"):
        os.utime(path, (OLD - 100, OLD - 100))


def rsync_changes(src: Path, dst: Path) -> list[str]:
    """What rsync -a would change in dst to make it src (nothing, for an exact copy)."""
    res = run(["rsync", "-a", "-i", "--dry-run", f"{src}/", f"{dst}/"])
    lines = res.stdout.decode().splitlines()
    return [line for line in lines if line.strip() and not line.startswith(".d..t...... ./")]


def counts(mnt: Path) -> dict[str, int]:
    """S3 requests by operation, from the mount's stats."""
    res = run([sys.executable, "-m", "s3fuse", "stats", str(mnt), "--json"])
    return json.loads(res.stdout)["requests"]


@pytest.fixture
def have_rsync():
    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed")


def test_rsync_round_trip_survives_remount_and_another_machine(mount, bucket, tmp_path, have_rsync):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    mnt = mount(bucket)
    run(["rsync", "-a", f"{src}/", f"{mnt}/"])
    assert rsync_changes(src, mnt) == []
    expected = snapshot(src)
    mount.check(mnt)

    again = mount(bucket)  # same cache dir
    assert snapshot(again) == expected
    assert rsync_changes(src, again) == []
    mount.check(again)

    other = mount(bucket, "--cache-dir", str(tmp_path / "elsewhere"))  # another machine
    assert snapshot(other) == expected
    assert rsync_changes(src, other) == []
    mount.check(other)


def test_tar_round_trip(mount, bucket, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(src, arcname=".")
    mnt = mount(bucket)
    run(["tar", "-x", "-p", "--same-owner", "-f", str(archive), "-C", str(mnt)])
    mount.check(mnt)
    other = mount(bucket, "--cache-dir", str(tmp_path / "elsewhere"))
    assert snapshot(other) == snapshot(src)
    out = tmp_path / "out"
    out.mkdir()
    run(["tar", "-c", "-f", str(tmp_path / "b.tar"), "-C", str(other), "."])
    run(["tar", "-x", "-p", "--same-owner", "-f", str(tmp_path / "b.tar"), "-C", str(out)])
    assert snapshot(out) == snapshot(src)


def test_ls_of_many_files_costs_no_request_per_entry(mount, bucket, tmp_path):
    mnt = mount(bucket)
    (mnt / "many").mkdir()
    for i in range(2000):
        path = mnt / "many" / f"f{i:04d}"
        path.write_bytes(b"x")
        if i % 3 == 0:
            path.chmod(0o600)
    mount.check(mnt)
    cold = mount(bucket, "--cache-dir", str(tmp_path / "elsewhere"))
    listed = run(["ls", "-l", str(cold / "many")]).stdout.decode().splitlines()[1:]
    assert len(listed) == 2000
    modes = [line.split()[0] for line in listed]
    assert modes.count("-rw-------") == 667 and modes.count("-rw-r--r--") == 1333
    requests = counts(cold)
    assert requests.get("HeadObject", 0) == 0 and requests.get("GetObject", 0) <= 2, requests
    assert requests.get("ListObjectsV2", 0) <= 4, requests  # the root's window, then two pages


def test_index_never_contradicts_the_objects_headers(mount, bucket, s3, tmp_path):
    """Changes made by another tool (same bytes, other headers; or new objects) win over the index."""
    mnt = mount(bucket)
    (mnt / "d").mkdir()
    for name in ("a", "b", "c"):
        (mnt / "d" / name).write_bytes(name.encode())
        (mnt / "d" / name).chmod(0o600)
    mount.check(mnt)
    time.sleep(2.1)  # the copy must be dated after the index's word (whole seconds)
    # another tool: a metadata-only copy (same ETag), a new object with s3fs-fuse headers
    s3.copy_object(Bucket=bucket, Key="d/a", CopySource={"Bucket": bucket, "Key": "d/a"},
                   MetadataDirective="REPLACE", Metadata={"mode": str(0o100640), "uid": "7", "gid": "8"})  # fmt: skip
    s3.put_object(Bucket=bucket, Key="d/new", Body=b"n", Metadata={"mode": str(0o100604)})
    s3.put_object(Bucket=bucket, Key="d/b", Body=b"other bytes")  # rewritten, no headers
    other = mount(bucket, "--cache-dir", str(tmp_path / "elsewhere"))
    st = {name: (other / "d" / name).lstat() for name in ("a", "b", "c", "new")}
    assert stat.S_IMODE(st["a"].st_mode) == 0o640 and (st["a"].st_uid, st["a"].st_gid) == (7, 8)
    assert stat.S_IMODE(st["b"].st_mode) == 0o644  # the default: its headers have none
    assert stat.S_IMODE(st["c"].st_mode) == 0o600
    assert stat.S_IMODE(st["new"].st_mode) == 0o604


def test_corrupt_index_falls_back_to_heads(mount, bucket, s3, tmp_path):
    mnt = mount(bucket)
    (mnt / "d").mkdir()
    (mnt / "d/f").write_bytes(b"f")
    (mnt / "d/f").chmod(0o600)
    os.symlink("f", mnt / "d/l")
    mount.check(mnt)
    index_keys = [k for k in keys_of(s3, bucket, ".s3fuse/index/", internal=True)]
    assert index_keys, "the mount wrote no attribute index"
    for key in index_keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"{not json")
    other = mount(bucket, "--cache-dir", str(tmp_path / "elsewhere"))
    assert stat.S_IMODE((other / "d/f").lstat().st_mode) == 0o600
    assert os.readlink(other / "d/l") == "f"
    assert ".s3fuse" not in os.listdir(other)


def test_reserved_name_is_hidden_and_refused(mount, bucket):
    mnt = mount(bucket)
    (mnt / "f").write_bytes(b"f")
    (mnt / "f").chmod(0o600)
    mount.check(mnt)
    mnt = mount(bucket)
    assert os.listdir(mnt) == ["f"]
    assert not (mnt / ".s3fuse").exists()
    with pytest.raises(PermissionError):
        (mnt / ".s3fuse").mkdir()
    with pytest.raises(PermissionError):
        (mnt / ".s3fuse").write_bytes(b"x")


def test_mkdir_sends_the_new_directorys_index_beside_its_marker(mount, bucket, s3, faulty):
    """One round trip per mkdir, not two: the index goes out while the marker's answer is on
    its way (held back here by the fault proxy), and both are in S3 when mkdir returns."""
    mnt = mount(bucket, "--endpoint-url", faulty.url, endpoint=False)
    (mnt / "first").mkdir()  # the mount's one-off probe of conditional writes is behind us
    held = faulty.add(Rule("late", method="PUT", path=rf"^/{bucket}/d/$", times=1, seconds=3.0))
    making = threading.Thread(target=os.mkdir, args=(mnt / "d",))
    making.start()

    index = f"/{bucket}/{index_key('d/')}"
    assert wait_until(lambda: held.applied == 1, 10)
    # Sent one after the other, the index would come after the 3 s hold.
    assert wait_until(lambda: any(e.method == "PUT" and e.path == index for e in list(faulty.log)), 2.0)
    assert making.is_alive()  # the marker's answer is still held back
    making.join(30)
    assert "d/" in keys_of(s3, bucket) and (mnt / "d").is_dir()
    assert index_key("d/") in keys_of(s3, bucket, ".s3fuse/index/", internal=True)


def test_no_attribute_index_writes_nothing(mount, bucket, s3):
    mnt = mount(bucket, "--no-attribute-index")
    (mnt / "f").write_bytes(b"f")
    (mnt / "f").chmod(0o600)
    mount.check(mnt)
    assert set(keys_of(s3, bucket, internal=True)) == {"f"}


def test_two_mounts_changing_one_directory_lose_nothing(mount, bucket, tmp_path):
    one = mount(bucket, "--cache-dir", str(tmp_path / "one"))
    two = mount(bucket, "--cache-dir", str(tmp_path / "two"))
    (one / "shared").mkdir()
    modes = {}

    def work(mnt: Path, tag: str) -> None:
        for i in range(40):
            path = mnt / "shared" / f"{tag}{i}"
            path.write_bytes(tag.encode())
            mode = 0o600 + (i % 8) * 0o10
            path.chmod(mode)
            modes[f"{tag}{i}"] = mode

    threads = [threading.Thread(target=work, args=(m, t)) for m, t in ((one, "a"), (two, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mount.check(one)
    mount.check(two)
    third = mount(bucket, "--cache-dir", str(tmp_path / "three"))
    got = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in (third / "shared").iterdir()}
    assert got == modes
    requests = counts(third)
    assert requests.get("HeadObject", 0) == 0, requests  # every entry was in the index


def test_seaweedfs_round_trip(seaweed, mount, tmp_path, have_rsync):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    client = boto_client(seaweed.url)
    prefix = f"attrs-{os.getpid()}-{tmp_path.name[-8:]}"
    args = ("--endpoint-url", seaweed.url)
    mnt = mount(f"{seaweed.BUCKET}:{prefix}", *args, endpoint=False)
    run(["rsync", "-a", f"{src}/", f"{mnt}/"])
    mount.check(mnt)
    other = mount(f"{seaweed.BUCKET}:{prefix}", *args, "--cache-dir", str(tmp_path / "x"), endpoint=False)
    assert snapshot(other) == snapshot(src)
    assert rsync_changes(src, other) == []
    assert client.list_objects_v2(Bucket=seaweed.BUCKET, Prefix=".s3fuse/index/").get("KeyCount", 0) > 0


WORKLOAD = r"""
import os, random, sys, time
root, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
os.makedirs(os.path.join(root, "w"), exist_ok=True)
names = []
while True:
    op = rng.random()
    name = os.path.join(root, "w", f"n{rng.randrange(30)}")
    try:
        if op < 0.3:
            with open(name, "wb") as f:
                f.write(os.urandom(rng.randrange(1, 5000)))
        elif op < 0.45:
            os.chmod(name, rng.choice([0o600, 0o640, 0o700, 0o755, 0o444]))
        elif op < 0.55:
            os.chown(name, rng.randrange(1000, 1010), rng.randrange(2000, 2010), follow_symlinks=False)
        elif op < 0.65:
            t = 1_400_000_000 + rng.randrange(10**8)
            os.utime(name, (t, t), follow_symlinks=False)
        elif op < 0.75:
            os.symlink(f"target{rng.randrange(100)}", name)
        elif op < 0.85:
            os.rename(name, os.path.join(root, "w", f"n{rng.randrange(30)}"))
        elif op < 0.9:
            os.unlink(name)
        else:
            os.mkdir(name, rng.choice([0o700, 0o755]))
    except OSError:
        pass
"""


def test_kill_9_during_attribute_changes_then_every_attribute_equals_the_headers(mount, bucket, s3, tmp_path):
    """SIGKILL at random points of creates, chmod, chown, utimens, symlink, rename and unlink; a mount
    with another cache dir then shows, for every file, exactly what the object's headers say."""
    rng = random.Random(7)
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    for round_ in range(int(os.environ.get("S3FUSE_INDEX_CRASH_ROUNDS", "3"))):
        mnt = mount(bucket, "--cache-dir", str(tmp_path / f"c{round_}"))
        worker = subprocess.Popen([sys.executable, str(script), str(mnt), str(round_)])
        time.sleep(rng.uniform(0.5, 3.0))
        mount.kill(mnt)
        worker.kill()
        worker.wait()
        run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        check = mount(bucket, "--cache-dir", str(tmp_path / f"check{round_}"))
        for key in keys_of(s3, bucket, "w/"):
            if key.endswith("/"):
                continue
            head = s3.head_object(Bucket=bucket, Key=key)
            meta = head["Metadata"]
            st = (check / key).lstat()
            assert st.st_mode == int(meta.get("mode", stat.S_IFREG | 0o644)), (key, meta)
            assert st.st_uid == int(meta.get("uid", 0)) and st.st_gid == int(meta.get("gid", 0)), (key, meta)
            if "mtime" in meta:
                assert st.st_mtime_ns == parse_seconds_ns(meta["mtime"]), (key, meta)
            else:
                assert int(st.st_mtime) == int(head["LastModified"].timestamp()), (key, head["LastModified"])
        mount.check(check)


@pytest.mark.parametrize("mode", ["default", "write-back"])
def test_rsync_request_counts(mount, s3, bucket, moto, tmp_path, have_rsync, mode):
    """rsync's temporary file (create, write, close, utimens, chmod, rename). By default the close is a
    PutObject; utimens and chmod of the file saved moments ago are held in the journal, and the rename
    carries them in its CopyObject to the name, then DeleteObject: three requests (five when each call
    was a CopyObject). With --write-back all of it joins the journaled upload, which starts 0.5 s after
    the close: one PutObject at the final name."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(3000))
        (src / f"f{i}").chmod(0o640)
        os.utime(src / f"f{i}", (OLD + i, OLD + i))
    args = ("--write-back", "--cache-dir", str(tmp_path / "wb")) if mode == "write-back" else ()
    mnt = mount(bucket, *args)
    mark = moto.mark()
    run(["rsync", "-a", f"{src}/", f"{mnt}/"])
    if mode == "write-back":
        assert wait_until(lambda: keys_of(s3, bucket).keys() >= {f"f{i}" for i in range(20)}, 30)
    writes = [(r.method, r.key) for r in moto.requests(mark, bucket) if r.method in ("PUT", "POST", "DELETE")]
    puts = [key for method, key in writes if method == "PUT"]
    assert sorted(k for k in puts if not k.startswith(".f")) == sorted(f"f{i}" for i in range(20)), writes
    assert len(writes) == (20 if mode == "write-back" else 60), writes
    for i in range(0, 20, 4):  # the next run replaces these: its temporary files are renamed onto them
        (src / f"f{i}").write_bytes(os.urandom(2000))
    run(["rsync", "-a", f"{src}/", f"{mnt}/"])
    mount.check(mnt)  # unmounting waits for the uploads
    assert "another writer" not in mount.log_text(mnt)  # a renamed file's upload expects what it replaces
    other = mount(bucket, "--cache-dir", str(tmp_path / "elsewhere"))
    assert rsync_changes(src, other) == []


def test_a_listing_while_the_index_is_written_sends_no_head(mount, bucket, faulty):
    """The entries of an index write in flight vouch for themselves: a listing meanwhile (the
    fault proxy holds the write's answer back 3 s) needs no HEAD. It HEADed each of them."""
    # Listings always asked of S3, as once the listing cache expired (tar x then du -s)
    mnt = mount(bucket, "--endpoint-url", faulty.url, "--dir-ttl", "0", endpoint=False)
    (mnt / "d").mkdir()
    for i in range(5):
        (mnt / "d" / f"f{i}").write_bytes(b"x")
    (mnt / "d" / "f0").chmod(0o600)
    index = f"/{bucket}/{index_key('d/')}"
    held = faulty.add(Rule("late", method="PUT", path=rf"^{index}$", times=1, seconds=3.0))
    assert wait_until(lambda: held.applied == 1, 10)  # the batched write, AGE after the changes
    held_since = time.monotonic()
    heads = counts(mnt).get("HeadObject", 0)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")  # the kernel forgets the entries: a listing
    listed = run(["ls", "-l", str(mnt / "d")]).stdout.decode().splitlines()[1:]
    assert time.monotonic() - held_since < 3.0  # listed while the write was on its way
    assert [line.split()[0] for line in listed] == ["-rw-------"] + ["-rw-r--r--"] * 4
    assert counts(mnt).get("HeadObject", 0) == heads
