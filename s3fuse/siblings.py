"""Small files of one directory read one after another: fetch the next ones ahead.

Owns the key order of recently listed directories and the detection of in-order
opens of their files (what ``cat *``, ``cp -r``, ``tar c`` and ``grep -r`` do). Once
two siblings were opened in listing order, each open names the next few small
files for the caller to prefetch, so S3 serves them while the kernel is still busy
with the current one. A wrong guess costs at most ``depth`` small GETs.
"""

from __future__ import annotations

from cachetools import LRUCache

from .metadata import EntryInfo

MAX_REMEMBERED_ENTRIES = 10_000  # per directory; larger listings are not remembered


class SiblingTracker:
    def __init__(self, depth: int, small_object: int) -> None:
        self.depth = depth
        self.small_object = small_object
        # dir path -> (entries in key order, name -> index)
        self._orders: LRUCache[str, tuple[list[tuple[str, EntryInfo]], dict[str, int]]] = LRUCache(maxsize=16)
        # dir path -> (index of the last opened entry, how many opens in a row were in order)
        self._positions: LRUCache[str, tuple[int, int]] = LRUCache(maxsize=16)

    def remember_order(self, dir_path: str, entries: list[tuple[str, EntryInfo]]) -> None:
        if self.depth > 0 and 1 < len(entries) <= MAX_REMEMBERED_ENTRIES:
            self._orders[dir_path] = (entries, {name: i for i, (name, _) in enumerate(entries)})

    def opened(self, dir_path: str, name: str) -> list[tuple[str, EntryInfo]]:
        """Record an open; the small files worth fetching now (possibly none)."""
        order = self._orders.get(dir_path)
        index = order[1].get(name) if order else None
        if order is None or index is None:
            self._positions.pop(dir_path, None)
            return []
        last, streak = self._positions.get(dir_path, (-2, 0))
        streak = streak + 1 if index == last + 1 else 0
        self._positions[dir_path] = (index, streak)
        if streak == 0:
            return []
        ahead = order[0][index + 1 : index + 1 + self.depth]
        return [(n, info) for n, info in ahead if not info.is_dir and 0 < info.size <= self.small_object]
