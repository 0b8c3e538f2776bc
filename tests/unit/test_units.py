"""Unit and property tests of the pure pieces: names, options, metadata, listing rules, errors."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import io
import itertools
import json
import logging
import os
import stat
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import botocore.exceptions
import pyfuse3
import pytest
import trio
from conftest import boto_client
from faultproxy import Rule
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from s3fuse import names
from s3fuse.blockcache import BlockCache
from s3fuse.extents import Extents
from s3fuse.listing import DirectoryStream
from s3fuse.metadata import (
    EntryInfo,
    MetadataCache,
    apply_posix_metadata,
    directory,
    format_seconds_ns,
    from_head,
    parse_seconds_ns,
)
from s3fuse.mount import describe_failure
from s3fuse.options import build_parser, config_of, expand_mount_options, parse_args, parse_mode, parse_size
from s3fuse.progress import Progress
from s3fuse.renamelog import RenameLog
from s3fuse.s3client import (
    ClientSettings,
    LeanModelLoader,
    RedactSecrets,
    S3Client,
    S3Error,
    boto_session,
    make_boto_client,
    translate,
)
from s3fuse.write.journal import Journal, JournalInUse, journals

# Characters an S3 key realistically holds: no surrogates (not UTF-8), no NUL, no U+10FFFF
# (a noncharacter; start_after_for pads with it).
KEY_CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="\x00\U0010ffff")
NAME_CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="/")


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("a", True),
        ("file with spaces.txt", True),
        ("日本語", True),
        ("...", True),
        (".hidden", True),
        ("n" * 255, True),
        ("é" * 127 + "z", True),  # 255 bytes
        ("😀" * 63 + "abc", True),  # 255 bytes
        ("", False),
        (".", False),
        ("..", False),
        ("a\0b", False),
        ("n" * 256, False),
        ("é" * 128, False),  # 128 characters, 256 bytes
        ("😀" * 64, False),
    ],
)
def test_invalid_reason_examples(name, valid):
    assert (names.invalid_reason(name) is None) == valid


def _filesystem_accepts(directory: str, name: str) -> bool:
    try:
        os.mkdir(os.path.join(directory, name))
    except (OSError, ValueError):
        return False
    os.rmdir(os.path.join(directory, name))
    return True


# deadline=None: a real disk, slow when the machine is busy
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.one_of(
        st.text(NAME_CHARS, max_size=12),
        st.text(NAME_CHARS, min_size=60, max_size=140),  # around 255 bytes once encoded
        st.sampled_from(["", ".", "..", "a\0", "x" * 255, "x" * 256]),
    )
)
def test_invalid_reason_agrees_with_a_real_file_system(name):
    """A key component is a valid name exactly when the kernel accepts it as one."""
    with tempfile.TemporaryDirectory() as d:
        assert (names.invalid_reason(name) is None) == _filesystem_accepts(d, name)


def test_path_helpers():
    assert names.join("", "a") == "a"
    assert names.join("a/b", "c") == "a/b/c"
    assert names.split("a/b/c") == ("a/b", "c")
    assert names.split("c") == ("", "c")
    assert names.dir_prefix("", "") == ""
    assert names.dir_prefix("pre/", "") == "pre/"
    assert names.dir_prefix("pre/", "a/b") == "pre/a/b/"
    assert names.file_key("pre/", "a/b") == "pre/a/b"
    assert names.decode_name("é".encode()) == "é"
    assert names.decode_name(b"\xff\xfe") is None


@example(key="a\ue000", cut=1, middle="b", tail="")  # U+E000 follows the surrogates
@example(key="\ue000", cut=0, middle="0", tail="")
@example(key="a\ue001", cut=1, middle="\ue000", tail="zz")
@example(key="b", cut=0, middle="a", tail="\uffff")
@example(key="a\x01", cut=1, middle="\x01", tail="")
@given(
    key=st.text(KEY_CHARS, min_size=1, max_size=8),
    cut=st.integers(0, 8),
    middle=KEY_CHARS,
    tail=st.text(KEY_CHARS, max_size=4),
)
def test_start_after_for(key, cut, middle, tail):
    """start_after_for(k) sorts before k (by UTF-8 bytes, as S3 sorts) and no realistic key lies between."""
    after = names.start_after_for(key)
    after_bytes = after.encode("utf-8")  # must be sendable to S3 at all
    key_bytes = key.encode("utf-8")
    assert after_bytes < key_bytes
    # Every string between two strings shares their common prefix, so candidates near the
    # key are those that matter: a prefix of it, then a different character, then anything.
    cut = min(cut, len(key))
    for candidate in (key[:cut] + middle + tail, key[:cut], key[:-1] + middle, key[:-1] + middle + tail):
        c = candidate.encode("utf-8")
        assert not (after_bytes < c < key_bytes), (key, candidate)


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4096", 4096),
        ("0", 0),
        ("512K", 512 << 10),
        ("512k", 512 << 10),
        ("8M", 8 << 20),
        ("64MiB", 64 << 20),
        ("64mib", 64 << 20),
        ("1g", 1 << 30),
        ("2T", 2 << 40),
        (" 8 MB ", 8 << 20),
        ("100b", 100),
    ],
)
def test_parse_size_examples(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "M", "1.5M", "-1", "8Q", "8Mi", "8 M B", "0x10", "1e6", "eight"])
def test_parse_size_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
        parse_size(text)


UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@given(
    n=st.integers(0, 10**12),
    unit=st.sampled_from(sorted(UNITS)),
    upper=st.booleans(),
    suffix=st.sampled_from(["", "b", "B", "ib", "iB"]),
    left=st.sampled_from(["", " "]),
    mid=st.sampled_from(["", " "]),
    right=st.sampled_from(["", " ", "\t"]),
)
def test_parse_size_property(n, unit, upper, suffix, left, mid, right):
    if not unit and suffix.lower() == "ib":
        suffix = ""
    text = f"{left}{n}{mid}{unit.upper() if upper else unit}{suffix}{right}"
    assert parse_size(text) == n * UNITS[unit]


@given(st.text(max_size=12))
def test_parse_size_never_fails_otherwise(text):
    try:
        value = parse_size(text)
    except argparse.ArgumentTypeError:
        return
    assert isinstance(value, int) and value >= 0


def test_parse_mode():
    assert parse_mode("644") == 0o644
    assert parse_mode("0755") == 0o755
    with pytest.raises(argparse.ArgumentTypeError):
        parse_mode("rwx")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_mode("9")


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", *(v for v in os.environ if v.startswith("S3FUSE_"))):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("S3FUSE_CONFIG", os.devnull)  # no config file of the machine's


@pytest.mark.parametrize(
    ("argv", "expanded"),
    [
        (["b", "m", "-o", "ro,attr_ttl=5"], ["b", "m", "--read-only", "--attr-ttl=5"]),
        (["-oro", "b", "m"], ["--read-only", "b", "m"]),
        (["b", "m", "-o", "allow_other", "-o", "block_size=1M"], ["b", "m", "--allow-other", "--block-size=1M"]),
        (["b", "m", "-o", "endpoint_url=http://h:9000/x"], ["b", "m", "--endpoint-url=http://h:9000/x"]),
        (["b", "m", "-o", "rw,defaults,noauto,_netdev,nofail,x-systemd.automount,comment=x"], ["b", "m"]),
        (["b", "m", "-o", "ro,,read_only"], ["b", "m", "--read-only", "--read-only"]),
        (["b", "m", "-o"], ["b", "m"]),
        (["b", "m", "--foreground", "--log-level", "debug"], ["b", "m", "--foreground", "--log-level", "debug"]),
    ],
)
def test_expand_mount_options(clean_env, argv, expanded):
    assert expand_mount_options(argv, build_parser()) == expanded


@pytest.mark.parametrize("item", ["bogus", "attr-tl=5", "o", "f"])
def test_expand_mount_options_unknown(clean_env, capsys, item):
    with pytest.raises(SystemExit) as exit_:
        expand_mount_options(["b", "m", "-o", f"ro,{item}"], build_parser())
    assert exit_.value.code == 2
    assert f"unknown mount option: -o {item}" in capsys.readouterr().err


OPTION_VALUES = {
    "block_size": st.sampled_from(["64K", "1M", "8M", "16MiB"]),
    "read_ahead": st.sampled_from(["0", "1M", "64M"]),
    "cache_size": st.sampled_from(["1M", "1G"]),
    "attr_ttl": st.sampled_from(["0", "1", "2.5", "3600"]),
    "dir_ttl": st.sampled_from(["0", "60"]),
    "negative_ttl": st.sampled_from(["0", "1.5"]),
    "lookup_window": st.sampled_from(["1", "1000"]),
    "uid": st.sampled_from(["0", "1000"]),
    "file_mode": st.sampled_from(["600", "0444"]),
    "log_level": st.sampled_from(["debug", "error"]),
    "endpoint_url": st.sampled_from(["http://127.0.0.1:9000"]),
    "region": st.sampled_from(["eu-west-1"]),
    "read_only": st.none(),
    "allow_other": st.none(),
    "posix_metadata": st.none(),
    "foreground": st.none(),
}


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # clean_env is idempotent
@given(st.dictionaries(st.sampled_from(sorted(OPTION_VALUES)), st.none(), max_size=8).flatmap(
    lambda chosen: st.fixed_dictionaries({k: OPTION_VALUES[k] for k in chosen})
))  # fmt: skip
def test_dash_o_reaches_what_flags_reach(clean_env, options):
    flags, items = [], []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag] if value is None else [flag, value]
        items.append(name if value is None else f"{name}={value}")
    via_flags = parse_args(["bucket:pre", "/mnt", *flags])
    via_o = parse_args(["bucket:pre", "/mnt", "-o", ",".join(items)])
    assert via_flags == via_o


@pytest.mark.parametrize(
    ("spec", "bucket", "prefix"),
    [("b", "b", ""), ("b:", "b", ""), ("b:/", "b", ""), ("b:a", "b", "a/"), ("b:/a/b//", "b", "a/b/")],
)
def test_parse_args_prefix(clean_env, spec, bucket, prefix):
    opts = parse_args([spec, "rel/mnt"])
    assert (opts.mount.bucket_name, opts.mount.prefix) == (bucket, prefix)
    assert opts.mount.mountpoint == os.path.abspath("rel/mnt")
    assert opts.s3.addressing_style == "auto"
    assert parse_args([spec, "m", "--endpoint-url", "http://x"]).s3.addressing_style == "path"


def test_every_option_reaches_the_config(clean_env):
    config = parse_args(["b", "/mnt"])
    fields = {f.name for group in dataclasses.fields(config) for f in dataclasses.fields(getattr(config, group.name))}
    plumbing = {"help", "version", "mount_options", "config", "sse_c_key_file"}  # the key file: as its key
    assert {a.dest for a in build_parser()._actions if a.option_strings} - plumbing <= fields


def test_config_of_is_the_config_of_the_command_line(clean_env):
    made = config_of("b", "rel/mnt", write_back=True, region="eu-west-1", cache_dir="rel/cache")
    assert made == parse_args(["b", "rel/mnt", "--write-back", "--region", "eu-west-1", "--cache-dir", "rel/cache"])
    assert made.for_bucket("other").mount.bucket_name == "other"


@pytest.mark.parametrize(
    ("argv", "message"), [([":pre", "m"], "BUCKET is empty"), (["b", "m", "--block-size", "32K"], "at least 64K")]
)
def test_parse_args_errors(clean_env, capsys, argv, message):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


CONFIG = """
cache-size = "128M"
attr_ttl = 5
read-only = true
log-level = "warning"

[bucket.photos]
attr-ttl = 60
storage_class = "STANDARD_IA"
"""


def test_config_file_environment_and_command_line(clean_env, monkeypatch, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    monkeypatch.setenv("S3FUSE_CONFIG", str(config))
    other = parse_args(["other", "/mnt"])
    assert (other.cache.cache_size, other.cache.attr_ttl, other.mount.read_only, other.s3.storage_class) == (
        128 << 20,
        5,
        True,
        None,
    )
    assert other.cache.dir_ttl == 30  # not in the file: the built-in default
    photos = parse_args(["photos:2026", "/mnt"])  # its [bucket.photos] table wins over the top level
    assert (photos.cache.attr_ttl, photos.s3.storage_class, photos.mount.log_level) == (60, "STANDARD_IA", "warning")
    monkeypatch.setenv("S3FUSE_ATTR_TTL", "9")
    monkeypatch.setenv("S3FUSE_READ_ONLY", "no")
    env = parse_args(["photos", "/mnt"])  # the environment wins over the file
    assert (env.cache.attr_ttl, env.mount.read_only, env.cache.cache_size) == (9, False, 128 << 20)
    for argv in (["photos", "/mnt", "--attr-ttl", "2"], ["photos", "/mnt", "-o", "attr_ttl=2"]):
        assert parse_args(argv).cache.attr_ttl == 2  # the command line wins over everything
    monkeypatch.delenv("S3FUSE_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert parse_args(["b", "/mnt"]).cache.cache_size == 64 << 20  # no file at the default place: fine
    (tmp_path / "xdg/s3fuse").mkdir(parents=True)
    (tmp_path / "xdg/s3fuse/config.toml").write_text('cache_size = "1G"\n')
    assert parse_args(["b", "/mnt"]).cache.cache_size == 1 << 30
    assert parse_args(["b", "/mnt", "-o", f"config={config}"]).cache.cache_size == 128 << 20


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ('cache_size = "lots"', {}, "config file CONFIG: --cache-size: not a size: 'lots'"),
        ("attr_tll = 5", {}, "config file CONFIG: unknown option 'attr_tll'"),
        ("mountpoint = '/x'", {}, "unknown option 'mountpoint'"),
        ("read_only = 'maybe'", {}, "--read-only is on or off"),
        ('acl = "everyone"', {}, "--acl must be one of private,"),
        ("[bucket.b]\nlist_version = 3", {}, "config file CONFIG [bucket.b]: --list-version must be one of 1, 2"),
        ("cache_size = [1]", {}, "--cache-size needs a value"),
        ("cache_size = ", {}, "config file CONFIG: Invalid value"),
        ("", {"S3FUSE_TIMEOUT": "soon"}, "environment variable S3FUSE_TIMEOUT: --timeout: could not convert"),
    ],
)
def test_config_errors_name_their_source(clean_env, monkeypatch, capsys, tmp_path, text, env, message):
    config = tmp_path / "config.toml"
    config.write_text(text)
    monkeypatch.setenv("S3FUSE_CONFIG", str(config))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exc:
        parse_args(["b", "/mnt"])
    assert exc.value.code == 2
    assert message.replace("CONFIG", str(config)) in capsys.readouterr().err


def test_missing_config_file(clean_env, capsys, tmp_path):
    with pytest.raises(SystemExit):
        parse_args(["b", "/mnt", "--config", str(tmp_path / "nope.toml")])
    assert f"config file {tmp_path / 'nope.toml'}: No such file or directory" in capsys.readouterr().err


# ---------------------------------------------------------------- progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal(capsys):
    term = FakeTerminal()
    progress = Progress("aborting uploads", total=4, stream=term)
    progress.advance()
    progress.print("aborted one")
    progress.advance(3)
    progress.finish()
    shown = term.getvalue()
    assert "aborting uploads: [#######                       ] 1/4 (25%)" in shown
    assert shown.endswith("4/4 (100%)\r\033[K")  # cleared at the end: the terminal is left clean
    assert capsys.readouterr().out == "aborted one\n"  # ordinary output is not torn by the bar


def test_progress_lines_elsewhere(monkeypatch):
    log = io.StringIO()
    now = [100.0]
    monkeypatch.setattr("s3fuse.progress.time.monotonic", lambda: now[0])
    progress = Progress("listing multipart uploads", stream=log, interval=5)
    for _ in range(10):
        progress.advance(100)
        now[0] += 1
    progress.finish()
    # the first step, then one line per 5 s; no escape codes
    assert log.getvalue() == "listing multipart uploads: 100\nlisting multipart uploads: 600\n"


# ---------------------------------------------------------------- metadata


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1700000000", 1_700_000_000_000_000_000),
        ("1700000000.123456789", 1_700_000_000_123_456_789),
        ("1700000000.5", 1_700_000_000_500_000_000),
        ("1700000000.1234567891", 1_700_000_000_123_456_789),  # beyond nanoseconds: truncated
        (" 42 ", 42_000_000_000),
        ("0", 0),
        ("-5", -5_000_000_000),
        ("", None),
        ("abc", None),
        ("1.2.3", None),
        ("1e9", None),
        (".5", None),
    ],
)
def test_parse_seconds_ns_examples(text, ns):
    assert parse_seconds_ns(text) == ns


def seconds_text(ns: int) -> str:
    sign = "-" if ns < 0 else ""
    return f"{sign}{abs(ns) // 10**9}.{abs(ns) % 10**9:09d}"


@given(st.integers(0, 10**20))
def test_parse_seconds_ns_round_trip(ns):
    assert parse_seconds_ns(seconds_text(ns)) == ns
    assert parse_seconds_ns(str(ns // 10**9)) == ns // 10**9 * 10**9


@example(-500_000_000)  # "-0.5": half a second before the epoch
@example(-1_500_000_000)
@given(st.integers(-(10**20), -1))
def test_parse_seconds_ns_round_trip_negative(ns):
    """rclone writes mtime as fractional seconds; files from before 1970 have negative ones."""
    assert parse_seconds_ns(seconds_text(ns)) == ns


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (1_700_000_000_000_000_000, "1700000000"),  # whole seconds: as s3fs-fuse writes them
        (1_700_000_000_000_000_123, "1700000000.000000123"),  # nine digits, which s3fs-fuse reads as ns
        (-86_400_250_000_000, "-86400.250000000"),  # before 1970: rclone's signed form
        (-500_000_000, "-0.500000000"),
        (0, "0"),
    ],
)
def test_format_seconds_ns(ns, text):
    assert format_seconds_ns(ns) == text


@given(st.integers(-(2**63) + 1, 2**63 - 1))
def test_format_seconds_ns_round_trip(ns):
    assert parse_seconds_ns(format_seconds_ns(ns)) == ns


@example("²")  # str.isdigit() is true for it, int() refuses it
@example("1700000000.³")
@given(st.text(max_size=20))
def test_parse_seconds_ns_never_raises(text):
    result = parse_seconds_ns(text)
    assert result is None or isinstance(result, int)


def test_apply_posix_metadata():
    info = apply_posix_metadata(
        EntryInfo(is_dir=False, size=3), {"mode": "33216", "uid": "1234", "gid": "5678", "mtime": "1600000000.25"}
    )
    assert (info.mode, info.uid, info.gid) == (0o100700, 1234, 5678)
    assert info.mtime_ns == 1_600_000_000_250_000_000
    assert info.from_head

    # an object may be a symlink (s3fs-fuse's representation) ...
    link = apply_posix_metadata(EntryInfo(is_dir=False), {"mode": str(0o120777)})
    assert (link.mode, link.is_symlink, link.kind) == (0o120777, True, 0o120000)
    # ... or a FIFO, socket or device node (s3fs-fuse's mknod: an empty object), with its rdev ...
    fifo = apply_posix_metadata(EntryInfo(is_dir=False), {"mode": str(stat.S_IFIFO | 0o644)})
    assert (fifo.kind, fifo.mode, fifo.rdev) == (stat.S_IFIFO, stat.S_IFIFO | 0o644, None)
    device = apply_posix_metadata(EntryInfo(is_dir=False), {"mode": str(stat.S_IFCHR | 0o600), "rdev": "259"})
    assert (device.kind, device.rdev) == (stat.S_IFCHR, 259)
    assert device.posix_headers(with_mtime=False) == {"mode": str(stat.S_IFCHR | 0o600), "rdev": "259"}
    assert "rdev" not in apply_posix_metadata(EntryInfo(is_dir=False), {"mode": "420", "rdev": "1"}).posix_headers(
        with_mtime=False
    )
    # ... but a mode whose type the entry cannot have keeps its permission bits only
    assert apply_posix_metadata(EntryInfo(is_dir=False), {"mode": str(0o040644)}).mode == 0o644
    assert apply_posix_metadata(EntryInfo(is_dir=True), {"mode": str(stat.S_IFIFO | 0o755)}).mode == 0o755
    assert apply_posix_metadata(EntryInfo(is_dir=True), {"mode": str(0o120777)}).mode == 0o777
    assert apply_posix_metadata(EntryInfo(is_dir=False), {"mode": "420"}).mode == 0o644
    # garbage is ignored, defaults stay
    info = apply_posix_metadata(EntryInfo(is_dir=False, mtime_ns=7), {"mode": "rw", "uid": "-1", "mtime": "soon"})
    assert (info.mode, info.uid, info.gid, info.mtime_ns) == (None, None, None, 7)
    assert apply_posix_metadata(EntryInfo(is_dir=False), {}).from_head


@pytest.mark.parametrize("field", ["mode", "uid", "gid", "mtime", "atime", "rdev"])
def test_apply_posix_metadata_ignores_non_ascii_digits(field):
    info = apply_posix_metadata(EntryInfo(is_dir=False), {field: "²"})
    assert (info.mode, info.uid, info.gid, info.mtime_ns, info.atime_ns, info.rdev) == (None,) * 6


NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.tuples(st.integers(-(2**66), 2**66), st.integers(0, 10**12)).map(lambda t: f"{t[0]}.{t[1]}"),
    st.sampled_from(["4294967295", "4294967296", "65535", "65536", "9223372036854775807", "9223372036854775808"]),
    st.text(max_size=8),
)


@example({"uid": "4294967296"})
@example({"gid": "99999999999999999999"})
@example({"mtime": "9223372036854775808"})
@example({"mtime": "-9223372036854775809.5", "mode": "4294967296"})
@given(st.fixed_dictionaries({}, optional=dict.fromkeys(("mode", "uid", "gid", "mtime", "atime", "rdev"), NUMBERS)))
def test_posix_metadata_always_fits_the_kernel(meta):
    """Whatever an object's headers say, the attributes fit pyfuse3's EntryAttributes (else a handler crashes)."""
    info = apply_posix_metadata(EntryInfo(is_dir=False, size=1, mtime_ns=0), meta)
    attr = pyfuse3.EntryAttributes()
    attr.st_mode = info.kind | stat.S_IMODE(info.mode if info.mode is not None else 0o644)
    attr.st_uid = info.uid if info.uid is not None else 0
    attr.st_gid = info.gid if info.gid is not None else 0
    attr.st_mtime_ns = attr.st_ctime_ns = info.mtime_ns
    attr.st_atime_ns = info.atime_ns if info.atime_ns is not None else 0
    attr.st_rdev = info.rdev if info.rdev is not None else 0


def test_headers_a_head_read_complete_a_listing_entry_of_the_same_write():
    """Listings carry no headers: a device node stays one, with its number and atime."""
    cache = MetadataCache(30, 5, 30, 100)
    meta = {"mode": str(stat.S_IFBLK | 0o600), "rdev": "7", "atime": "5.5"}
    cache.remember_headers("dev", apply_posix_metadata(EntryInfo(is_dir=False, etag='"e"', last_modified_ns=1), meta))
    listed = cache.with_headers("dev", EntryInfo(is_dir=False, etag='"e"', last_modified_ns=1))
    assert (listed.kind, listed.rdev, listed.atime_ns) == (stat.S_IFBLK, 7, 5_500_000_000)
    assert cache.with_headers("dev", EntryInfo(is_dir=False, etag='"other"')).kind == stat.S_IFREG


def test_from_head():
    when = datetime(2020, 9, 13, 12, 26, 40, tzinfo=UTC)
    info = from_head({"ContentLength": 12, "LastModified": when, "ETag": '"abc"', "Metadata": {"uid": "7"}})
    assert (info.is_dir, info.size, info.etag, info.uid) == (False, 12, '"abc"', 7)
    assert info.mtime_ns == 1_600_000_000_000_000_000
    assert info.kind == stat.S_IFREG
    assert directory().kind == stat.S_IFDIR and directory().is_dir


def test_metadata_cache():
    cache = MetadataCache(attr_ttl=60, negative_ttl=60, dir_ttl=60, max_entries=100)
    info = EntryInfo(is_dir=False, size=1)
    assert cache.get("a") is None
    cache.put("a", info)
    assert cache.get("a") is info
    cache.put_negative("a")
    negative = cache.get("a")
    assert negative is not None and not isinstance(negative, EntryInfo)
    cache.put("a", info)
    assert cache.get("a") is info
    cache.forget("a")
    assert cache.get("a") is None
    items = [(f"n{i}", info) for i in range(25)]
    cache.put_listing("d", items)
    assert cache.get_listing("d") == items
    cache.put_listing("big", items * 2)  # more than a quarter of the cache: not kept
    assert cache.get_listing("big") is None
    no_negatives = MetadataCache(attr_ttl=60, negative_ttl=0, dir_ttl=0, max_entries=100)
    no_negatives.put_negative("x")
    assert no_negatives.get("x") is None
    no_negatives.put_listing("d", items)
    assert no_negatives.get_listing("d") is None


# ---------------------------------------------------------------- listing rules

WHEN = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def obj(key: str, size: int = 1) -> dict:
    return {"Key": key, "Size": size, "LastModified": WHEN, "ETag": f'"{key}"'}


def prefixes(*names_: str) -> list[dict]:
    return [{"Prefix": p} for p in names_]


@pytest.fixture(scope="module")
def stream_of(moto):
    """DirectoryStream(prefix) over a real client; feed() never talks to S3."""
    s3 = S3Client(boto_client(moto.url), "unused-bucket", ClientSettings(endpoint_url=moto.url))
    return lambda prefix: DirectoryStream(s3, prefix)


def summary(entries):
    return [(name, "dir" if info.is_dir else info.size) for name, info in entries]


def test_stream_asks_for_the_next_page_ahead_and_again_after_it_failed(s3, bucket, faulty):
    """With a nursery, page n+1 is asked for as page n is handed out; a failed one fails the
    next_batch that takes it, and the one after asks for the same page again."""
    keys = [f"d/k{i}" for i in range(5)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    client = S3Client(boto_client(faulty.url), bucket, ClientSettings(endpoint_url=faulty.url, max_attempts=1))
    faulty.add(Rule("internal", query="continuation-token", times=2, method="GET"))  # botocore retries once
    listed = []

    async def main():
        async with trio.open_nursery() as nursery:
            stream = DirectoryStream(client, "d/", page_size=2, nursery=nursery)
            listed.extend(await stream.next_batch())
            with trio.fail_after(10):
                while len(faulty.log) < 2:  # the second page, asked for before anyone wanted it
                    await trio.sleep(0.01)
            with pytest.raises(S3Error):
                await stream.next_batch()
            while not stream.done:
                listed.extend(await stream.next_batch())

    trio.run(main)
    assert [name for name, _ in listed] == [key[2:] for key in keys]
    pages = [e for e in faulty.log if e.method == "GET"]
    assert [e.fault for e in pages] == [None, "internal", "internal", None, None]
    assert pages[1].query == pages[3].query


def test_feed_directory_wins_over_file(stream_of, caplog):
    stream = stream_of("d/")
    page = {
        "Contents": [obj("d/"), obj("d/x", 5), obj("d/x.txt", 6), obj("d/y", 7)],
        "CommonPrefixes": prefixes("d/x/"),
    }
    with caplog.at_level(logging.WARNING):
        assert summary(stream.feed(page)) == [("x.txt", 6), ("x", "dir")]
    assert summary(stream.release_held()) == [("y", 7)]
    assert "'d/x' is both a file and a directory" in caplog.text


def test_feed_holds_files_across_pages(stream_of):
    stream = stream_of("")
    assert summary(stream.feed({"Contents": [obj("a", 1), obj("b", 2)]})) == [("a", 1)]
    assert summary(stream.feed({"Contents": [obj("b-c", 3)]})) == []  # 'b-c' < 'b/': 'b' may still be a dir
    assert summary(stream.feed({"CommonPrefixes": prefixes("b/"), "Contents": [obj("c", 4)]})) == [
        ("b-c", 3),
        ("b", "dir"),
    ]
    assert summary(stream.feed({"Contents": [obj("d", 5)]})) == [("c", 4)]
    assert summary(stream.release_held()) == [("d", 5)]
    assert stream.release_held() == []


def test_feed_file_released_when_no_directory_follows(stream_of):
    stream = stream_of("p/")
    assert summary(stream.feed({"Contents": [obj("p/f"), obj("p/f.txt")], "CommonPrefixes": prefixes("p/g/")})) == [
        ("f", 1),
        ("f.txt", 1),
        ("g", "dir"),
    ]


def test_feed_skips_invalid_names(stream_of, caplog):
    stream = stream_of("d/")
    page = {
        "Contents": [obj("d/."), obj("d/.."), obj("d/" + "x" * 256), obj("d/ok"), obj("d/" + "y" * 255)],
        "CommonPrefixes": prefixes("d//", "d/./", "d/sub/"),
    }
    with caplog.at_level(logging.WARNING):
        entries = stream.feed(page) + stream.release_held()
    assert sorted(name for name, _ in entries) == ["ok", "sub", "y" * 255]
    for key in ("d/.", "d/..", "d/" + "x" * 256, "d//", "d/./"):
        assert f"skipping key {key!r}" in caplog.text


def test_feed_entry_attributes(stream_of):
    stream = stream_of("")
    [(name, info)] = stream.feed({"Contents": [obj("f", 1234)]}) + stream.release_held()
    assert (name, info.size, info.etag, info.is_dir) == ("f", 1234, '"f"', False)
    assert info.mtime_ns == int(WHEN.timestamp()) * 10**9


# ---------------------------------------------------------------- errors


def client_error(code: str | None, status: int, operation: str = "GetObject"):
    error = {"Code": code, "Message": f"{code} message"} if code else {}
    return botocore.exceptions.ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


@pytest.mark.parametrize(
    ("exc", "errno_", "code"),
    [
        (client_error("NoSuchKey", 404), errno.ENOENT, "NoSuchKey"),
        (client_error("404", 404, "HeadObject"), errno.ENOENT, "404"),
        (client_error(None, 404, "HeadObject"), errno.ENOENT, "404"),
        (client_error("AccessDenied", 403), errno.EACCES, "AccessDenied"),
        (client_error(None, 403, "HeadObject"), errno.EACCES, "403"),
        (client_error("PreconditionFailed", 412), errno.ESTALE, "PreconditionFailed"),
        (client_error("InvalidRange", 416), errno.EINVAL, "InvalidRange"),
        (client_error("SlowDown", 503), errno.EIO, "SlowDown"),
        (client_error("SomethingNew", 400), errno.EIO, "SomethingNew"),
        (client_error(None, 500), errno.EIO, "500"),
        (botocore.exceptions.NoCredentialsError(), errno.EACCES, "NoCredentials"),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), errno.EIO, "EndpointUnreachable"),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), errno.EIO, "Timeout"),
        (trio.TooSlowError(), errno.EIO, "Timeout"),
        (ValueError("odd"), errno.EIO, "ValueError"),
    ],
)
def test_translate(exc, errno_, code):
    err = translate(exc)
    assert isinstance(err, S3Error)
    assert (err.errno, err.code) == (errno_, code)


def test_translate_keeps_s3_errors():
    err = S3Error(errno.ENOENT, "X", "y")
    assert translate(err) is err


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (client_error("NoSuchBucket", 404, "HeadBucket"), "bucket 'bkt' does not exist at http://s3.test"),
        (client_error("404", 404, "HeadBucket"), "does not exist"),
        (client_error("403", 403, "HeadBucket"), "access to bucket 'bkt' denied at http://s3.test"),
        (client_error("InvalidAccessKeyId", 403), "check the credentials (InvalidAccessKeyId)"),
        (botocore.exceptions.NoCredentialsError(), "no AWS credentials found"),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3.test"), "cannot connect"),
        (botocore.exceptions.ConnectTimeoutError(endpoint_url="http://s3.test"), "did not answer in time"),
        (client_error("OtherError", 400), "S3 refused access to bucket 'bkt': OtherError"),
    ],
)
def test_describe_failure(clean_env, exc, expected):
    opts = parse_args(["bkt", "/mnt", "--endpoint-url", "http://s3.test"])
    line = describe_failure(exc, opts)
    assert expected in line
    assert "\n" not in line


def test_describe_failure_wrong_region(clean_env):
    exc = botocore.exceptions.ClientError(
        {
            "Error": {"Code": "301"},
            "ResponseMetadata": {"HTTPStatusCode": 301, "HTTPHeaders": {"x-amz-bucket-region": "eu-west-1"}},
        },
        "HeadBucket",
    )
    opts = parse_args(["bkt", "/mnt"])
    assert describe_failure(exc, opts) == "bucket 'bkt' is in another region (eu-west-1); use --region eu-west-1"


@pytest.mark.parametrize(
    ("region", "endpoint"),
    [
        ("eu-west-1", "https://s3.eu-west-1.amazonaws.com"),
        ("cn-north-1", "https://s3.cn-north-1.amazonaws.com.cn"),
        ("us-gov-west-1", "https://s3.us-gov-west-1.amazonaws.com"),
    ],
)
def test_clients_keep_only_the_model_data_s3_needs(monkeypatch, region, endpoint):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    session = boto_session(ClientSettings())
    client = make_boto_client(ClientSettings(), region, session)
    loader = session._session.get_component("data_loader")
    assert isinstance(loader.file_loader, LeanModelLoader)
    for partition in loader.load_data("endpoints")["partitions"]:
        assert "s3" in partition["services"]
        assert set(partition["services"]) <= LeanModelLoader.KEPT_ENDPOINTS
    model = client.meta.service_model
    assert model.operation_model("GetObject").documentation == ""
    assert model.shape_for("GetObjectOutput").members["Body"].documentation == ""
    # What the data is for still works: the region's endpoint, signing, the STS client
    # that assumed-role credentials are fetched with.
    assert client.meta.endpoint_url == endpoint
    url = client.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"})
    assert "X-Amz-Credential=k%2F" in url and f"%2F{region}%2Fs3%2Faws4_request" in url
    assert session.client("sts", region_name=region).meta.endpoint_url.startswith("https://sts.")


def test_redact_secrets():
    secret = "s3cr3t-value-that-is-long"
    handler_filter = RedactSecrets()
    handler_filter.add([secret, "short"])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key=%s and %d", (secret, 5), None)
    assert handler_filter.filter(record)
    assert record.getMessage() == "key=*** and 5"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "short is kept: %s", ("short",), None)
    handler_filter.filter(record)
    assert record.getMessage() == "short is kept: short"  # too short to redact safely


# ---------------------------------------------------------------- block cache


@pytest.mark.trio
async def test_block_cache_fetches_once_for_concurrent_readers():
    cache = BlockCache(1 << 20)
    calls = []
    values = []

    async def fetch():
        calls.append(1)
        await trio.sleep(0.01)
        return b"block"

    async def reader():
        values.append(await cache.get("k", fetch))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(reader)
    assert values == [b"block"] * 5
    assert len(calls) == 1
    assert "k" in cache and cache.peek("k") == b"block"


@pytest.mark.trio
async def test_block_cache_errors_and_size_bound():
    cache = BlockCache(10)

    async def failing():
        raise S3Error(errno.ESTALE, "PreconditionFailed", "changed")

    with pytest.raises(S3Error):
        await cache.get("bad", failing)
    assert "bad" not in cache

    async def big():
        return b"x" * 11

    assert await cache.get("big", big) == b"x" * 11  # returned, but larger than the cache: not kept
    assert cache.peek("big") is None

    for i in range(3):

        async def block(i=i):
            return bytes([i]) * 4

        await cache.get(i, block)
    assert cache.peek(0) is None  # 12 bytes > 10: the least recently used block went
    assert cache.peek(1) == b"\1" * 4 and cache.peek(2) == b"\2" * 4


def s3_delimited_listing(keys: set[str], prefix: str) -> list[tuple[str, bool]]:
    """What ListObjectsV2(Prefix, Delimiter='/') returns, in order: (key or common prefix, is_prefix)."""
    items: dict[str, bool] = {}
    for key in keys:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if "/" in rest:
            items[prefix + rest[: rest.index("/") + 1]] = True
        else:
            items[key] = False
    return sorted(items.items(), key=lambda item: item[0].encode())


def directory_model(keys: set[str], prefix: str) -> dict[str, str]:
    """The entries a directory should show: a name that is also a prefix is a directory."""
    entries: dict[str, str] = {}
    for key in keys:
        if not key.startswith(prefix) or key == prefix:
            continue
        name, slash, _ = key[len(prefix) :].partition("/")
        if slash:
            entries[name] = "dir"
        else:
            entries.setdefault(name, "file")
    return {name: kind for name, kind in entries.items() if names.invalid_reason(name) is None}


@settings(max_examples=300)
@given(
    rel_keys=st.sets(st.text(alphabet="ab!-./", min_size=1, max_size=5), max_size=30),
    prefix=st.sampled_from(["", "p/", "a!/"]),
    page_sizes=st.lists(st.integers(1, 6), min_size=1, max_size=10),
)
def test_feed_matches_directory_model_for_any_paging(stream_of, rel_keys, prefix, page_sizes):
    """However S3 splits a listing into pages, the entries are the model's: each name once, dirs winning."""
    keys = {prefix + k for k in rel_keys} | {"outside/x", "p"}
    items = s3_delimited_listing(keys, prefix)
    stream = stream_of(prefix)
    entries = []
    i = 0
    for n in itertools.cycle(page_sizes):
        if i >= len(items):
            break
        page = items[i : i + n]
        i += n
        entries += stream.feed(
            {
                "Contents": [obj(k) for k, is_prefix in page if not is_prefix],
                "CommonPrefixes": prefixes(*(k for k, is_prefix in page if is_prefix)),
            }
        )
    entries += stream.release_held()
    got = [(name, "dir" if info.is_dir else "file") for name, info in entries]
    assert len(got) == len({name for name, _ in got}), got  # no name twice
    assert dict(got) == directory_model(keys, prefix)


# ---------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-24T15:23:28.000Z",
        "2026-11-24T15:23:28Z",
        "2026-11-24T15:23:28.123+01:00",
        "Tue, 24 Nov 2026 15:23:28 GMT",
        "1764000000",
        "1764000000.5",
    ],
)
def test_parse_timestamp_agrees_with_botocore(text):
    """The fast parser gives what botocore's own (dateutil) parser gives, timezone-aware."""
    import botocore.utils

    from s3fuse.s3client import parse_timestamp

    ours = parse_timestamp(text)
    assert ours.tzinfo is not None
    assert ours == botocore.utils.parse_timestamp(text)


# ---------------------------------------------------------------- sibling prefetch


def _files(*sizes):
    from s3fuse.metadata import EntryInfo

    return [(f"f{i}", EntryInfo(is_dir=False, size=size, etag=f'"{i}"')) for i, size in enumerate(sizes)]


def test_sibling_prefetch_starts_after_two_in_order_opens():
    from s3fuse.siblings import SiblingTracker

    tracker = SiblingTracker(depth=2, small_object=100)
    tracker.remember_order("d", _files(10, 10, 10, 10, 10))
    assert tracker.opened("d", "f0") == []  # one open is no pattern
    assert [n for n, _ in tracker.opened("d", "f1")] == ["f2", "f3"]
    assert [n for n, _ in tracker.opened("d", "f2")] == ["f3", "f4"]
    assert [n for n, _ in tracker.opened("d", "f4")] == []  # skipped one: the pattern is broken
    assert tracker.opened("other", "f0") == []  # nothing known of that directory


def test_sibling_prefetch_skips_large_empty_and_directories():
    from s3fuse.metadata import EntryInfo, directory
    from s3fuse.siblings import SiblingTracker

    small, large, empty = _files(10, 1000, 0)
    entries = [("a", small[1]), ("b", small[1]), ("c", large[1]), ("d", empty[1]), ("e", directory()), ("f", small[1])]
    entries.append(("g", EntryInfo(is_dir=False, size=10, etag='"g"')))
    tracker = SiblingTracker(depth=4, small_object=100)
    tracker.remember_order("dir", entries)
    tracker.opened("dir", "a")
    assert [n for n, _ in tracker.opened("dir", "b")] == ["f"]  # c too large, d empty, e a directory, g too far

    disabled = SiblingTracker(depth=0, small_object=100)
    disabled.remember_order("dir", entries)
    disabled.opened("dir", "a")
    assert disabled.opened("dir", "b") == []


# ---- the write-back journal


def test_journal_replays_the_newest_record_of_each_key_oldest_first(tmp_path):
    journal = Journal(str(tmp_path), "bucket/with:odd chars")
    journal.acquire({"endpoint_url": "http://127.0.0.1:1"})
    spill = tmp_path / "journal" / "bucket%2Fwith%3Aodd%20chars" / "spill-a"
    spill.write_bytes(b"data")
    fd = os.open(spill, os.O_RDONLY)
    try:
        first = journal.write({"key": "a", "spill": "spill-a"}, fd)
    finally:
        os.close(fd)
    journal.write({"key": "b", "spill": None}, None)
    newer = journal.write({"key": "a", "spill": "spill-a2"}, None)  # a crash came before 'first' went
    (spill.parent / "spill-a2").write_bytes(b"newer")
    assert first < newer  # numbered in the order written
    records = journal.records()
    assert [(r["key"], r["name"]) for r in records] == [("b", records[0]["name"]), ("a", newer)]
    assert not (spill.parent / first).exists() and not spill.exists()  # superseded: removed, never replayed
    assert journal.unreferenced_spill_files(records) == []
    (spill.parent / "spill-orphan").write_bytes(b"no close() acknowledged this")
    assert journal.unreferenced_spill_files(records) == [str(spill.parent / "spill-orphan")]
    (spill.parent / "99999999999999999999.json").write_text("{not json")
    assert [r["key"] for r in journal.records()] == ["b", "a"]  # an unreadable record is left alone
    assert [j.bucket for j in journals(str(tmp_path))] == ["bucket/with:odd chars"]
    assert journal.connection() == {"bucket": "bucket/with:odd chars", "endpoint_url": "http://127.0.0.1:1"}


def test_journal_record_of_a_renamed_file_supersedes_the_old_name(tmp_path):
    """A crash between journaling a renamed file under its new key and removing the old record: the
    file is uploaded under the new name only; a later file under the old name is its own."""
    journal = Journal(str(tmp_path), "bucket")
    journal.acquire({"endpoint_url": "http://127.0.0.1:1"})
    journal.write({"key": ".f.tmp", "spill": "spill-1"}, None)
    moved = journal.write({"key": "f", "spill": "spill-1", "moved_from": ".f.tmp"}, None)
    again = journal.write({"key": ".f.tmp", "spill": "spill-2"}, None)  # a new file at the old name
    assert [(r["key"], r["name"]) for r in journal.records()] == [("f", moved), (".f.tmp", again)]


def test_journal_has_one_owner(tmp_path):
    journal = Journal(str(tmp_path), "b")
    journal.acquire({})
    with pytest.raises(JournalInUse, match="in use by another s3fuse process"):
        Journal(str(tmp_path), "b").acquire({})
    journal.release()
    Journal(str(tmp_path), "b").acquire({})


@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 1000))))
def test_extents_round_trip_through_a_record(pairs):
    extents = Extents()
    for start, length in pairs:
        extents.add(start, start + length)
    again = Extents.of(extents.ranges())
    assert again.ranges() == extents.ranges()
    assert list(again.segments(0, 2100)) == list(extents.segments(0, 2100))


def test_rename_log_finds_the_renames_of_dead_daemons_only(tmp_path):
    log = RenameLog(str(tmp_path), "bucket")
    assert log.cut_short() == []
    mine = log.begin("d/", "e/")  # this process: at a mount's start, an earlier one with its pid
    alive = log.begin("a/", "b/")
    Path(alive).write_text(json.dumps({"old": "a/", "new": "b/", "pid": 1, "started": 0}))  # init: alive
    dead = Path(log.directory) / "dead.json"
    dead.write_text(json.dumps({"old": "x/", "new": "y/", "pid": 2**22 + 1, "started": 1}))
    (Path(log.directory) / "torn.json").write_text("{")
    assert [(path, record["old"]) for path, record in log.cut_short()] == [(str(dead), "x/"), (mine, "d/")]
    log.end(mine)
    log.end(str(dead))
    assert log.cut_short() == []
