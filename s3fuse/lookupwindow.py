"""Lookup windows: one LIST that answers a lookup, and what recent ones say of other names.

Owns ``lookup_window`` (the delimited ListObjectsV2 page that starts just before a
looked-up name, so it tells file from directory and carries the next siblings) and
``LookupWindows``, the memory of each directory's last window: for
``--negative-ttl``, a name in the key range a window covered, as a file and as
``name/``, that it did not list is missing without another request, unless the mount
changed the directory since the window was asked for. So ``mv a b`` costs one LIST:
the window that found ``a`` shows that ``b`` is free.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from cachetools import TTLCache

from .listing import DirectoryStream
from .metadata import EntryInfo
from .names import start_after_for
from .s3client import S3Client


@dataclasses.dataclass
class Window:
    """The answer of one lookup window: entries from the looked-up name onwards."""

    entries: list[tuple[str, EntryInfo]]  # certain: files here are not hidden by a directory
    # Files at the end of a truncated window: a same-named directory may lie beyond it.
    uncertain: list[tuple[str, EntryInfo]]
    complete: bool  # the listing reached the end of the directory
    last_key: str | None  # the greatest key the listing covered
    start_after: str  # it listed the keys after this one


async def lookup_window(s3: S3Client, prefix: str, name: str, size: int) -> Window:
    """One LIST that answers 'does prefix+name exist, as file or directory?'.

    It starts just before the name, so it also returns the next siblings; callers
    cache them, which turns 'cat f1 f2 f3 ...' into one LIST instead of a HEAD per file.
    """
    start_after = start_after_for(prefix + name)
    stream = DirectoryStream(s3, prefix, page_size=size)  # for its naming rules: one page, asked for here
    asked_at = time.monotonic()
    resp = await s3.list_page(Prefix=prefix, Delimiter="/", StartAfter=start_after, MaxKeys=size)
    entries = stream.feed(resp, asked_at)
    complete = not resp.get("IsTruncated")
    held = stream.release_held()
    keys = [o["Key"] for o in resp.get("Contents", ())] + [p["Prefix"] for p in resp.get("CommonPrefixes", ())]
    return Window(
        entries + held if complete else entries,
        [] if complete else held,
        complete,
        max(keys, default=None),
        start_after,
    )


@dataclasses.dataclass(frozen=True)
class LookupWindowSeen:
    start_after: str  # the window listed the keys after this one
    last_key: str | None  # up to this one; None: to the end of the directory
    listed: frozenset[str]  # the names it found
    asked_at: float


class LookupWindows:
    """The last lookup window of each of 256 directories, each for ``ttl`` seconds (0: none kept)."""

    def __init__(self, ttl: float, changed_since: Callable[[str, float], bool]) -> None:
        """``changed_since(directory_path, t)``: whether the mount changed the directory at or after t."""
        self.ttl = ttl
        self._changed_since = changed_since
        self._seen: TTLCache[str, LookupWindowSeen] = TTLCache(maxsize=256, ttl=max(ttl, 1e-3), timer=time.monotonic)

    def remember(self, parent_path: str, window: Window, asked_at: float) -> None:
        """The window of the directory at parent_path, asked for at ``asked_at``, after the last change made there."""
        if self.ttl <= 0:
            return
        listed = frozenset(sibling for sibling, _ in window.entries + window.uncertain)
        end = None if window.complete else window.last_key
        self._seen[parent_path] = LookupWindowSeen(window.start_after, end, listed, asked_at)

    def say_missing(self, parent_path: str, name: str, key: str) -> bool:
        """Whether a recent window of the directory covered the name (whose key is ``key``), as a
        file and as a directory ('name/'), without listing it, and nothing changed there since."""
        seen = self._seen.get(parent_path)
        if seen is None or name in seen.listed or self._changed_since(parent_path, seen.asked_at):
            return False
        return seen.start_after < key and (seen.last_key is None or seen.last_key >= key + "/")
