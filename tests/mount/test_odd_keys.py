"""An odd-key corpus: every kind of key S3 accepts and a file system cannot show as it is.

The corpus is put with boto3 and mounted; ordinary tools walk it (``ls -laR``,
``find``, ``du``, ``stat``, ``cat``), and every key is checked against what
docs/semantics.md (Names, Directories) promises: a key whose components are all
names is reachable at its path with its exact bytes; a key with a component that
cannot be a name (empty, ``.``, ``..``, longer than 255 bytes) is skipped, logged,
and cannot be reached by any path; the directory wins over a file of the same name;
nothing written through a prefix mount lands outside the prefix. test_listing.py's
test_odd_keys covers the first few of these kinds; this file is the whole zoo.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from conftest import boto_client, keys_of, put_objects, run, unique_bucket_name

from s3fuse.names import start_after_for

NAME_MAX = 255

# A key of exactly 1,024 bytes (S3's limit), of components that are all names.
LONG_KEY = "deep/" + "/".join(["ü" * 100] * 4) + "/" + "k" * 215
assert len(LONG_KEY.encode()) == 1024

SKIPPED_KEYS = [
    "a//b",  # empty component
    "./x",
    "../x",
    "x/..",
    "x/.",
    ".",
    "..",
    "/lead",  # empty first component
    "//",
    "L" * 256,  # 256 ASCII bytes
    "L" * 256 + "/child",  # ... as a directory too: a lookup must not make it one
    "日" * 85 + "x",  # 256 UTF-8 bytes (3-byte characters)
    "🎉" * 64,  # 256 UTF-8 bytes (4-byte characters)
    "deep/" + "ü" * 128 + "/f",  # a 256-byte component below a good one
]

MAPPED_KEYS = [
    "dir-with-body/",  # a marker with content: a directory; its bytes are never read
    "sub/marker-with-body/",
    "both",  # a file and a prefix: the directory wins
    "both/inner",
    "lone",  # a file and a marker of the same name, nothing else below it
    "lone/",
    "N" * 255,
    "日" * 85,  # 255 UTF-8 bytes
    "🎉" * 63 + "abc",  # 255 UTF-8 bytes
    LONG_KEY,
    # Control characters. '\n' is missing: moto's router answers 404 to a key with
    # one (the SeaweedFS test has it); NUL and invalid UTF-8 cannot be keys at all.
    "ctl\x01a",
    "ctl\tb",
    "ctl\x7fc",
    "ctl\rd",
    "\u00e9",  # é, NFC ...
    "e\u0301",  # ... and NFD: two keys, two files
    "caf\u00e9/f",  # the same pair as directories
    "cafe\u0301/f",
    "100%",
    "%2F",
    "%00",
    "%zz",
    "a+b",  # '+' is no space in a key
    "a b",
    " lead-space",
    "trail-space ",
    "back\\slash",
    "\\",
    "q?x",
    "h#x",
    "amp&x",
    "quote\"'",
    "<lt>",
    "zw\u200bsp",
    "nbsp\u00a0",
    "...",  # three dots are a name
    "..x",
    ".hidden",
    "sub/.s3",  # only the mount root reserves these names
    "sub/.versions",
    "ordinary.txt",
    "sub/ordinary.txt",
]

# Keys named like the mount's control directories, at the mount root: the name leads
# to the control directory, so the key is hidden (and logged).
CONTROL_KEYS = [".s3", ".s3/cors", ".versions"]

CORPUS = {key: f"body of {key!r}".encode() for key in SKIPPED_KEYS + MAPPED_KEYS + CONTROL_KEYS}


def bad_component(name: str) -> bool:
    """The test's own statement of docs/semantics.md's rule (not the code's)."""
    return name in ("", ".", "..") or len(name.encode()) > NAME_MAX


def components(key: str) -> tuple[list[str], bool]:
    """The components of a key, and whether it is a directory marker ('dir/')."""
    marker = key.endswith("/")
    return (key[:-1] if marker else key).split("/"), marker


def expected_tree(objects: dict[str, bytes], hidden: tuple[str, ...] = (".s3", ".versions")):
    """(files: path -> bytes, directories) that the mount must show for these keys."""
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    for key, body in objects.items():
        parts, marker = components(key)
        if parts[0] in hidden:
            continue
        good = next((i for i, p in enumerate(parts) if bad_component(p)), len(parts))
        # Every leading run of good components above the key is a directory (its common prefix is listed).
        dirs.update("/".join(parts[:i]) for i in range(1, min(good, len(parts) - 1) + 1))
        if good == len(parts):
            if marker:
                dirs.add("/".join(parts))
            else:
                files["/".join(parts)] = body
    return {p: b for p, b in files.items() if p not in dirs}, dirs


def skipped_unit(key: str) -> str | None:
    """What a listing names when it skips the key: the key up to its first bad component,
    with a '/' when the listing meets it as a common prefix."""
    parts, marker = components(key)
    for i, part in enumerate(parts):
        if bad_component(part):
            more = i < len(parts) - 1 or marker
            return "/".join(parts[: i + 1]) + ("/" if more else "")
    return None


def walk(mnt: Path) -> tuple[dict[str, bytes], set[str]]:
    """(regular files -> bytes, directories) under mnt, read through the mount."""
    files, dirs = {}, set()
    for top, dirnames, filenames in os.walk(mnt):
        rel = os.path.relpath(top, mnt)
        for d in dirnames:
            dirs.add(d if rel == "." else f"{rel}/{d}")
        for f in filenames:
            path = f if rel == "." else f"{rel}/{f}"
            files[path] = (mnt / path).read_bytes()
    return files, dirs


def nul_list(out: bytes) -> list[str]:
    return [os.fsdecode(p) for p in out.split(b"\0") if p]


@pytest.fixture(scope="module")
def corpus(s3) -> str:
    """A bucket holding CORPUS, shared by the read-only tests."""
    name = unique_bucket_name("odd-corpus")
    s3.create_bucket(Bucket=name)
    put_objects(s3, name, CORPUS)
    assert set(keys_of(s3, name)) == set(CORPUS)  # moto keeps every key as it was sent
    return name


def test_tools_walk_the_corpus(corpus, mount):
    """ls -laR, find, du, stat and cat on every entry: no error, no hang, no traceback,
    exactly the mappable keys with their bytes, and one warning per skipped key."""
    files, dirs = expected_tree(CORPUS)
    mnt = mount(corpus)

    ls = run(["ls", "-laR", str(mnt)], timeout=30).stdout
    assert b"ordinary.txt" in ls
    # One listing of each directory, so one line per skipped key or common prefix
    # (the listings are cached for --dir-ttl: the tools below list nothing again).
    log = mount.log_text(mnt)
    units = {skipped_unit(k) for k in SKIPPED_KEYS}
    assert units == {"a//", "./", "../", "x/..", "x/.", ".", "..", "/", "L" * 256, "L" * 256 + "/"} | {
        "日" * 85 + "x",
        "🎉" * 64,
        "deep/" + "ü" * 128 + "/",
    }
    for unit in units:
        assert log.count(f"skipping key {unit!r}: ") == 1, unit
    assert log.count("skipping key '.s3/': the mount's .s3/ directory hides it") == 1
    assert log.count("skipping key '.versions': the mount's .versions/ directory hides it") == 1
    assert log.count("key '.s3' is both a file and a directory") == 1
    assert log.count("key 'both' is both a file and a directory") == 1
    assert log.count("key 'lone' is both a file and a directory") == 1

    found = run(["find", str(mnt), "-mindepth", "1", "-printf", r"%y %P\0"], timeout=30).stdout
    listed = {tuple(entry.split(" ", 1)) for entry in nul_list(found)}
    assert listed == {("f", p) for p in files} | {("d", d) for d in dirs}

    du = run(["du", "-sb", str(mnt)], timeout=30).stdout
    assert int(du.split()[0]) == sum(len(b) for b in files.values())  # directories have size 0
    run(["find", str(mnt), "-exec", "stat", "--", "{}", "+"], timeout=30)
    run(["find", str(mnt), "-type", "f", "-exec", "cat", "--", "{}", "+"], timeout=30)

    for path, body in files.items():
        st = os.stat(mnt / path)
        assert stat.S_ISREG(st.st_mode) and st.st_size == len(body), path
        assert (mnt / path).read_bytes() == body, path
    for path in dirs:
        assert stat.S_ISDIR(os.stat(mnt / path).st_mode), path
    assert walk(mnt) == (files, dirs)

    # the normalisation pairs are distinct entries with their own bytes
    nfc, nfd = "\u00e9", "e\u0301"
    assert {nfc, nfd} <= set(os.listdir(mnt))
    assert os.stat(mnt / nfc).st_ino != os.stat(mnt / nfd).st_ino
    assert (mnt / nfc).read_bytes() == CORPUS[nfc] and (mnt / nfd).read_bytes() == CORPUS[nfd]
    assert (mnt / f"caf{nfc}/f").read_bytes() != (mnt / f"caf{nfd}/f").read_bytes()
    assert (mnt / LONG_KEY).read_bytes() == CORPUS[LONG_KEY]

    assert mount.get(mnt).proc.poll() is None  # still serving
    mount.check(mnt)  # unmounts: exit status 0, no traceback in the log


def moto_can_look_up(path: str) -> bool:
    """Whether moto answers the lookups of path and its parents without a cached listing.

    A lookup LISTs from a StartAfter just before the name; moto echoes StartAfter in
    its XML unencoded (S3 encodes it, as asked by EncodingType=url), so one with a
    control character other than tab, CR or LF makes XML that botocore cannot parse.
    s3fuse makes one for a name ending in a space (just before ' ' is '\x1f').
    """
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        after = start_after_for("/".join(parts[:i]))
        if any(c < " " and c not in "\t\n\r" for c in after):
            return False
    return True


@pytest.mark.parametrize("window", ["1000", "1"])
def test_lookups_without_a_listing(corpus, mount, window):
    """Before any listing, every mappable key is found at its path by lookups alone,
    and no path reaches a skipped key, also with a lookup window of 1 key, which must
    probe 'name/' on its own (that probe once turned 'L'*256 into a directory whose
    'child' could be read)."""
    files, dirs = expected_tree(CORPUS)
    mnt = mount(corpus, "--lookup-window", window)
    for path, body in files.items():
        if moto_can_look_up(path):
            assert stat.S_ISREG(os.lstat(mnt / path).st_mode), path
            assert (mnt / path).read_bytes() == body, path
    for path in dirs:
        if moto_can_look_up(path):
            assert stat.S_ISDIR(os.lstat(mnt / path).st_mode), path

    skipped_bodies = {CORPUS[k] for k in SKIPPED_KEYS}

    def attempt(path: str) -> bytes | int:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            return exc.errno

    tricks = []
    for key in SKIPPED_KEYS:
        tricks += [f"{mnt}/{key}", f"{mnt}/./{key}", f"{mnt}/x/../{key}", f"{mnt}/both/../{key}"]
    tricks += [f"{mnt}/x/../x/..", f"{mnt}/x/./.", f"{mnt}/a/", f"{mnt}/a/.", f"{mnt}/deep/" + "ü" * 128]
    for path in tricks:
        got = attempt(path)
        assert got not in skipped_bodies, path
        assert got in (errno.ENOENT, errno.ENAMETOOLONG, errno.EISDIR), (path, got)

    for name in ("L" * 256, "日" * 85 + "x", "🎉" * 64, "L" * 256 + "/child", "deep/" + "ü" * 128):
        with pytest.raises(OSError) as err:
            os.lstat(mnt / name)
        assert err.value.errno in (errno.ENOENT, errno.ENAMETOOLONG), name
    # the names '.', '..' and '' never reach s3fuse: the kernel resolves them
    assert os.stat(f"{mnt}/x/..").st_ino == os.stat(mnt).st_ino
    assert stat.S_ISDIR(os.stat(f"{mnt}/x/.").st_mode)
    assert os.listdir(mnt / "x") == [] and os.listdir(mnt / "a") == [] and os.listdir(mnt / "deep") == ["ü" * 100]

    files, _ = walk(mnt)
    assert not set(files.values()) & skipped_bodies


def test_skipped_keys_unreachable_in_versions(s3, bucket, mount):
    """.versions/ lists no skipped key (versions.py skips them), and must not find one by name either.

    Not on the corpus bucket: moto's ListObjectVersions does not URL-encode keys, so a
    key with a control character makes XML that botocore cannot parse (EIO).
    """
    put_objects(s3, bucket, {k: CORPUS[k] for k in ("L" * 256, "L" * 256 + "/child", "日" * 85 + "x", "ordinary.txt")})
    mnt = mount(bucket)
    assert not {"L" * 256, "日" * 85 + "x"} & set(os.listdir(mnt / ".versions"))
    for name in ("L" * 256, "L" * 256 + "/child", "日" * 85 + "x"):
        with pytest.raises(OSError) as err:
            os.lstat(mnt / ".versions" / name)
        assert err.value.errno in (errno.ENOENT, errno.ENAMETOOLONG), name


def test_file_and_prefix(s3, bucket, mount):
    """docs/semantics.md: only the directory is visible; the object shows again once
    nothing remains under its prefix."""
    put_objects(s3, bucket, {k: CORPUS[k] for k in ("both", "both/inner", "lone", "lone/", "ordinary.txt")})
    mnt = mount(bucket)
    # lookups before any listing, then the listing
    for name in ("both", "lone"):
        assert stat.S_ISDIR(os.lstat(mnt / name).st_mode), name
    assert sorted(os.listdir(mnt)) == ["both", "lone", "ordinary.txt"]
    assert os.listdir(mnt / "both") == ["inner"] and os.listdir(mnt / "lone") == []
    assert (mnt / "both/inner").read_bytes() == CORPUS["both/inner"]
    log = mount.log_text(mnt)
    assert "key 'both' is both a file and a directory; the directory hides the file" in log
    assert "key 'lone' is both a file and a directory; the directory hides the file" in log
    mount.check(mnt)

    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "both/inner"}, {"Key": "lone/"}]})
    mnt = mount(bucket)
    for name in ("both", "lone"):
        assert stat.S_ISREG(os.lstat(mnt / name).st_mode), name
        assert (mnt / name).read_bytes() == CORPUS[name]


def test_control_dir_names_as_keys(corpus, mount):
    """Keys '.s3' and '.versions' at the mount root are hidden by the control directories
    (which stay reachable); below the root they are ordinary files."""
    mnt = mount(corpus)
    assert not {".s3", ".versions"} & set(os.listdir(mnt))
    assert stat.S_ISDIR(os.stat(mnt / ".s3").st_mode)
    assert "location" in os.listdir(mnt / ".s3")  # the bucket's configuration, not the key .s3/cors
    assert not (mnt / ".s3/cors").exists()
    assert stat.S_ISDIR(os.stat(mnt / ".versions").st_mode)
    assert (mnt / "sub/.s3").read_bytes() == CORPUS["sub/.s3"]
    assert (mnt / "sub/.versions").read_bytes() == CORPUS["sub/.versions"]
    assert {".s3", ".versions", "ordinary.txt"} <= set(os.listdir(mnt / "sub"))


def test_writes_stay_under_the_prefix(s3, bucket, mount, tmp_path):
    """Odd names and '..' tricks written through a BUCKET:pre mount: every new key starts
    with 'pre/', is the name asked for, and no key outside the prefix changes."""
    outside = {"outside": b"o", "pre": b"a file named like the prefix", "pre-sibling/x": b"s", "prex": b"x"}
    put_objects(s3, bucket, {**outside, "pre/existing": b"e"})
    before = keys_of(s3, bucket)
    mnt = mount(bucket + ":pre")
    # A complete listing answers the lookups before each create: without it, moto fails
    # those of '. ' and '\t' (see moto_can_look_up).
    assert os.listdir(mnt) == ["existing"]

    names = ["...", "..x", "x..", ". ", " .", "..\\x", "%2F..%2Fescape", "%2e%2e", "a\\..\\..\\b", "ctl\x01",
             "\t", "\\", "+", "%00", "\u00e9", "e\u0301", ".s3x", ".versionsx", "N" * 255]  # fmt: skip
    for name in names:
        (mnt / name).write_bytes(f"wrote {name!r}".encode())
    (mnt / "sub").mkdir()
    (mnt / "sub/...").mkdir()
    (mnt / "sub/.../f").write_bytes(b"in three dots")
    (mnt / "sub/../via-dotdot").write_bytes(b"via ..")  # the kernel resolves '..': pre/via-dotdot
    (mnt / "sub/.s3").write_bytes(b"not reserved below the root")
    os.symlink("../../../outside", mnt / "link-out")  # a target is content, not a key
    os.rename(mnt / "sub/.../f", mnt / "sub/.../../../renamed")
    (tmp_path / "escape").unlink(missing_ok=True)
    (mnt / "sub/../../escape").write_bytes(b"local")  # above the mount root: the local disk, not S3
    assert (tmp_path / "escape").read_bytes() == b"local"
    with pytest.raises(OSError) as err:
        os.rename(mnt / "...", mnt / "../moved-out")
    assert err.value.errno == errno.EXDEV
    with pytest.raises(OSError) as err:
        (mnt / ("N" * 256)).write_bytes(b"too long")
    assert err.value.errno == errno.ENAMETOOLONG
    with pytest.raises(OSError) as err:
        os.open(os.fsencode(mnt) + b"/bad-\xff", os.O_CREAT | os.O_WRONLY, 0o644)
    assert err.value.errno == errno.EINVAL
    with pytest.raises(OSError) as err:
        (mnt / ".s3/evil").write_bytes(b"no")
    assert err.value.errno == errno.EPERM
    with pytest.raises(OSError) as err:
        (mnt / ".versions/evil").write_bytes(b"no")
    assert err.value.errno == errno.EROFS
    mount.check(mnt)  # everything is in S3

    after = keys_of(s3, bucket)
    new = set(after) - set(before)
    assert all(key.startswith("pre/") for key in new), sorted(new)
    assert {k: after[k]["ETag"] for k in outside} == {k: before[k]["ETag"] for k in outside}
    expected = {f"pre/{n}" for n in names} | {"pre/sub/", "pre/sub/.../", "pre/via-dotdot", "pre/sub/.s3"}
    expected |= {"pre/link-out", "pre/renamed"}
    assert new == expected
    for name in names:
        assert s3.get_object(Bucket=bucket, Key=f"pre/{name}")["Body"].read() == f"wrote {name!r}".encode()
    assert s3.get_object(Bucket=bucket, Key="pre/renamed")["Body"].read() == b"in three dots"
    assert s3.get_object(Bucket=bucket, Key="pre/link-out")["Body"].read() == b"../../../outside"


def test_corpus_on_seaweedfs(seaweed, mount):
    """The corpus listing on a second server. SeaweedFS refuses some keys and rewrites
    others; whatever it keeps must show through the mount as on moto."""
    client = boto_client(seaweed.url)
    prefix = f"odd-{os.getpid()}-{unique_bucket_name()}"
    corpus = {**CORPUS, "ctl\nnewline": b"body of a newline"}  # moto cannot store this one
    refused = {}
    for key, body in corpus.items():
        try:
            client.put_object(Bucket=seaweed.BUCKET, Key=f"{prefix}/{key}", Body=body)
        except ClientError as exc:
            refused[key] = exc.response["Error"]["Code"]
    # Seen with SeaweedFS 4.48: it refuses '.' and '..' components (InvalidRequest), a last
    # component over 255 bytes and keys over 1,024 bytes (KeyTooLongError), and a marker
    # 'lone/' beside an object 'lone' (ExistingObjectIsFile); it stores 'a//b' as 'a/b',
    # '/lead' as 'lead' and '\\' as '/', and drops a marker's body. Its own listing is the
    # ground truth here, so another version may differ in these.
    print("SeaweedFS refused:", refused)
    stored = {
        key[len(prefix) + 1 :]: client.get_object(Bucket=seaweed.BUCKET, Key=key)["Body"].read()
        for key in keys_of(client, seaweed.BUCKET, prefix + "/")
    }
    files, dirs = expected_tree(stored)
    assert "ctl\nnewline" in files and "e\u0301" in files and "\u00e9" in files

    mnt = mount(f"{seaweed.BUCKET}:{prefix}", "--endpoint-url", seaweed.url, endpoint=False)
    run(["ls", "-laR", str(mnt)], timeout=30)
    run(["du", "-sb", str(mnt)], timeout=30)
    assert walk(mnt) == (files, dirs)
    assert mount.get(mnt).proc.poll() is None
    mount.check(mnt)
