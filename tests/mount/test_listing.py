"""Listings and lookups on a real mount, compared with boto3's view of the bucket."""

from __future__ import annotations

import calendar
import errno
import os
import stat
import subprocess
import time

import pytest
from conftest import held_inodes, keys_of, put_objects, run, wait_until
from faultproxy import Rule


def lastmodified_ns(obj: dict) -> int:
    """LastModified as integer nanoseconds, without float rounding."""
    lm = obj["LastModified"]
    return calendar.timegm(lm.utctimetuple()) * 1_000_000_000 + lm.microsecond * 1000


def dirs_of(keys) -> set[str]:
    """Every directory implied by the keys: prefixes of files, and 'dir/' markers."""
    out = set()
    for key in keys:
        parts = key.split("/")[:-1]
        out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return out


TREE = {
    "top.txt": b"top level\n",
    "zero-bytes": b"",
    "a/one.txt": b"1",
    "a/b/sibling.bin": bytes(range(256)) * 13,
    "a/b/c/deep.txt": b"deep down\n",
    "empty/": b"",  # a marker object: an empty directory
    "marked/": b"",  # a marker object with children
    "marked/child.txt": b"child\n",
    "implicit/only/child.txt": b"implicit parents\n",  # no marker objects at all
    "ünïcødé/日本語.txt": "héllo wörld\n".encode(),
    "emoji 🎉/file with spaces.txt": b"party\n",
    "x" * 100 + "/" + "y" * 200: b"long components\n",
}


def test_tree_matches_bucket(s3, bucket, mount):
    put_objects(s3, bucket, TREE)
    truth = keys_of(s3, bucket)
    files = {k for k in truth if not k.endswith("/")}
    mnt = mount(bucket)

    found = run(["find", str(mnt), "-mindepth", "1", "-type", "f", "-printf", r"%P\0"]).stdout
    assert set(os.fsdecode(p) for p in found.split(b"\0") if p) == files
    found = run(["find", str(mnt), "-mindepth", "1", "-type", "d", "-printf", r"%P\0"]).stdout
    assert set(os.fsdecode(p) for p in found.split(b"\0") if p) == dirs_of(truth)

    for key in files:
        st = os.stat(mnt / key)
        assert stat.S_ISREG(st.st_mode), key
        assert st.st_size == truth[key]["Size"], key
        assert st.st_blocks == (st.st_size + 511) // 512 and st.st_nlink == 1, key
        assert st.st_mtime_ns == lastmodified_ns(truth[key]) // 10**9 * 10**9, key  # whole seconds
        assert (mnt / key).read_bytes() == TREE[key], key

    # the same through ordinary tools
    out = run(["find", str(mnt), "-type", "f", "-printf", r"%P\0%s\0%T@\0"]).stdout.split(b"\0")[:-1]
    for name, size, mtime in zip(out[0::3], out[1::3], out[2::3], strict=True):
        key = os.fsdecode(name)
        assert int(size) == truth[key]["Size"]
        assert int(float(mtime)) == lastmodified_ns(truth[key]) // 1_000_000_000
    du = run(["du", "-s", "-b", str(mnt)], text=True).stdout.split()[0]
    assert int(du) == sum(truth[k]["Size"] for k in files)
    sizes = run(["stat", "-c", "%s", str(mnt / "a/b/sibling.bin"), str(mnt / "zero-bytes")], text=True).stdout
    assert sizes.split() == [str(len(TREE["a/b/sibling.bin"])), "0"]
    assert run(["md5sum", str(mnt / "a/b/sibling.bin")], text=True).stdout.split()[0] == truth["a/b/sibling.bin"][
        "ETag"
    ].strip('"')

    assert os.listdir(mnt / "empty") == []
    st = os.stat(mnt / "empty")
    assert stat.S_ISDIR(st.st_mode) and st.st_nlink == 2 and st.st_size == 0
    assert os.listdir(mnt / "marked") == ["child.txt"]
    assert os.listdir(mnt / "implicit") == ["only"]
    assert sorted(os.listdir(mnt)) == sorted(
        ["top.txt", "zero-bytes", "a", "empty", "marked", "implicit", "ünïcødé", "emoji 🎉", "x" * 100]
    )
    ls = run(["ls", "-l", str(mnt / "a")], text=True).stdout.splitlines()
    assert [line.split()[-1] for line in ls[1:]] == ["b", "one.txt"]
    assert ls[1].startswith("d") and ls[2].startswith("-")


def test_lookups_before_any_listing(s3, bucket, mount):
    """Names resolve by lookup alone (no readdir first): files, implicit dirs, markers."""
    put_objects(s3, bucket, TREE)
    mnt = mount(bucket)
    assert (mnt / "ünïcødé/日本語.txt").read_bytes() == TREE["ünïcødé/日本語.txt"]
    assert (mnt / "implicit/only/child.txt").read_bytes() == TREE["implicit/only/child.txt"]
    assert stat.S_ISDIR(os.stat(mnt / "implicit").st_mode)
    assert stat.S_ISDIR(os.stat(mnt / "empty").st_mode)
    assert stat.S_ISREG(os.stat(mnt / "zero-bytes").st_mode)
    for missing in ("nope", "a/nope", "empty/nope", "top.tx", "top.txt.", "a/b/c/deep"):
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / missing)
    with pytest.raises(NotADirectoryError):
        os.stat(mnt / "top.txt/child")


ODD = {
    "a//b": b"double slash",
    "./x": b"dot",
    "../y": b"dot dot",
    "x/..": b"x dot dot",
    "n" * 255: b"255 ascii bytes",  # the longest name: visible
    "m" * 256: b"256 ascii bytes",  # too long: skipped
    "é" * 127 + "z": b"255 utf-8 bytes",  # visible
    "é" * 128: b"256 utf-8 bytes",  # skipped
    "both": b"the file both",  # both a file and a prefix: the directory wins
    "both/inner.txt": b"inner\n",
    "trailing/": b"a trailing-slash object with content",
    "normal.txt": b"normal\n",
}
ODD_VISIBLE = {"a", "x", "n" * 255, "é" * 127 + "z", "both", "trailing", "normal.txt"}
ODD_SKIPPED = ["./", "../", "a//", "x/..", "m" * 256, "é" * 128]


def test_odd_keys(s3, bucket, mount):
    put_objects(s3, bucket, ODD)
    mnt = mount(bucket)

    # lookups first, before any listing
    assert stat.S_ISDIR(os.stat(mnt / "both").st_mode)
    assert (mnt / "both/inner.txt").read_bytes() == b"inner\n"
    assert (mnt / ("n" * 255)).read_bytes() == b"255 ascii bytes"
    assert (mnt / ("é" * 127 + "z")).read_bytes() == b"255 utf-8 bytes"
    for skipped in ("m" * 256, "é" * 128):  # not visible (FUSE passes such names on; the kernel does not refuse them)
        with pytest.raises(OSError) as err:
            os.stat(mnt / skipped)
        assert err.value.errno in (errno.ENOENT, errno.ENAMETOOLONG)
    assert stat.S_ISDIR(os.stat(mnt / "trailing").st_mode)
    assert stat.S_ISDIR(os.stat(mnt / "x").st_mode)

    # then listings
    assert set(os.listdir(mnt)) == ODD_VISIBLE
    ls = run(["ls", "-laR", str(mnt)], text=True).stdout
    assert "normal.txt" in ls
    assert os.listdir(mnt / "a") == []
    assert os.listdir(mnt / "x") == []
    assert os.listdir(mnt / "trailing") == []
    assert os.listdir(mnt / "both") == ["inner.txt"]
    for name in ("a", "x", "both", "trailing"):
        assert stat.S_ISDIR(os.stat(mnt / name).st_mode), name
    found = run(["find", str(mnt), "-mindepth", "1", "-printf", r"%P\0"]).stdout
    assert {os.fsdecode(p) for p in found.split(b"\0") if p} == ODD_VISIBLE | {"both/inner.txt"}
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "a" / "b")
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "y")

    # every visible file reads back, and the mount is still fine
    for name in ("n" * 255, "é" * 127 + "z", "both/inner.txt", "normal.txt"):
        key = name
        assert run(["cat", str(mnt / name)]).stdout == ODD[key]
    assert run(["cat", str(mnt / "normal.txt")]).stdout == b"normal\n"

    log = mount.log_text(mnt)
    for key in ODD_SKIPPED:
        assert f"skipping key {key!r}" in log, key
    assert "'both' is both a file and a directory" in log


def test_2500_entry_directory_few_lists(s3, bucket, mount, moto):
    names = [f"file-{i:05d}.dat" for i in range(2500)]
    objects = {f"big/{n}": n.encode() for n in names}
    # The 1000th entry, the last of the first page, is also a directory; its prefix opens page 2.
    objects["big/file-00999.dat/inner"] = b"inner"
    put_objects(s3, bucket, objects)
    mnt = mount(bucket)
    mark = moto.mark()
    ls = run(["ls", "-l", str(mnt / "big")], text=True).stdout.splitlines()
    requests = moto.requests(mark, bucket)
    entries = [line.split() for line in ls[1:]]
    assert [e[-1] for e in entries] == names
    dirs = [e[-1] for e in entries if e[0].startswith("d")]
    assert dirs == ["file-00999.dat"]
    assert all(e[0] == "-rw-r--r--" and e[4] == str(len(names[0])) for e in entries if e[-1] not in dirs)
    # the directory's own pages (its one subdirectory is listed ahead besides: dirprefetch.py)
    lists = [r for r in requests if r.is_list and r.query["prefix"] == ["big/"]]
    heads = [r for r in requests if r.method == "HEAD"]
    assert len(lists) <= 4, lists
    assert heads == []
    assert all(r.method == "GET" for r in requests), requests

    # a second ls within the directory TTL does not list again
    mark = moto.mark()
    assert sorted(os.listdir(mnt / "big")) == names
    assert [r for r in moto.requests(mark, bucket) if r.is_list and r.query["prefix"] == ["big/"]] == []
    assert (mnt / "big/file-00999.dat/inner").read_bytes() == b"inner"


def test_cat_50_files_one_lookup_window(s3, bucket, mount, moto):
    files = {f"dir/f{i}.txt": f"contents of file {i}\n".encode() * (i + 1) for i in range(1, 51)}
    put_objects(s3, bucket, files)
    put_objects(s3, bucket, {f"other/g{i}": b"elsewhere" for i in range(5)})
    mnt = mount(bucket)
    mark = moto.mark()
    out = run(["cat", *(str(mnt / k) for k in files)]).stdout
    requests = moto.requests(mark, bucket)
    assert out == b"".join(files.values())
    lists = [r for r in requests if r.is_list]
    heads = [r for r in requests if r.method == "HEAD"]
    gets = [r for r in requests if r.method == "GET" and not r.is_list]
    assert len(lists) <= 2, lists
    assert heads == []
    assert sorted(r.key for r in gets) == sorted(files)


def test_a_lookup_window_answers_for_the_missing_names_in_its_range(s3, bucket, mount, moto):
    """'mv a b' looks up both: the window that found 'a' covers 'b' too, so that costs no LIST."""
    put_objects(s3, bucket, {"d/a": b"1", "d/c": b"2", "d/e/x": b"3", "d/z": b"4"})
    mnt = mount(bucket)
    (mnt / "d").is_dir()
    mark = moto.mark()
    assert (mnt / "d/a").read_bytes() == b"1"
    assert not (mnt / "d/b").exists()  # after 'a', not listed
    assert not (mnt / "d/e.txt").exists()  # between 'e' and 'e/': listed as missing too
    assert (mnt / "d/e").is_dir()
    assert (mnt / "d/z").read_bytes() == b"4"
    assert len([r for r in moto.requests(mark, bucket) if r.is_list]) == 1  # the window that found 'a'
    os.rename(mnt / "d/a", mnt / "d/b")
    mark = moto.mark()
    assert not (mnt / "d/bb").exists()  # the rename changed d: the window no longer answers for it
    assert [r for r in moto.requests(mark, bucket) if r.is_list]
    assert sorted(os.listdir(mnt / "d")) == ["b", "c", "e", "z"]


def listed_prefixes(moto, mark: int, bucket: str) -> list[str]:
    return sorted(r.query.get("prefix", [""])[0] for r in moto.requests(mark, bucket) if r.is_list)


@pytest.mark.parametrize("subdirectories", [3, 9])
def test_the_few_subdirectories_of_a_listed_directory_are_listed_ahead(s3, bucket, mount, moto, subdirectories):
    """After ls of a directory with at most --prefetch-dirs (8) subdirectories, a path into any of
    them costs no request; with more, none is listed ahead; nothing below them is."""
    names = [f"sub{i}" for i in range(subdirectories)]
    put_objects(s3, bucket, {f"top/{n}/file": n.encode() for n in names} | {"top/sub0/deeper/x": b"x"})
    mnt = mount(bucket)
    assert (mnt / "top").is_dir()
    mark = moto.mark()
    assert sorted(os.listdir(mnt / "top")) == names
    ahead = [f"top/{n}/" for n in names] if subdirectories <= 8 else []
    expected = sorted(["top/", *ahead])
    assert wait_until(lambda: listed_prefixes(moto, mark, bucket) == expected, 10), listed_prefixes(moto, mark, bucket)
    mark = moto.mark()
    for n in names:
        assert (mnt / "top" / n / "file").read_bytes() == n.encode()
    assert stat.S_ISDIR(os.stat(mnt / "top/sub0/deeper").st_mode)
    lists = listed_prefixes(moto, mark, bucket)
    assert set(lists) == (set() if ahead else {f"top/{n}/" for n in names}), lists
    time.sleep(0.5)  # a directory listed ahead lists nothing ahead itself
    assert "top/sub0/deeper/" not in listed_prefixes(moto, mark, bucket)


def test_a_lookup_and_a_readdir_wait_for_the_listing_ahead_of_their_directory(s3, bucket, mount, moto, faulty):
    """ls, then at once cat of a file below and ls of a subdirectory: each waits for the listing
    ahead on its way (held 1 s by the proxy) instead of listing the same directory again."""
    put_objects(s3, bucket, {"top/sub0/file": b"0", "top/sub1/file": b"1"})
    mnt = mount(bucket, "--endpoint-url", faulty.url, endpoint=False)
    assert (mnt / "top").is_dir()
    held = [
        faulty.add(Rule("delay", method="GET", query=f"prefix=top%2Fsub{i}%2F", times=1, seconds=1.0)) for i in (0, 1)
    ]
    mark = moto.mark()
    assert sorted(os.listdir(mnt / "top")) == ["sub0", "sub1"]
    assert wait_until(lambda: all(rule.applied for rule in held), 5)
    assert (mnt / "top/sub0/file").read_bytes() == b"0"
    assert os.listdir(mnt / "top/sub1") == ["file"]
    time.sleep(1.5)  # until the held LISTs have reached S3 whichever way it went
    assert listed_prefixes(moto, mark, bucket) == ["top/", "top/sub0/", "top/sub1/"]


def test_prefetch_dirs_0_lists_nothing_ahead_and_files_written_here_stay_listed(s3, bucket, mount, moto):
    put_objects(s3, bucket, {"top/a/file": b"a", "top/b/file": b"b"})
    mnt = mount(bucket, "--prefetch-dirs", "0")
    assert (mnt / "top").is_dir()
    mark = moto.mark()
    assert sorted(os.listdir(mnt / "top")) == ["a", "b"]
    time.sleep(0.5)
    assert listed_prefixes(moto, mark, bucket) == ["top/"]

    mnt = mount(bucket, "--write-back", "--cache-dir", str(mnt.parent / "wb-cache"))
    (mnt / "top/a/new").write_bytes(b"written here")  # kept locally for a while (--write-back)
    assert (mnt / "top").is_dir()
    mark = moto.mark()
    assert sorted(os.listdir(mnt / "top")) == ["a", "b"]
    assert wait_until(lambda: "top/a/" in listed_prefixes(moto, mark, bucket), 10)
    assert sorted(os.listdir(mnt / "top/a")) == ["file", "new"]
    assert (mnt / "top/a/new").read_bytes() == b"written here"


def test_posix_metadata_listing_costs_one_head_per_file(s3, bucket, mount, moto):
    files = {f"dir/f{i:02d}": b"x" * i for i in range(50)}
    put_objects(s3, bucket, files, Metadata={"mode": "33152"})  # 0o100600
    s3.put_object(Bucket=bucket, Key="dir/sub/inner", Body=b"i")
    mnt = mount(bucket, "--posix-metadata")
    mark = moto.mark()
    ls = run(["ls", "-l", str(mnt / "dir")], text=True).stdout.splitlines()[1:]
    requests = moto.requests(mark, bucket)
    assert [line.split()[0] for line in ls] == ["-rw-------"] * 50 + ["drwxr-xr-x"]
    assert len([r for r in requests if r.is_list]) <= 2
    assert sorted(r.key for r in requests if r.method == "HEAD") == sorted(files)


POSIX_META = {"mode": "33216", "uid": "1234", "gid": "5678", "mtime": "1600000000"}


def test_posix_metadata(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="dir/meta.txt", Body=b"with metadata\n", Metadata=POSIX_META)
    s3.put_object(Bucket=bucket, Key="dir/plain.txt", Body=b"without\n")

    mnt = mount(bucket, "--posix-metadata")
    st = os.stat(mnt / "dir/meta.txt")
    assert stat.S_IMODE(st.st_mode) == 0o700 and stat.S_ISREG(st.st_mode)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert st.st_mtime_ns == 1600000000 * 1_000_000_000
    plain = os.stat(mnt / "dir/plain.txt")
    assert stat.S_IMODE(plain.st_mode) == 0o644
    assert (plain.st_uid, plain.st_gid) == (os.getuid(), os.getgid())
    ls = run(["ls", "-ln", str(mnt / "dir")], text=True).stdout.splitlines()[1:]
    assert [line.split()[:4] for line in ls] == [
        ["-rwx------", "1", "1234", "5678"],
        ["-rw-r--r--", "1", str(os.getuid()), str(os.getgid())],
    ]
    assert (mnt / "dir/meta.txt").read_bytes() == b"with metadata\n"

    # without --posix-metadata a listing (no HEAD) shows the default mode
    mnt2 = mount(bucket)
    ls = run(["ls", "-ln", str(mnt2 / "dir")], text=True).stdout.splitlines()[1:]
    assert [line.split()[0] for line in ls] == ["-rw-r--r--", "-rw-r--r--"]
    assert [line.split()[2] for line in ls] == [str(os.getuid())] * 2


def test_owner_and_mode_options(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="d/f", Body=b"f")
    s3.put_object(Bucket=bucket, Key="d/meta", Body=b"m", Metadata={"mode": "33188", "uid": "7", "gid": "8"})
    mnt = mount(
        bucket, "--uid", "4321", "--gid", "8765", "--file-mode", "0600", "--dir-mode", "750", "--posix-metadata"
    )
    st = os.stat(mnt / "d")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 4321, 8765)
    st = os.stat(mnt / "d/f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 4321, 8765)
    st = os.stat(mnt / "d/meta")  # the object's own metadata wins over the defaults
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o644, 7, 8)
    assert stat.S_IMODE(os.stat(mnt).st_mode) == 0o750


BAD_META = {
    "uid": {"uid": "4294967296"},  # does not fit uid_t
    "gid": {"gid": "99999999999999999999"},
    "mtime": {"mtime": "9223372036854775808"},  # seconds: does not fit time_t
}


@pytest.mark.parametrize("field", list(BAD_META))
def test_posix_metadata_out_of_range(s3, bucket, mount, field):
    """Out-of-range metadata on one object must not break the mount: the value is ignored."""
    s3.put_object(Bucket=bucket, Key="bad.txt", Body=b"bad metadata\n", Metadata=BAD_META[field])
    s3.put_object(Bucket=bucket, Key="good.txt", Body=b"good\n")
    mnt = mount(bucket, "--posix-metadata")
    res = run(["ls", "-l", str(mnt)], check=False, text=True)
    assert res.returncode == 0, res.stderr
    assert (mnt / "bad.txt").read_bytes() == b"bad metadata\n"
    assert (mnt / "good.txt").read_bytes() == b"good\n"
    mount.check(mnt)


def test_out_of_range_metadata_without_posix_flag(s3, bucket, mount):
    """Without --posix-metadata, headers are still read when a HEAD revalidates an open file."""
    s3.put_object(Bucket=bucket, Key="bad.txt", Body=b"bad metadata\n", Metadata=BAD_META["uid"])
    mnt = mount(bucket, "--attr-ttl", "1")
    with open(mnt / "bad.txt", "rb") as f:
        assert os.fstat(f.fileno()).st_uid == os.getuid()  # from the listing: no headers
        time.sleep(1.2)  # past the TTL: fstat makes the kernel ask again, and s3fuse HEADs the object
        st = os.fstat(f.fileno())
        assert st.st_size == len(b"bad metadata\n")
        assert st.st_uid == os.getuid()
        assert f.read() == b"bad metadata\n"
    mount.check(mnt)


def test_lookup_window_name_ending_in_e000(s3, bucket, mount):
    """A name whose last character is U+E000 is found even when its window is full of siblings."""
    name = "k\ue000"
    put_objects(s3, bucket, {"k": b"k", "ka": b"ka", "kb": b"kb", "kc": b"kc", name: b"private use"})
    mnt = mount(bucket, "--lookup-window", "2")
    assert (mnt / name).read_bytes() == b"private use"


def test_lookup_window_does_not_hide_directory_past_its_end(s3, bucket, mount):
    """'b' is both a file and a prefix; a lookup window ending at the file must not cache it as a file."""
    put_objects(s3, bucket, {"a": b"a", "b": b"the file b", "b/inner.txt": b"inner", "c": b"c"})
    mnt = mount(bucket, "--lookup-window", "2")
    assert (mnt / "a").read_bytes() == b"a"  # its window is ['a', 'b'], truncated before 'b/'
    assert stat.S_ISDIR(os.stat(mnt / "b").st_mode)
    assert (mnt / "b/inner.txt").read_bytes() == b"inner"


def test_zero_ttls_see_every_change(s3, bucket, mount):
    """With all TTLs 0, every lookup, stat and listing reflects the bucket as it is now."""
    s3.put_object(Bucket=bucket, Key="d/a", Body=b"a")
    mnt = mount(bucket, "--attr-ttl", "0", "--dir-ttl", "0", "--negative-ttl", "0")
    assert os.listdir(mnt / "d") == ["a"]
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "d/b")
    s3.put_object(Bucket=bucket, Key="d/b", Body=b"bb")
    assert os.stat(mnt / "d/b").st_size == 2
    assert sorted(os.listdir(mnt / "d")) == ["a", "b"]
    s3.put_object(Bucket=bucket, Key="d/a", Body=b"a, longer now")
    assert os.stat(mnt / "d/a").st_size == len(b"a, longer now")
    assert (mnt / "d/a").read_bytes() == b"a, longer now"
    s3.delete_object(Bucket=bucket, Key="d/a")
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "d/a")
    assert os.listdir(mnt / "d") == ["b"]
    s3.put_object(Bucket=bucket, Key="d/sub/c", Body=b"c")
    assert sorted(os.listdir(mnt / "d")) == ["b", "sub"]
    assert (mnt / "d/sub/c").read_bytes() == b"c"
    # a directory becomes a file, and a file a directory
    s3.delete_object(Bucket=bucket, Key="d/sub/c")
    s3.put_object(Bucket=bucket, Key="d/sub", Body=b"now a file")
    s3.put_object(Bucket=bucket, Key="d/b/inner", Body=b"now a directory")
    s3.delete_object(Bucket=bucket, Key="d/b")
    assert stat.S_ISREG(os.stat(mnt / "d/sub").st_mode)
    assert (mnt / "d/sub").read_bytes() == b"now a file"
    assert stat.S_ISDIR(os.stat(mnt / "d/b").st_mode)
    assert (mnt / "d/b/inner").read_bytes() == b"now a directory"
    listing = run(["ls", "-l", str(mnt / "d")], text=True).stdout.splitlines()[1:]
    assert [(line[0], line.split()[-1]) for line in listing] == [("d", "b"), ("-", "sub")]


def test_names_the_kernel_sends_but_s3_cannot_hold(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="ok", Body=b"ok")
    mnt = mount(bucket)
    with pytest.raises(FileNotFoundError):
        os.stat(os.path.join(os.fsencode(mnt), b"\xff\xfe-not-utf-8"))
    assert (mnt / "ok").read_bytes() == b"ok"
    df = run(["df", "-P", str(mnt)], text=True).stdout.splitlines()[1].split()
    assert df[0] == f"s3fuse:{bucket}" and int(df[3]) > 0  # statfs works; some free space is reported
    vfs = os.statvfs(mnt)
    assert (vfs.f_namemax, vfs.f_frsize, vfs.f_blocks, vfs.f_bavail) == (255, 4096, 1 << 40, 1 << 40)
    with pytest.raises(OSError) as err:  # a metadata name the object does not have
        os.getxattr(mnt / "ok", "user.anything")
    assert err.value.errno == errno.ENODATA


def test_inode_limit_keeps_what_the_kernel_holds_bounded(s3, bucket, mount):
    """ls -l of 3000 files under --inode-limit 500: the kernel is made to forget the files looked
    up least recently, so the daemon holds about 500 inodes, not 3000. An open file and a process's
    working directory are never among them, and the directory still lists and reads right."""
    names = [f"f{i:05d}" for i in range(3000)]
    put_objects(s3, bucket, {f"many/{n}": n.encode() for n in names} | {"keep.txt": b"kept\n", "sub/x": b""})
    mnt = mount(bucket, "--inode-limit", "500")
    kept = open(mnt / "keep.txt", "rb")  # noqa: SIM115 - held open across the listing
    sleeper = subprocess.Popen(["sleep", "120"], cwd=mnt / "sub")
    try:
        for _ in range(2):
            listed = run(["ls", "-l", str(mnt / "many")]).stdout.decode().splitlines()
            assert len(listed) == 3001 and listed[-1].endswith(names[-1])
            assert wait_until(lambda: held_inodes(mnt) <= 500, 10), held_inodes(mnt)
        assert os.readlink(f"/proc/self/fd/{kept.fileno()}") == str(mnt / "keep.txt")  # not '(deleted)'
        assert kept.read() == b"kept\n"
        assert os.readlink(f"/proc/{sleeper.pid}/cwd") == str(mnt / "sub")
        for n in (names[0], names[1500], names[-1]):  # forgotten ones are looked up again
            assert (mnt / "many" / n).read_bytes() == n.encode()
    finally:
        sleeper.kill()
        sleeper.wait()
        kept.close()
