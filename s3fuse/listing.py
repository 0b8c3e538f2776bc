"""Directory contents from delimited ListObjectsV2 (or ListObjects v1: ``S3Client.list_page``),
streamed a page at a time through a ``pager.Pager``.

Owns the rules that turn a listing into directory entries: common prefixes are
directories (a ``dir/`` marker object is one too), other keys are files, names that
cannot be POSIX names are skipped with one log line, and when a key is both a file
and a prefix the directory wins (the file is hidden, as in mountpoint-s3). Never
holds more than two pages plus a few held-back files, whatever the directory's size:
given a nursery, a stream asks for the next page as soon as one arrives, so the LIST
overlaps the kernel's taking the entries.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from .metadata import EntryInfo, directory, from_listing
from .names import invalid_reason
from .pager import Pager
from .s3client import S3Client

log = logging.getLogger(__name__)


class DirectoryStream:
    """The entries of one directory, in batches, for readdir and lookup windows."""

    def __init__(self, s3: S3Client, prefix: str, page_size: int = 1000, nursery: trio.Nursery | None = None) -> None:
        self.prefix = prefix
        # A failed page is asked for again by the next batch (the pager keeps its position),
        # so a readdir that fails does not end the directory early.
        self._pages = Pager(s3, "list_objects_v2", {"Prefix": prefix, "Delimiter": "/", "MaxKeys": page_size}, nursery)
        # Files whose name could still turn out to be a directory too: 'x' is held
        # until the listing has passed 'x/'. Keys between them (like 'x.txt') sort
        # before '/', so this stays a handful of entries.
        self._held: list[tuple[str, str, EntryInfo]] = []
        self.done = False

    async def next_batch(self) -> list[tuple[str, EntryInfo]]:
        """The next entries (possibly none before the stream is done); [] and done at the end."""
        if self.done:
            return []
        page = await self._pages.next_page()
        batch = self.feed(page, self._pages.asked_at)
        if self._pages.done:
            self.done = True
            batch += self.release_held()
        return batch

    def release_held(self) -> list[tuple[str, EntryInfo]]:
        """Give up waiting for directories that would shadow the held files."""
        held, self._held = self._held, []
        return [(name, info) for _, name, info in held]

    def feed(self, page: dict[str, Any], asked_at: float | None = None) -> list[tuple[str, EntryInfo]]:
        """Turn one ListObjectsV2 page, asked for at ``asked_at``, into entries, applying the naming rules."""
        items: list[tuple[str, str, EntryInfo]] = []
        plen = len(self.prefix)
        for obj in page.get("Contents", ()):
            key = obj["Key"]
            if key == self.prefix:
                continue  # the directory's own marker object
            items.append((key, key[plen:], from_listing(obj, asked_at)))
        for cp in page.get("CommonPrefixes", ()):
            pfx = cp["Prefix"]
            items.append((pfx, pfx[plen:-1], directory()))
        items.sort(key=lambda item: item[0])

        out: list[tuple[str, EntryInfo]] = []
        for full, name, info in items:
            reason = invalid_reason(name)
            if reason is not None:
                log.warning("skipping key %r: %s cannot be a file name", full, reason)
                continue
            still_held = []
            for held in self._held:
                if held[0] + "/" < full:
                    out.append(held[1:])
                elif info.is_dir and held[0] + "/" == full:
                    log.warning("key %r is both a file and a directory; the directory hides the file", held[0])
                else:
                    still_held.append(held)
            self._held = still_held
            if info.is_dir:
                out.append((name, info))
            else:
                self._held.append((full, name, info))
        return out
