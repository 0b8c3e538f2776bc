"""The mount's budget of bytes in transfer, shared fairly by the files that move them.

Owns how many bytes all open files together may have on their way between S3 and
the daemon (``--transfer-budget``): the segments that streams read ahead of
sequential readers (stream.py, held in memory until the reader passes them), the blocks
read ahead into the block cache (reader.py; how a mount with a disk cache reads big
objects), and the parts of streamed uploads being sent (write/streaming.py). Bytes in flight are what
throughput costs over a network with latency: one connection carries 50-100 MiB/s
and each request waits 10-30 ms for its first byte, so a file needs several requests
at once, and their bytes, to go faster than one connection.

Fairness: a user (a reader or an upload) that holds nothing may always start, when
the bytes are there; one that holds some may take more only up to an equal share of
the budget among the users that hold bytes or were refused. A greedy reader thus
shrinks to its share as it consumes what it holds, and a newcomer gets its first
segment or part as soon as bytes come back. Readers that are refused read without
streams meanwhile (they never wait here); uploads wait for bytes (``take``).
"""

from __future__ import annotations

import logging
import statistics
from collections import deque
from collections.abc import Hashable

import trio

from .metrics import METRICS

log = logging.getLogger(__name__)
MiB = 1 << 20


class TransferBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._held: dict[Hashable, int] = {}
        self._refused: set[Hashable] = set()  # counted in the share until they get bytes or leave
        self._returned = trio.Event()  # set and replaced whenever bytes come back
        METRICS.add_gauges(self.gauges)

    def gauges(self) -> dict[str, float]:
        return {"s3fuse_transfer_bytes": self.used}

    def share(self, user: Hashable) -> int:
        """The bytes ``user`` may hold while the others that hold or want bytes hold theirs."""
        others = (self._held.keys() | self._refused) - {user}
        return self.limit // (len(others) + 1)

    def try_take(self, user: Hashable, nbytes: int) -> bool:
        """Take nbytes for user if the budget and its share allow (its first bytes need only the budget)."""
        held = self._held.get(user, 0)
        # Anything fits in an idle budget: a part larger than the whole budget must still go.
        fits = self.used == 0 or self.used + nbytes <= self.limit
        if not fits or (held and held + nbytes > self.share(user)):
            self._refused.add(user)
            return False
        self._refused.discard(user)
        self._held[user] = held + nbytes
        self.used += nbytes
        return True

    async def take(self, user: Hashable, nbytes: int) -> None:
        """Wait until try_take gives user nbytes."""
        while not self.try_take(user, nbytes):
            await self._returned.wait()

    def give_back(self, user: Hashable, nbytes: int) -> None:
        left = self._held.pop(user) - nbytes
        if left:
            self._held[user] = left
        self.used -= nbytes
        self._returned.set()
        self._returned = trio.Event()

    def leave(self, user: Hashable) -> None:
        """user wants no more bytes for now (it stopped streaming, or closed)."""
        self._refused.discard(user)


class ConnectionRate:
    """How fast the server answers and how fast one connection carries a body: the quickest answer
    to a small request seen, and the median of the last few segments streams read whole, in bytes/s
    of reading (the time a stream's thread spent in the body's reads).

    ``near`` says one connection alone carries more than a reader needs, as from a server on the
    same machine or network; then streams read long segments, each GET fetching more bytes for its
    fixed cost. Over S3's 50-100 MiB/s a connection, a reader needs several segments at once.
    """

    # bytes/s, about four times what one connection to S3 carries (50-100 MiB/s). Measured with
    # fsbench's moto: 75-115 MiB/s on its S3-like network; 130-1,700 on 127.0.0.1, where 8 streams
    # share the 2 cores with the server (the median of five past 384 after a mount's first reads).
    NEAR = 384 * MiB
    KEPT = 5
    # A server that answers a small request (a HEAD, a page of a listing, a GET's headers) this fast is
    # on the same machine or network, where the round trip does not limit a connection (at 10 ms,
    # TCP's 4 MiB windows carry 400 MiB/s): S3 takes 10-30 ms. So a mount's first big read, before
    # any segment is measured, already reads long segments there. fsbench's moto on 127.0.0.1 (a new
    # connection each, as it closes them): HEAD 3.0-5.5 ms, a ranged GET's headers 3.6-5.0 ms, a
    # listing page 4.7-7.4 ms; on its S3-like network 24.5 ms and more.
    NEAR_ROUND_TRIP = 0.010
    # ... unless the segments measured since say one connection carries less than this (a server that
    # caps each connection, as S3 does at 50-100 MiB/s, answering fast).
    FAR = 128 * MiB

    def __init__(self) -> None:
        self._rates: deque[float] = deque(maxlen=self.KEPT)
        self._quickest = float("inf")  # seconds: the quickest answer to a small request
        METRICS.add_gauges(self.gauges)

    def gauges(self) -> dict[str, float]:
        shown = {"s3fuse_connection_bytes_per_second": self.rate, "s3fuse_long_segments": float(self.near)}
        if self._quickest != float("inf"):
            shown["s3fuse_quickest_answer_seconds"] = self._quickest
        return shown

    def observe(self, nbytes: int, seconds: float) -> None:
        """A segment of nbytes was read whole in seconds of reading."""
        near = self.near
        self._rates.append(nbytes / max(seconds, 1e-6))
        self._told(near)

    def answered(self, seconds: float) -> None:
        """A small request was answered in seconds (from sending it to its answer's headers)."""
        near = self.near
        self._quickest = min(self._quickest, seconds)
        self._told(near)

    def _told(self, near: bool) -> None:
        if self.near != near:
            length = "long" if self.near else "short"
            log.debug(
                "answers in %.1f ms, one connection carries %.0f MiB/s: %s segments",
                self._quickest * 1000,
                self.rate / MiB,
                length,
            )

    @property
    def rate(self) -> float:
        """bytes/s; 0 before the first segment was read whole."""
        return statistics.median(self._rates) if self._rates else 0.0

    @property
    def near(self) -> bool:
        """From the round trip until KEPT segments were measured (one fast segment says little), then
        from them: fast enough, or not slow and from a server that answers fast."""
        quick = self._quickest <= self.NEAR_ROUND_TRIP
        if len(self._rates) < self.KEPT:
            return quick
        return self.rate >= self.NEAR or (quick and self.rate >= self.FAR)
