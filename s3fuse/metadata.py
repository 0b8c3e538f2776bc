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
# s3fs-fuse writes mode/uid/gid/mtime; rclone writes mtime as fractional seconds.
META_MODE, META_UID, META_GID, META_MTIME = "mode", "uid", "gid", "mtime"
POSIX_HEADERS = (META_MODE, META_UID, META_GID, META_MTIME)


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
    # LastModified, kept apart from mtime_ns (which x-amz-meta-mtime may override): with
    # the ETag it identifies one write of the object, whose metadata never changes.
    last_modified_ns: int | None = None
    from_head: bool = False  # mode/uid/gid/mtime above were read from the object's headers
    # The POSIX headers (POSIX_HEADERS, without x-amz-meta-) this version of the object carries,
    # when known: what the attribute index records of it (a directory's: its attributes).
    headers: dict[str, str] | None = None
    fetched_at: float = field(default_factory=time.monotonic)

    def age(self) -> float:
        return time.monotonic() - self.fetched_at

    @property
    def kind(self) -> int:
        if self.is_dir:
            return stat.S_IFDIR
        return stat.S_IFLNK if self.is_symlink else stat.S_IFREG

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
            # whole seconds: s3fs-fuse cannot parse rclone's fractional form
            meta[META_MTIME] = str(self.mtime_ns // 1_000_000_000)
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


def apply_posix_metadata(info: EntryInfo, meta: dict[str, str]) -> EntryInfo:
    """Fold s3fs-fuse style x-amz-meta-mode/uid/gid/mtime into an entry."""
    info.from_head = True
    info.headers = {name: meta[name] for name in POSIX_HEADERS if name in meta}
    # Out-of-range values (another tool's bug, or hostile metadata) are ignored: they
    # would not fit the kernel's attribute fields.
    for name, attr, limit in ((META_MODE, "mode", 1 << 16), (META_UID, "uid", 1 << 32), (META_GID, "gid", 1 << 32)):
        raw = meta.get(name, "")
        if _is_decimal(raw) and int(raw) < limit:
            setattr(info, attr, int(raw))
    mtime = parse_seconds_ns(meta.get(META_MTIME, ""))
    if mtime is not None and abs(mtime) < 1 << 63:
        info.mtime_ns = mtime
    allowed = (0, stat.S_IFDIR) if info.is_dir else (0, stat.S_IFREG, stat.S_IFLNK)
    if info.mode is not None and stat.S_IFMT(info.mode) not in allowed:
        # A mode whose file type the object cannot be (a FIFO or device node written by
        # s3fs-fuse, or a symlink mode on a directory) keeps only its permission bits.
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
        return dataclasses.replace(
            info, mode=known.mode, uid=known.uid, gid=known.gid, mtime_ns=known.mtime_ns, from_head=True
        )
