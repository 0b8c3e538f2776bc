"""The mount's configuration: the command line, fstab-style ``-o`` options, the config file,
environment variables, and the typed, frozen ``Config`` they are parsed into.

Owns the argument parser (the single source of every option's name, default and
help text) and the other ways to set the same options: ``-o name=value,flag`` (so
``mount -t fuse.s3fuse`` and fstab lines reach exactly what the flags reach),
``S3FUSE_NAME`` environment variables and a TOML config file. Precedence, highest
first: the command line (flags and ``-o``), the environment, the config file's
section for the bucket, its top level, the built-in defaults. Owns too the checks
of the values and what is derived from them (bucket and prefix, absolute paths,
the SSE-C key, the addressing style), all done while parsing: a ``Config`` is
never changed afterwards (``Config.for_bucket`` and ``dataclasses.replace`` make
changed copies). Imports nothing of the rest of s3fuse but its version.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from . import __version__

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'90', '30m', '12h', '1d' or '2w' to seconds."""
    m = _DURATION_RE.match(text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30m, 12h, 1d)")
    return float(m.group(1)) * _SECONDS[m.group(2)]


# Mount-helper and generic FUSE options that need no action from s3fuse.
IGNORED_MOUNT_OPTIONS = {
    "rw", "defaults", "auto", "noauto", "user", "users", "nouser", "nofail", "_netdev",
    "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime",
    "nonempty", "async", "sync", "dirsync", "diratime", "nodiratime", "strictatime", "nostrictatime",
    "lazytime", "nolazytime", "silent", "loud", "owner", "group", "nosymfollow",
    "default_permissions",  # FUSE's: always on, the kernel checks modes
}  # fmt: skip
# The canned ACLs S3 accepts for objects (log-delivery-write is for buckets only).
CANNED_OBJECT_ACLS = [
    "private", "public-read", "public-read-write", "authenticated-read", "aws-exec-read",
    "bucket-owner-read", "bucket-owner-full-control",
]  # fmt: skip
ALL_BUCKETS = "s3://"  # as BUCKET: mount every bucket of the account
# -o names that differ from the long option they mean.
MOUNT_OPTION_ALIASES = {"ro": "read-only", "allow_other": "allow-other"}


@dataclass(frozen=True)
class MountOptions:
    """What is mounted where, how the mount shows its entries, and how the daemon runs and logs."""

    bucket_name: str  # "" with all_buckets; each bucket's own config has its name (Config.for_bucket)
    prefix: str  # "" or ending in "/"
    mountpoint: str  # absolute
    all_buckets: bool
    at: datetime.datetime | None  # a read-only view of the bucket at this instant
    read_only: bool
    foreground: bool
    allow_other: bool
    fsname: str | None
    subtype: str
    uid: int
    gid: int
    file_mode: int
    dir_mode: int
    posix_metadata: bool
    attribute_index: bool  # read and keep the per-directory attribute index (attrindex.py)
    no_xattr: bool
    show_control_dir: bool
    presign_expiry: float  # seconds
    embedded_s3: bool  # s3fuse demo: the daemon starts its own S3 server
    log_level: str
    log_file: str | None  # absolute, or "syslog"
    metrics: str | None


@dataclass(frozen=True)
class S3Options:
    """The connection to S3 and what is added to every request."""

    endpoint_url: str | None
    region: str | None
    profile: str | None
    addressing_style: str  # "path" with an endpoint URL unless given, else "auto"
    max_connections: int
    timeout: float
    retries: int
    requester_pays: bool
    sse_c_key: bytes | None = field(repr=False)  # read from --sse-c-key-file
    acl: str | None
    storage_class: str | None
    list_version: int


@dataclass(frozen=True)
class CacheOptions:
    """What is cached, for how long and how much, and how much is read at once and ahead."""

    block_size: int
    cache_size: int
    disk_cache_size: int  # 0: no disk cache (diskcache.py)
    random_fetch_max: int  # objects up to this size read at random are fetched whole (reader.py)
    read_ahead: int
    transfer_budget: int
    kernel_read_ahead: int
    attr_ttl: float
    dir_ttl: float
    negative_ttl: float
    lookup_window: int
    prefetch_files: int
    prefetch_dirs: int
    metadata_cache_entries: int
    inode_limit: int


@dataclass(frozen=True)
class WriteOptions:
    """Where and when written files go: the cache dir, write-back, conflicts."""

    cache_dir: str  # absolute
    write_back: bool
    write_back_limit: int
    write_back_uploads: int
    on_conflict: str


@dataclass(frozen=True)
class Config:
    """A mount's configuration, as parsed: ``config.cache.attr_ttl``."""

    mount: MountOptions
    s3: S3Options
    cache: CacheOptions
    write: WriteOptions

    def for_bucket(self, name: str) -> Config:
        """The configuration of one bucket of an all-buckets mount: its name, no prefix."""
        return replace(self, mount=replace(self.mount, bucket_name=name, prefix=""))


_Group = TypeVar("_Group", MountOptions, S3Options, CacheOptions, WriteOptions)


def fuse_option_value(text: str) -> str:
    """A value handed to FUSE inside its own -o list: no commas, not empty."""
    if not text or "," in text or "\\" in text:
        raise argparse.ArgumentTypeError(f"{text!r}: must be non-empty, without commas or backslashes")
    return text


def parse_size(text: str) -> int:
    """'8M', '64MiB', '1g' or '4096' to bytes (binary units)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 4096, 512K, 8M, 1G)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def parse_instant(text: str) -> datetime.datetime | None:
    """An ISO 8601 time with a zone ('2026-11-20T10:00:00Z', '...+02:00'); None if invalid or without a zone."""
    try:
        instant = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return instant if instant.tzinfo is not None else None


def parse_at(text: str) -> datetime.datetime:
    instant = parse_instant(text)
    if instant is None:
        raise argparse.ArgumentTypeError(f"not an instant with a time zone: {text!r} (use e.g. 2026-11-20T10:00:00Z)")
    return instant


def parse_mode(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r}") from None


SSE_C_KEY_BYTES = 32  # SSE-C is AES-256


def read_sse_c_key(path: str) -> bytes:
    """The SSE-C key in a file: exactly 32 bytes taken as they are, or else base64 text of 32 bytes.

    Raises ValueError with a one-line message that never contains the key.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 16)  # a key file is tiny: no need to read a wrong one whole
    except OSError as exc:
        raise ValueError(f"cannot read the SSE-C key file {path}: {exc.strerror}") from None
    if len(data) == SSE_C_KEY_BYTES:
        return data
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except ValueError:
        key = b""
    if len(key) != SSE_C_KEY_BYTES:
        raise ValueError(f"the SSE-C key file {path} must hold a 32-byte key, raw or base64 (found {len(data)} bytes)")
    return key


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "s3fuse")


def default_config_paths() -> list[str]:
    """The config files looked for when neither --config nor S3FUSE_CONFIG names one; the first found is used."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return [os.path.join(base, "s3fuse", "config.toml"), "/etc/s3fuse/config.toml"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="s3fuse",
        description="Mount an S3 bucket (or a prefix of it), or every bucket of the account, as a directory.",
        epilog="Also: 's3fuse demo MOUNTPOINT' mounts a demo bucket served by an embedded local S3 server; "
        "'s3fuse cleanup BUCKET' aborts multipart uploads s3fuse left unfinished ('--disk-cache SIZE' trims "
        "the disk cache); "
        "'s3fuse recover CACHE_DIR' uploads what --write-back mounts journaled and did not upload; "
        "'s3fuse stats MOUNTPOINT' shows a mount's S3 requests, errors and cache hit rates. "
        "Credentials come from boto3's usual chain: environment, ~/.aws profiles, SSO, instance metadata.",
    )
    p.add_argument("--version", action="version", version=f"s3fuse {__version__}")
    p.add_argument(
        "bucket",
        nargs="?",
        metavar="BUCKET[:PREFIX]",
        help=f"bucket to mount, optionally with a key prefix; {ALL_BUCKETS} mounts every bucket (--all-buckets)",
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing, empty directory")
    p.add_argument(
        "--all-buckets",
        action="store_true",
        help="mount every bucket of the account, one directory each (mkdir and rmdir there create and "
        f"delete buckets); the same as BUCKET {ALL_BUCKETS}",
    )
    p.add_argument(
        "-o",
        dest="mount_options",
        action="append",
        default=[],
        metavar="OPT[,OPT=VALUE...]",
        help="fstab-style options: any long option below as name=value or flag "
        "(dashes or underscores), plus ro, allow_other and the usual mount-helper options",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="TOML file of options (long names as keys; a [bucket.NAME] table for one bucket); default: "
        "S3FUSE_CONFIG, else the first of ~/.config/s3fuse/config.toml and /etc/s3fuse/config.toml that exists",
    )

    s3 = p.add_argument_group("S3 connection")
    env_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    s3.add_argument(
        "--endpoint-url",
        default=env_endpoint,
        help="S3 endpoint (MinIO, Ceph, SeaweedFS, ...); default: AWS_ENDPOINT_URL(_S3) or AWS",
    )
    s3.add_argument("--profile", default=None, help="AWS profile from ~/.aws/config")
    s3.add_argument(
        "--region",
        default=None,
        help="bucket region (with --all-buckets: of new buckets); default: asked from S3 with GetBucketLocation",
    )
    s3.add_argument(
        "--addressing-style",
        choices=["auto", "path", "virtual"],
        default=None,
        help="URL style for buckets (default: path with --endpoint-url, else auto)",
    )
    s3.add_argument(
        "--max-connections",
        type=int,
        default=32,
        help="HTTP connections to S3, and S3 calls in flight; sequential readers use at most half of "
        "them for their GETs, and a quarter more for the GETs sent ahead (default: %(default)s)",
    )
    s3.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds one S3 request attempt may take before it is retried (default: %(default)s)",
    )
    s3.add_argument(
        "--retries",
        type=int,
        default=4,
        help="attempts per S3 request (botocore 'standard' retry mode, with backoff; default: %(default)s)",
    )

    req = p.add_argument_group("S3 requests (added to every request that takes them)")
    req.add_argument(
        "--requester-pays",
        action="store_true",
        help="send x-amz-request-payer: requester, to use a Requester Pays bucket (you pay for the requests)",
    )
    req.add_argument(
        "--sse-c-key-file",
        metavar="FILE",
        default=None,
        help="encrypt and decrypt every object with this SSE-C key: a file holding exactly 32 bytes, or "
        "their base64; objects not written with this key cannot be read",
    )
    req.add_argument(
        "--acl",
        choices=CANNED_OBJECT_ACLS,
        default=None,
        help="canned ACL of every object s3fuse writes or copies (default: none sent, the bucket's default)",
    )
    req.add_argument(
        "--storage-class",
        metavar="CLASS",
        default=None,
        help="storage class of the objects s3fuse writes, e.g. STANDARD_IA or INTELLIGENT_TIERING; an object "
        "rewritten in place keeps a class its HeadObject reports (default: the server's, STANDARD)",
    )
    req.add_argument(
        "--list-version",
        type=int,
        choices=[1, 2],
        default=2,
        help="1 lists with ListObjects (v1, markers), for servers without ListObjectsV2 (default: %(default)s)",
    )

    fs = p.add_argument_group("file system")
    fs.add_argument("-f", "--foreground", action="store_true", help="stay attached to the terminal (default: detach)")
    fs.add_argument("--read-only", action="store_true", help="mount read-only")
    fs.add_argument("--allow-other", action="store_true", help="let other users access the mount (FUSE allow_other)")
    fs.add_argument(
        "--fsname",
        type=fuse_option_value,
        default=None,
        help="the mount's source in /proc/mounts, df and mount (FUSE fsname; default: s3fuse:BUCKET)",
    )
    fs.add_argument(
        "--subtype",
        type=fuse_option_value,
        default="s3fuse",
        help="the type shown as fuse.SUBTYPE in /proc/mounts (FUSE subtype; default: s3fuse)",
    )
    fs.add_argument("--uid", type=int, default=os.getuid(), help="owner of entries without metadata (default: you)")
    fs.add_argument("--gid", type=int, default=os.getgid(), help="group of entries without metadata (default: yours)")
    fs.add_argument("--file-mode", type=parse_mode, default=0o644, help="mode of files without metadata (default: 644)")
    fs.add_argument("--dir-mode", type=parse_mode, default=0o755, help="mode of directories (default: 755)")
    fs.add_argument(
        "--posix-metadata",
        action="store_true",
        help="HEAD every listed file to read its x-amz-meta-mode/uid/gid/mtime (exact for objects other "
        "tools wrote, but one request per entry; without it, the attribute index makes what s3fuse "
        "wrote exact, and other objects' metadata is used whenever a HEAD is made anyway)",
    )
    fs.add_argument(
        "--no-attribute-index",
        dest="attribute_index",
        action="store_false",
        help="keep no attribute index: write no objects under the bucket's .s3fuse/ prefix and read none "
        "(listings then show the default mode, owner and the object's time for what they list, until a "
        "HEAD; see docs/semantics.md)",
    )

    fs.add_argument(
        "--on-conflict",
        choices=["overwrite", "fail"],
        default="overwrite",
        help="when a file changed in S3 since it was opened here (or another writer created its name) and "
        "is saved: overwrite it (with a warning in the log), or fail close()/fsync() with ESTALE (EEXIST) "
        "and keep the local copy in lost+found; 'fail' also makes O_EXCL creates exclusive across "
        "mounts, at one PutObject each when they open (default: %(default)s)",
    )

    fs.add_argument(
        "--write-back",
        action="store_true",
        help="close() returns once the file is safe in a journal in the cache dir (fsync'd) and uploads "
        "run in the background; fsync() still waits for S3. After a crash the next mount with the same "
        "cache dir, or 's3fuse recover CACHE_DIR', finishes them (default: close() waits for S3)",
    )
    fs.add_argument(
        "--write-back-limit",
        type=parse_size,
        default=parse_size("1G"),
        metavar="SIZE",
        help="with --write-back, close() waits while the journal holds more than this many bytes not yet "
        "uploaded (default: 1G); a full cache dir makes writers wait too",
    )
    fs.add_argument(
        "--write-back-uploads",
        type=int,
        default=16,
        metavar="N",
        help="with --write-back, files uploaded in the background at once (default: %(default)s)",
    )
    fs.add_argument(
        "--at",
        type=parse_at,
        default=None,
        metavar="INSTANT",
        help="mount the bucket read-only as it was at INSTANT (ISO 8601 with a zone, e.g. 2026-11-20T10:00:00Z): "
        "each key as its newest version not newer than INSTANT, from ListObjectVersions",
    )
    fs.add_argument(
        "--no-xattr",
        action="store_true",
        help="no extended attributes (user.*, s3.*): the kernel then answers every xattr call itself, "
        "without a round trip to s3fuse",
    )
    fs.add_argument(
        "--show-control-dir",
        action="store_true",
        help="list the control directory .s3/ (bucket configuration files) in the mount root; "
        "it is always reachable by its name",
    )
    fs.add_argument(
        "--presign-expiry",
        type=parse_duration,
        default=parse_duration("1h"),
        help="how long the URL in the xattr s3.presigned_url stays valid, e.g. 30m, 12h, 7d (default: 1h)",
    )

    cache = p.add_argument_group("caching")
    cache.add_argument(
        "--cache-dir",
        default=default_cache_dir(),
        help="directory for logs, unsaved writes (spill files), the write-back journal, the record of "
        "multipart uploads in progress, lost+found and the disk cache (blocks/, with --disk-cache-size) "
        "(default: $XDG_CACHE_HOME/s3fuse, else ~/.cache/s3fuse)",
    )
    cache.add_argument(
        "--block-size",
        type=parse_size,
        default=parse_size("16M"),
        help="size of the ranged GETs of sequential reads (default: 16M)",
    )
    cache.add_argument(
        "--cache-size", type=parse_size, default=parse_size("64M"), help="memory for cached blocks (default: 64M)"
    )
    cache.add_argument(
        "--disk-cache-size",
        type=parse_size,
        default=0,
        metavar="SIZE",
        help="keep blocks read in CACHE_DIR/blocks/, up to SIZE bytes, least recently used evicted; kept across "
        "remounts and shared by the mounts of one cache dir, each checked against its checksum and ETag when "
        "read. Objects up to half of SIZE are read by blocks and a random read fetches the rest in the "
        "background; not with --sse-c-key-file. Off by default because it keeps copies of objects on local disk, "
        "outside S3's access control, and costs disk space and writes that read-once workloads gain nothing "
        "from; 's3fuse cleanup --disk-cache 0' empties it (default: 0, no disk cache)",
    )
    cache.add_argument(
        "--random-fetch-max",
        type=parse_size,
        default=parse_size("256M"),
        metavar="SIZE",
        help="an object of up to SIZE bytes that is read at random is fetched whole in the background (8 "
        "ranged GETs of 2 MiB at a time, within --transfer-budget) and put in the kernel's page cache, which "
        "then serves its reads without the daemon, as s3fs-fuse's cache does, and again if the kernel lets "
        "the pages go while memory allows; with --disk-cache-size the limit is half of that cache instead, "
        "and the blocks are kept there too. 0: random reads fetch just their bytes (default: 256M)",
    )
    cache.add_argument(
        "--read-ahead",
        type=parse_size,
        default=parse_size("64M"),
        help="most bytes fetched ahead of one sequential reader, in parallel GETs of 8 MiB that start "
        "at 8 and grow while the throughput grows, with as many GETs again sent ahead of those and "
        "read once the reader passes a segment (default: 64M)",
    )
    cache.add_argument(
        "--transfer-budget",
        type=parse_size,
        default=parse_size("64M"),
        help="most bytes in flight for all open files together, shared fairly among them: what "
        "sequential readers hold read ahead (streams, and blocks with a disk cache), and the parts being "
        "uploaded (default: 64M, which keeps the daemon under 150 MiB of memory)",
    )
    cache.add_argument(
        "--kernel-read-ahead",
        type=parse_size,
        default=parse_size("1M"),
        help="kernel read-ahead of the mount, so the kernel sends large reads (default: 1M; "
        "set only when running as root)",
    )
    cache.add_argument(
        "--attr-ttl",
        type=float,
        default=30.0,
        help="seconds attributes and names are trusted before S3 is asked again (default: %(default)s)",
    )
    cache.add_argument(
        "--dir-ttl", type=float, default=30.0, help="seconds a directory listing is reused (default: %(default)s)"
    )
    cache.add_argument(
        "--negative-ttl",
        type=float,
        default=5.0,
        help="seconds a missing name stays known as missing (default: %(default)s)",
    )
    cache.add_argument(
        "--lookup-window",
        type=int,
        default=1000,
        help="keys listed by the LIST that answers a name lookup; its neighbours are cached too, "
        "so reading many files of one directory costs one LIST per this many (default: %(default)s)",
    )
    cache.add_argument(
        "--prefetch-files",
        type=int,
        default=8,
        help="once files of a directory are opened in name order (cat *, cp -r, tar c), fetch this many "
        "following small files ahead; 0 disables (default: %(default)s)",
    )
    cache.add_argument(
        "--prefetch-dirs",
        type=int,
        default=8,
        help="once a readdir reaches the end of a directory with at most this many subdirectories, list "
        "each of them in the background (one level, one page each) for --dir-ttl, so a path into one costs "
        "no request; 0 disables (default: %(default)s)",
    )
    cache.add_argument(
        "--metadata-cache-entries",
        type=int,
        default=50_000,
        help="most entries held in the metadata cache, about 650 bytes each (default: %(default)s)",
    )
    cache.add_argument(
        "--inode-limit",
        type=int,
        default=50_000,
        help="most inodes the kernel is left to hold (each costs the daemon memory): beyond it, the "
        "files looked up least recently are dropped from the kernel's cache; 0: no limit (default: %(default)s)",
    )

    logs = p.add_argument_group("logging")
    logs.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="(default: %(default)s)"
    )
    logs.add_argument(
        "--log-file",
        default=None,
        help="log to this file, or to the system log with 'syslog' (default: stderr in the foreground, "
        "CACHE_DIR/s3fuse.log when detached)",
    )
    logs.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        default=None,
        help="serve the counters of 's3fuse stats' at http://HOST:PORT/metrics in the Prometheus text "
        "format (HOST defaults to 127.0.0.1)",
    )
    return p


def expand_mount_options(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """Rewrite '-o a=b,c' (and '-oa=b') into '--a=b --c' for the parser."""
    known = {opt for action in parser._actions for opt in action.option_strings if opt.startswith("--")}
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "-o":
            groups = [next(args, "")]
        elif arg.startswith("-o") and not arg.startswith("--"):
            groups = [arg[2:]]
        else:
            out.append(arg)
            continue
        for item in filter(None, ",".join(groups).split(",")):
            name, eq, value = item.partition("=")
            if name in IGNORED_MOUNT_OPTIONS or name.startswith(("x-", "comment")):
                continue
            flag = "--" + MOUNT_OPTION_ALIASES.get(name, name.replace("_", "-"))
            if flag not in known:
                parser.error(f"unknown mount option: -o {item}")
            out.append(f"{flag}={value}" if eq else flag)
    return out


# Not settable from a config file or the environment: what names the mount, and the parser's own.
_COMMAND_LINE_ONLY = {"bucket", "mountpoint", "mount_options", "config", "help", "version"}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def _settable(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in _COMMAND_LINE_ONLY}


def _convert(action: argparse.Action, value: Any, where: str, parser: argparse.ArgumentParser) -> Any:
    """A config or environment value as the option's type, or a usage error naming where it came from."""
    flag = action.option_strings[-1]
    if isinstance(action, argparse._StoreTrueAction):
        if isinstance(value, bool):
            return value
        if str(value).lower() in _TRUE | _FALSE:
            return str(value).lower() in _TRUE
        parser.error(f"{where}: {flag} is on or off (true/false), not {value!r}")
    if isinstance(value, (bool, list, dict)):
        parser.error(f"{where}: {flag} needs a value like {action.metavar or action.dest.upper()}, not {value!r}")
    try:
        converted = action.type(str(value)) if callable(action.type) else str(value)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(f"{where}: {flag}: {exc}")
    if action.choices is not None and converted not in action.choices:
        parser.error(f"{where}: {flag} must be one of {', '.join(map(str, action.choices))}, not {value!r}")
    return converted


def _config_file(path: str | None, parser: argparse.ArgumentParser) -> tuple[str | None, dict[str, Any]]:
    explicit = path or os.environ.get("S3FUSE_CONFIG")
    candidates = [explicit] if explicit else [p for p in default_config_paths() if os.path.exists(p)][:1]
    for candidate in candidates:
        try:
            with open(candidate, "rb") as f:
                return candidate, tomllib.load(f)
        except OSError as exc:
            parser.error(f"config file {candidate}: {exc.strerror}")
        except tomllib.TOMLDecodeError as exc:
            parser.error(f"config file {candidate}: {exc}")
    return None, {}


def configured_defaults(parser: argparse.ArgumentParser, config_path: str | None, bucket: str | None) -> dict[str, Any]:
    """Option values from the config file (its [bucket.NAME] table over its top level), then S3FUSE_* variables."""
    settable = _settable(parser)
    path, doc = _config_file(config_path, parser)
    values: dict[str, Any] = {}
    sections = doc.get("bucket", {})
    if not isinstance(sections, dict):
        parser.error(f"config file {path}: 'bucket' must be a table of [bucket.NAME] tables")
    for where, table in ((path, doc), (f"{path} [bucket.{bucket}]", sections.get(bucket or "", {}))):
        for key, value in table.items():
            dest = key.replace("-", "_")
            if table is doc and key == "bucket":
                continue
            if dest not in settable:
                parser.error(f"config file {where}: unknown option {key!r}")
            values[dest] = _convert(settable[dest], value, f"config file {where}", parser)
    for dest, action in settable.items():
        var = "S3FUSE_" + dest.upper()
        if var in os.environ:
            values[dest] = _convert(action, os.environ[var], f"environment variable {var}", parser)
    return values


def parse_args(argv: list[str], *, embedded_s3: bool = False) -> Config:
    """The configuration of a mount from its command line, the environment and the config file;
    a usage error exits. embedded_s3: for ``s3fuse demo``, whose daemon starts its own S3 server."""
    parser = build_parser()
    expanded = expand_mount_options(argv, parser)
    # intermixed: BUCKET is optional, and options may still come between BUCKET and MOUNTPOINT.
    # Parsed twice: the config file and the bucket its section is for are known after the first.
    first = parser.parse_intermixed_args(expanded)
    bucket = None if first.bucket in (None, ALL_BUCKETS) else first.bucket.partition(":")[0]
    parser.set_defaults(**configured_defaults(parser, first.config, bucket))
    return _config(parser, parser.parse_intermixed_args(expanded), embedded_s3)


def config_of(bucket: str, mountpoint: str, **values: Any) -> Config:
    """The configuration of a mount of BUCKET at MOUNTPOINT with these option values (by their
    parser names, already typed), which win over the environment and the config file as the
    command line would."""
    parser = build_parser()
    parser.set_defaults(**{**configured_defaults(parser, None, bucket), **values})
    return _config(parser, parser.parse_args([bucket, mountpoint]), embedded_s3=False)


def _config(parser: argparse.ArgumentParser, args: argparse.Namespace, embedded_s3: bool) -> Config:
    """The parsed options checked, with what derives from them, as a Config."""
    all_buckets = args.all_buckets or args.bucket == ALL_BUCKETS
    if args.all_buckets and args.bucket not in (None, ALL_BUCKETS):
        parser.error(f"--all-buckets mounts every bucket: give no BUCKET, or {ALL_BUCKETS}")
    if all_buckets:
        bucket, prefix = "", ""  # each bucket's own config gets its name (Config.for_bucket)
    elif args.bucket is None:
        parser.error(f"BUCKET[:PREFIX] is missing (every bucket: {ALL_BUCKETS} or --all-buckets)")
    else:
        bucket, _, prefix = args.bucket.partition(":")
        if not bucket:
            parser.error("BUCKET is empty")
    if args.block_size < 64 * 1024:
        parser.error("--block-size must be at least 64K")
    if args.write_back_uploads < 1:
        parser.error("--write-back-uploads must be at least 1")
    sse_c_key = None
    if args.sse_c_key_file:
        try:
            sse_c_key = read_sse_c_key(args.sse_c_key_file)
        except ValueError as exc:
            parser.exit(1, f"s3fuse: {exc}\n")  # not a usage error: one line, no usage text
    values = vars(args) | {
        "bucket_name": bucket,
        "prefix": prefix.strip("/") + "/" if prefix.strip("/") else "",
        "all_buckets": all_buckets,
        "embedded_s3": embedded_s3,
        "mountpoint": os.path.abspath(args.mountpoint),
        "cache_dir": os.path.abspath(args.cache_dir),  # the daemon runs in /
        "log_file": os.path.abspath(args.log_file) if args.log_file and args.log_file != "syslog" else args.log_file,
        "addressing_style": args.addressing_style or ("path" if args.endpoint_url else "auto"),
        "sse_c_key": sse_c_key,
    }
    return Config(
        _group(MountOptions, values),
        _group(S3Options, values),
        _group(CacheOptions, values),
        _group(WriteOptions, values),
    )


def _group(cls: type[_Group], values: dict[str, Any]) -> _Group:
    """One group of a Config, of the values its fields name."""
    return cls(**{f.name: values[f.name] for f in fields(cls)})
