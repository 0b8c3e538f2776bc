"""``DirHandle``: one open directory of the bucket's tree, as readdir sees it.

Owns the window of streamed entries an open directory holds (the kernel's offsets are
indexes into the listing; what it consumed is dropped, so memory is one page, not the
directory), the names shown or hidden beside S3's (the mount's control directories,
files being written here), and the copy of a small listing that is cached whole once
complete. What it learns goes into the caches through ``Namespace``'s methods.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .listing import DirectoryStream
from .metadata import EntryInfo
from .names import dir_prefix, join

if TYPE_CHECKING:
    from .namespace import Namespace

log = logging.getLogger(__name__)


class DirHandle:
    """One open directory: a window of streamed entries addressed by their index.

    The kernel asks for entries from an offset (the index after the last one it
    accepted); entries before it are dropped, so memory is one page, not the
    directory. Seeking back (rewinddir) restarts the listing.
    """

    def __init__(
        self,
        ns: Namespace,
        path: str,
        reserved: Sequence[tuple[str, EntryInfo | None]] = (),
        local: Sequence[tuple[str, EntryInfo]] = (),
        on_end: Callable[[], None] | None = None,
    ) -> None:
        """on_end: called the first time a read reaches the end of the listing."""
        self.ns = ns
        self.path = path
        self._on_end = on_end
        # Names of the mount's control directories: keys of the same name are hidden.
        self.shown = [(name, info) for name, info in reserved if info is not None] + list(local)
        self.hidden = {name for name, _ in reserved}
        self.internal = ns.internal_names(path)  # hidden without a word: the mount's own keys
        self.local = {name for name, _ in local}  # listed already, whatever S3 says of them
        self._restart()

    def _restart(self) -> None:
        cached = self.ns.cached_listing(self.path)
        listed = [entry for entry in cached.items() if entry[0] not in self.local] if cached is not None else []
        self.entries: list[tuple[str, EntryInfo]] = self.shown + listed
        self.base = 0  # index of entries[0]
        self.stream = None if cached is not None else self._new_stream()
        self.started = time.monotonic()
        # Small directories are kept whole for the dir TTL; None once too large.
        self.collected: list[tuple[str, EntryInfo]] | None = (
            [entry for entry in self.shown if entry[0] in self.local] if self.stream else None
        )

    def _new_stream(self) -> DirectoryStream:
        self.ns.index.start_reading(self.path, self.ns.nursery)  # beside the first page
        return DirectoryStream(self.ns.s3, dir_prefix(self.ns.root_prefix, self.path), nursery=self.ns.nursery)

    async def entry(self, index: int) -> tuple[str, EntryInfo] | None:
        """Entry number ``index`` of the directory, or None past its end."""
        if index < self.base:
            self._restart()
        while index >= self.base + len(self.entries):
            if self.stream is None or self.stream.done:
                self._ended()
                return None
            batch = await self.ns.complete(self.path, self._without_hidden(await self.stream.next_batch()))
            self._remember(batch)
            # Drop what the kernel has consumed; keep the unconsumed tail.
            consumed = min(index - self.base, len(self.entries))
            self.entries = self.entries[consumed:] + batch
            self.base += consumed
        return self.entries[index - self.base]

    def _ended(self) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end()

    def _without_hidden(self, batch: list[tuple[str, EntryInfo]]) -> list[tuple[str, EntryInfo]]:
        """The batch without keys named like the mount's control directories, each logged.

        Such a key cannot be reached (the name leads to the control directory), so it
        is reported like the keys whose names cannot be file names.
        """
        out = []
        for name, info in batch:
            if name in self.local or name in self.internal:
                continue
            if name in self.hidden:
                key = dir_prefix(self.ns.root_prefix, self.path) + name + ("/" if info.is_dir else "")
                log.warning("skipping key %r: the mount's %s/ directory hides it", key, name)
            else:
                out.append((name, info))
        return out

    def changed_since_listed(self) -> bool:
        """Whether this mount changed the directory since the listing began (then S3's pages
        may predate the change, and ``gone`` tells the names removed meanwhile)."""
        return self.ns.changed_since(self.path, self.started)

    def removed_since_listed(self) -> Callable[[str], bool] | None:
        """``gone``, if this mount changed the directory since the listing began."""
        return self.gone if self.changed_since_listed() else None

    def gone(self, name: str) -> bool:
        """Whether a listed name was removed here after the listing began (not to be shown)."""
        return self.ns.known_missing(join(self.path, name))

    def _remember(self, batch: list[tuple[str, EntryInfo]]) -> None:
        if self.changed_since_listed():
            self.collected = None  # S3 listed the directory as it was before a change made here
            return
        self.ns.listed(self.path, batch)
        if self.collected is not None:
            self.collected.extend(batch)
            if not self.ns.listing_fits(len(self.collected)):
                self.collected = None
        if self.stream is not None and self.stream.done and self.collected is not None:
            self.ns.listed_whole(self.path, self.collected)
            self.collected = None
