"""Sets of byte ranges, as sorted disjoint half-open intervals.

Used to remember which bytes of a file were written locally (and so must be
uploaded) and which still come from the object in S3.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator


class Extents:
    """Disjoint, non-adjacent [start, end) intervals; adjacent ones are merged."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    @classmethod
    def of(cls, ranges: list[list[int]]) -> Extents:
        extents = cls()
        for start, end in ranges:
            extents.add(start, end)
        return extents

    def ranges(self) -> list[list[int]]:
        """The intervals as [start, end] pairs (what ``of`` takes back)."""
        return [[start, end] for start, end in zip(self._starts, self._ends, strict=True)]

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        # intervals that overlap or touch [start, end)
        lo = bisect_left(self._ends, start)
        hi = bisect_right(self._starts, end)
        if lo < hi:
            start = min(start, self._starts[lo])
            end = max(end, self._ends[hi - 1])
        self._starts[lo:hi] = [start]
        self._ends[lo:hi] = [end]

    def truncate(self, size: int) -> None:
        """Forget everything at or beyond ``size``."""
        j = bisect_left(self._starts, size)
        del self._starts[j:], self._ends[j:]
        if self._ends and self._ends[-1] > size:
            self._ends[-1] = size

    def intersects(self, start: int, end: int) -> bool:
        if start >= end:
            return False  # an empty range holds nothing
        i = bisect_right(self._ends, start)
        return i < len(self._starts) and self._starts[i] < end

    def covers(self, start: int, end: int) -> bool:
        """Whether every byte of [start, end) is in the set (adjacent intervals are merged,
        so it is within one)."""
        if start >= end:
            return True
        i = bisect_right(self._ends, start)
        return i < len(self._starts) and self._starts[i] <= start and end <= self._ends[i]

    def segments(self, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        """Split [start, end) into runs, each (start, end, inside the set)."""
        pos = start
        i = bisect_right(self._ends, start)
        while pos < end:
            if i < len(self._starts) and self._starts[i] <= pos:
                stop = min(self._ends[i], end)
                yield pos, stop, True
                i += 1
            else:
                stop = min(self._starts[i], end) if i < len(self._starts) else end
                yield pos, stop, False
            pos = stop
