"""What s3fuse knows about an entry before it asks S3 again.

Owns ``EntryInfo`` (the attributes of one file or directory, built from a listing
entry or a HeadObject answer, including s3fs-fuse/rclone POSIX metadata headers) and
``MetadataCache``: positive entries for the attribute TTL, negative entries for a
shorter TTL, and whole small directory listings for the directory TTL. Every cache is
bounded in entries, so a bucket of millions of keys cannot grow the daemon.
"""

from __future__ import annotations

import dataclasses
import stat
import time
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache, TTLCache

from .metrics import METRICS

# Object metadata headers (without the x-amz-meta- prefix) that carry POSIX attributes.
# s3fs-fuse writes mode/uid/gid/mtime/atime (times as "SECONDS" or "SECONDS.NNNNNNNNN",
# exactly nine digits, which is also how it parses them); rclone writes mtime as
# fractional seconds. s3fs-fuse keeps no device number: rdev is s3fuse's own header.
META_MODE, META_UID, META_GID, META_MTIME, META_ATIME, META_RDEV = "mode", "uid", "gid", "mtime", "atime", "rdev"
# The EntryInfo fields those headers carry: what a HEAD adds to a listing's entry.
POSIX_FIELDS = ("mode", "uid", "gid", "mtime_ns", "atime_ns", "rdev")
# What an object (not a directory marker) can be besides a regular file.
SPECIAL_KINDS = frozenset({stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK})
DEVICE_KINDS = frozenset({stat.S_IFCHR, stat.S_IFBLK})
# The headers themselves: what the attribute index records of an object version.
POSIX_HEADERS = (META_MODE, META_UID, META_GID, META_MTIME, META_ATIME, META_RDEV)


@dataclass(slots=True)
class EntryInfo:
    """Attributes of one entry. Fields left None fall back to the mount defaults."""

    is_dir: bool
    size: int = 0
    mtime_ns: int | None = None
    etag: str | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None  # only when set explicitly (noatime): None shows the mtime
    rdev: int | None = None  # a device node's number, as the kernel encodes it
    # LastModified, kept apart from mtime_ns (which x-amz-meta-mtime may override): with
    # the ETag it identifies one write of the object, whose metadata never changes.
    last_modified_ns: int | None = None
    from_head: bool = False  # the POSIX_FIELDS above were read from the object's headers
    # The POSIX headers (POSIX_HEADERS, without x-amz-meta-) this version of the object carries,
    # when known: what the attribute index records of it (a directory's: its attributes).
    headers: dict[str, str] | None = None
    fetched_at: float = field(default_factory=time.monotonic)

    def age(self) -> float:
        return time.monotonic() - self.fetched_at

    @property
    def kind(self) -> int:
        """The file type bits: a directory, or what the mode header says an object is."""
        if self.is_dir:
            return stat.S_IFDIR
        if self.mode is not None and stat.S_IFMT(self.mode) in SPECIAL_KINDS:
            return stat.S_IFMT(self.mode)
        return stat.S_IFREG

    @property
    def is_symlink(self) -> bool:
        return self.mode is not None and stat.S_ISLNK(self.mode)

    def posix_headers(self, with_mtime: bool) -> dict[str, str]:
        """This entry's attributes as s3fs-fuse style x-amz-meta-* values."""
        meta = {}
        if self.mode is not None:
            meta[META_MODE] = str(self.kind | stat.S_IMODE(self.mode))
        if self.uid is not None:
            meta[META_UID] = str(self.uid)
        if self.gid is not None:
            meta[META_GID] = str(self.gid)
        if with_mtime and self.mtime_ns is not None:
            meta[META_MTIME] = format_seconds_ns(self.mtime_ns)
        if self.atime_ns is not None:
            meta[META_ATIME] = format_seconds_ns(self.atime_ns)
        if self.kind in DEVICE_KINDS and self.rdev is not None:
            meta[META_RDEV] = str(self.rdev)
        return meta


def directory() -> EntryInfo:
    return EntryInfo(is_dir=True)


def _is_decimal(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²', which int() rejects."""
    return text.isascii() and text.isdigit()


def parse_seconds_ns(value: str) -> int | None:
    """'1700000000' or '1700000000.123456789' to integer nanoseconds, without float rounding."""
    text = value.strip()
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.removeprefix("-").partition(".")
    if not _is_decimal(whole) or (frac and not _is_decimal(frac)):
        return None
    return sign * (int(whole) * 1_000_000_000 + int((frac + "000000000")[:9]))


def format_seconds_ns(ns: int) -> str:
    """Nanoseconds as s3fs-fuse writes a time: whole seconds, or with exactly nine decimals.

    s3fs-fuse reads the digits after the point as a count of nanoseconds, so they must be
    nine. Before 1970 the sign applies to the whole value, as in rclone's form (s3fs-fuse
    ignores negative times): -1.5 s is "-1.500000000".
    """
    sign = "-" if ns < 0 else ""
    seconds, nanos = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{seconds}.{nanos:09d}" if nanos else f"{sign}{seconds}"


def apply_posix_metadata(info: EntryInfo, meta: dict[str, str]) -> EntryInfo:
    """Fold s3fs-fuse style x-amz-meta-mode/uid/gid/mtime/atime (and s3fuse's rdev) into an entry."""
    info.from_head = True
    info.headers = {name: meta[name] for name in POSIX_HEADERS if name in meta}
    # Out-of-range values (another tool's bug, or hostile metadata) are ignored: they
    # would not fit the kernel's attribute fields.
    for name, attr, limit in (
        (META_MODE, "mode", 1 << 16),
        (META_UID, "uid", 1 << 32),
        (META_GID, "gid", 1 << 32),
        (META_RDEV, "rdev", 1 << 32),
    ):
        raw = meta.get(name, "")
        if _is_decimal(raw) and int(raw) < limit:
            setattr(info, attr, int(raw))
    for name, attr in ((META_MTIME, "mtime_ns"), (META_ATIME, "atime_ns")):
        value = parse_seconds_ns(meta.get(name, ""))
        if value is not None and abs(value) < 1 << 63:
            setattr(info, attr, value)
    allowed = {0, stat.S_IFDIR} if info.is_dir else {0, stat.S_IFREG} | SPECIAL_KINDS
    if info.mode is not None and stat.S_IFMT(info.mode) not in allowed:
        # A mode whose file type the entry cannot be (a symlink or FIFO mode on a
        # directory marker, or a directory mode on an object) keeps only its permission bits.
        info.mode = stat.S_IMODE(info.mode)
    return info


def _file(size: int, last_modified: Any, etag: str | None, asked_at: float | None) -> EntryInfo:
    modified = int(last_modified.timestamp()) * 1_000_000_000 if last_modified else None
    info = EntryInfo(is_dir=False, size=size, mtime_ns=modified, etag=etag, last_modified_ns=modified)
    if asked_at is not None:
        # As old as the request, not its answer: a change made here while the request
        # was on its way is newer than what the answer says (Namespace.resolve compares).
        info.fetched_at = asked_at
    return info


def from_listing(entry: dict[str, Any], asked_at: float | None = None) -> EntryInfo:
    """An entry from a ListObjectsV2 'Contents' item of a LIST sent at ``asked_at`` (monotonic)."""
    return _file(int(entry.get("Size", 0)), entry.get("LastModified"), entry.get("ETag"), asked_at)


def from_head(resp: dict[str, Any], asked_at: float | None = None) -> EntryInfo:
    """An entry from a HeadObject (or GetObject) response, POSIX metadata included."""
    info = _file(int(resp.get("ContentLength", 0)), resp.get("LastModified"), resp.get("ETag"), asked_at)
    return apply_posix_metadata(info, resp.get("Metadata") or {})


class _Negative:
    """Marker for 'known not to exist'."""


NEGATIVE = _Negative()


Listing = dict[str, EntryInfo]  # name -> entry, for one whole directory


class MetadataCache:
    """Bounded TTL caches of entries by path, and of small complete directory listings.

    Also remembers, without a TTL, the POSIX headers of the last write of each path
    that s3fuse wrote or HEADed: a listing carries no headers, but its ETag and
    LastModified say whether they still apply (a symlink stays a symlink).
    """

    def __init__(self, attr_ttl: float, negative_ttl: float, dir_ttl: float, max_entries: int) -> None:
        self.entries: TTLCache[str, EntryInfo] = TTLCache(maxsize=max_entries, ttl=attr_ttl, timer=time.monotonic)
        self.negatives: TTLCache[str, _Negative] = TTLCache(
            maxsize=max(1, max_entries // 10), ttl=max(negative_ttl, 1e-3), timer=time.monotonic
        )
        self.negative_ttl = negative_ttl
        # dir path -> its entries; sized by total entries held
        self.listings: TTLCache[str, Listing] = TTLCache(
            maxsize=max_entries, ttl=max(dir_ttl, 1e-3), timer=time.monotonic, getsizeof=lambda v: max(1, len(v))
        )
        self.dir_ttl = dir_ttl
        self.headers: LRUCache[str, EntryInfo] = LRUCache(maxsize=max_entries)
        METRICS.add_gauges(self.gauges)

    def gauges(self) -> dict[str, float]:
        return {"s3fuse_metadata_cache_entries": len(self.entries) + len(self.negatives) + self.listings.currsize}

    def get(self, path: str) -> EntryInfo | _Negative | None:
        """The cached answer for a path: an EntryInfo, NEGATIVE, or None (unknown)."""
        info = self.entries.get(path) or self.negatives.get(path)
        METRICS.lookup("metadata", info is not None)
        return info

    def put(self, path: str, info: EntryInfo) -> None:
        self.entries[path] = info
        self.negatives.pop(path, None)

    def put_negative(self, path: str) -> None:
        if self.negative_ttl > 0:
            self.negatives[path] = NEGATIVE
        self.entries.pop(path, None)

    def forget(self, path: str, tree: bool = False) -> None:
        """Forget a path; with ``tree`` also everything below it (a directory's contents)."""
        below = path + "/"
        for cache in (self.entries, self.negatives, self.listings, self.headers):
            cache.pop(path, None)
            for key in [k for k in cache if k.startswith(below)] if tree else ():
                cache.pop(key, None)

    def put_listing(self, path: str, items: Listing) -> None:
        """Keep a complete listing, if it fits, for repeated readdirs within the dir TTL."""
        if self.dir_ttl > 0 and self.listing_fits(len(items)):
            self.listings[path] = items

    def listing_fits(self, count: int) -> bool:
        """Whether a listing of ``count`` entries is small enough to keep whole."""
        return count <= self.listings.maxsize // 4

    def forget_listing(self, path: str) -> None:
        self.listings.pop(path, None)

    def get_listing(self, path: str) -> Listing | None:
        listing = self.listings.get(path)
        METRICS.lookup("listing", listing is not None)
        return listing

    def subdirectories(self, path: str) -> int | None:
        """The directories in the cached listing of path (None: not cached). Not counted as a
        listing cache lookup in the metrics: every stat of a directory asks."""
        listing = self.listings.get(path)
        return None if listing is None else sum(1 for info in listing.values() if info.is_dir)

    def remember_headers(self, path: str, info: EntryInfo) -> None:
        if info.from_head and not info.is_dir:
            self.headers[path] = info

    def with_headers(self, path: str, info: EntryInfo) -> EntryInfo:
        """A listing's entry completed with the headers known for the same write, if any."""
        known = self.headers.get(path)
        if known is None or info.from_head or known.etag != info.etag:
            return info
        if known.last_modified_ns is None:
            known.last_modified_ns = info.last_modified_ns  # our own write: the listing dates it
        elif known.last_modified_ns != info.last_modified_ns:
            return info  # rewritten (e.g. a metadata-only copy): the headers may differ
        return dataclasses.replace(info, **{name: getattr(known, name) for name in POSIX_FIELDS}, from_head=True)
