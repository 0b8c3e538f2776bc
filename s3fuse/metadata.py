"""What s3fuse knows about an entry before it asks S3 again.

Owns ``EntryInfo`` (the attributes of one file or directory, built from a listing
entry or a HeadObject answer, including s3fs-fuse/rclone POSIX metadata headers) and
``MetadataCache``: positive entries for the attribute TTL, negative entries for a
shorter TTL, and whole small directory listings for the directory TTL. Every cache is
bounded in entries, so a bucket of millions of keys cannot grow the daemon.
"""

from __future__ import annotations

import stat
import time
from dataclasses import dataclass, field
from typing import Any

from cachetools import TTLCache

# Object metadata headers (without the x-amz-meta- prefix) that carry POSIX attributes.
# s3fs-fuse writes mode/uid/gid/mtime; rclone writes mtime as fractional seconds.
META_MODE, META_UID, META_GID, META_MTIME = "mode", "uid", "gid", "mtime"


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
    fetched_at: float = field(default_factory=time.monotonic)

    def same_write(self, other: EntryInfo) -> bool:
        return self.etag == other.etag and self.last_modified_ns == other.last_modified_ns

    def age(self) -> float:
        return time.monotonic() - self.fetched_at

    @property
    def kind(self) -> int:
        return stat.S_IFDIR if self.is_dir else stat.S_IFREG


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
    # Out-of-range values (another tool's bug, or hostile metadata) are ignored: they
    # would not fit the kernel's attribute fields.
    for name, attr, limit in ((META_MODE, "mode", 1 << 16), (META_UID, "uid", 1 << 32), (META_GID, "gid", 1 << 32)):
        raw = meta.get(name, "")
        if _is_decimal(raw) and int(raw) < limit:
            setattr(info, attr, int(raw))
    mtime = parse_seconds_ns(meta.get(META_MTIME, ""))
    if mtime is not None and abs(mtime) < 1 << 63:
        info.mtime_ns = mtime
    if info.mode is not None and stat.S_IFMT(info.mode) not in (0, info.kind):
        # A mode whose file type contradicts the object (e.g. a symlink written by
        # s3fs before symlinks are supported here) keeps only its permission bits.
        info.mode = stat.S_IMODE(info.mode)
    return info


def _file(size: int, last_modified: Any, etag: str | None) -> EntryInfo:
    modified = int(last_modified.timestamp()) * 1_000_000_000 if last_modified else None
    return EntryInfo(is_dir=False, size=size, mtime_ns=modified, etag=etag, last_modified_ns=modified)


def from_listing(entry: dict[str, Any]) -> EntryInfo:
    """An entry from a ListObjectsV2 'Contents' item."""
    return _file(int(entry.get("Size", 0)), entry.get("LastModified"), entry.get("ETag"))


def from_head(resp: dict[str, Any]) -> EntryInfo:
    """An entry from a HeadObject (or GetObject) response, POSIX metadata included."""
    info = _file(int(resp.get("ContentLength", 0)), resp.get("LastModified"), resp.get("ETag"))
    return apply_posix_metadata(info, resp.get("Metadata") or {})


class _Negative:
    """Marker for 'known not to exist'."""


NEGATIVE = _Negative()


class MetadataCache:
    """Bounded TTL caches of entries by path, and of small complete directory listings."""

    def __init__(self, attr_ttl: float, negative_ttl: float, dir_ttl: float, max_entries: int) -> None:
        self.entries: TTLCache[str, EntryInfo] = TTLCache(maxsize=max_entries, ttl=attr_ttl, timer=time.monotonic)
        self.negatives: TTLCache[str, _Negative] = TTLCache(
            maxsize=max(1, max_entries // 10), ttl=max(negative_ttl, 1e-3), timer=time.monotonic
        )
        self.negative_ttl = negative_ttl
        # dir path -> list of (name, EntryInfo); sized by total entries held
        self.listings: TTLCache[str, list[tuple[str, EntryInfo]]] = TTLCache(
            maxsize=max_entries, ttl=max(dir_ttl, 1e-3), timer=time.monotonic, getsizeof=lambda v: max(1, len(v))
        )
        self.dir_ttl = dir_ttl

    def get(self, path: str) -> EntryInfo | _Negative | None:
        """The cached answer for a path: an EntryInfo, NEGATIVE, or None (unknown)."""
        info = self.entries.get(path)
        if info is not None:
            return info
        return self.negatives.get(path)

    def put(self, path: str, info: EntryInfo) -> None:
        self.entries[path] = info
        self.negatives.pop(path, None)

    def put_negative(self, path: str) -> None:
        if self.negative_ttl > 0:
            self.negatives[path] = NEGATIVE
        self.entries.pop(path, None)

    def forget(self, path: str) -> None:
        self.entries.pop(path, None)
        self.negatives.pop(path, None)

    def put_listing(self, path: str, items: list[tuple[str, EntryInfo]]) -> None:
        """Keep a complete listing, if it fits, for repeated readdirs within the dir TTL."""
        if self.dir_ttl > 0 and self.listing_fits(len(items)):
            self.listings[path] = items

    def listing_fits(self, count: int) -> bool:
        """Whether a listing of ``count`` entries is small enough to keep whole."""
        return count <= self.listings.maxsize // 4

    def forget_listing(self, path: str) -> None:
        self.listings.pop(path, None)

    def get_listing(self, path: str) -> list[tuple[str, EntryInfo]] | None:
        return self.listings.get(path)
