"""The daemon's counters and gauges, and their one text form (Prometheus exposition format).

Owns what ``s3fuse stats`` and ``--metrics`` show: S3 requests per operation as they
go on the wire (every attempt, counted from botocore's send/receive events, so they
match the server's own count), errors by code, bytes each way, cache hits and misses,
and gauges that modules report on demand (files with unsaved writes, cached bytes).
One process-wide ``METRICS``, like a Prometheus registry: boto3 calls run in worker
threads, so counting takes a lock.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any

from cachetools import TTLCache

Labels = tuple[tuple[str, str], ...]
GaugeSource = Callable[[], dict[str, float]]

# name -> help text, in the order they are shown
HELP = {
    "s3fuse_requests_total": "S3 requests sent (every attempt), by operation",
    "s3fuse_request_errors_total": "S3 requests that failed, by operation and error code",
    "s3fuse_bytes_sent_total": "bytes of request bodies sent to S3",
    "s3fuse_bytes_received_total": "bytes of response bodies received from S3 (Content-Length)",
    "s3fuse_cache_hits_total": "lookups answered from a cache, by cache",
    "s3fuse_cache_misses_total": "lookups a cache could not answer, by cache",
    "s3fuse_files_kept_total": "files that could not be saved and were kept in lost+found",
    "s3fuse_write_conflicts_total": "saves S3 refused on their If-Match / If-None-Match: another writer was first",
    "s3fuse_uploads_in_progress": "saves of files to S3 running now",
    "s3fuse_files_open_for_writing": "files open for writing",
    "s3fuse_dirty_files": "files with writes not yet in S3",
    "s3fuse_files_waiting_for_upload": "files closed under --write-back whose upload has not ended",
    "s3fuse_journal_bytes": "bytes in the write-back journal not yet uploaded",
    "s3fuse_page_cache_filled_bytes_total": "bytes put in the kernel page cache (randomly read objects)",
    "s3fuse_block_cache_bytes": "bytes held in the block cache",
    "s3fuse_disk_cache_bytes": "bytes in the disk cache's dir, as this mount last counted them (--disk-cache-size)",
    "s3fuse_transfer_bytes": "bytes of the transfer budget taken: read ahead by streams, and parts being sent",
    "s3fuse_quickest_answer_seconds": "the quickest answer S3 gave to a small request (HEAD, listing, a GET's headers)",
    "s3fuse_connection_bytes_per_second": "what one connection carried: the median of the last segments read whole",
    "s3fuse_long_segments": "1 when streams read long segments (one connection carries much), else 0",
    "s3fuse_metadata_cache_entries": "entries held in the metadata cache",
    "s3fuse_inodes": "inodes the kernel holds (each costs the daemon memory until the kernel forgets it)",
    "s3fuse_uptime_seconds": "seconds since the daemon started",
}
# The mount root's extended attribute that holds ``exposition()`` (read by ``s3fuse stats``).
STATS_XATTR = b"s3fuse.stats"
_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class Metrics:
    """Counters by (name, labels), plus gauges asked of their sources when shown."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: Counter[tuple[str, Labels]] = Counter()
        self._sources: list[weakref.WeakMethod[GaugeSource]] = []
        self._started = time.monotonic()
        self._snapshots: TTLCache[int, str] = TTLCache(maxsize=64, ttl=1.0, timer=time.monotonic)

    def count(self, name: str, amount: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] += amount

    def lookup(self, cache: str, hit: bool) -> None:
        """One lookup in a cache: a hit or a miss."""
        self.count("s3fuse_cache_hits_total" if hit else "s3fuse_cache_misses_total", cache=cache)

    def add_gauges(self, source: GaugeSource) -> None:
        """A bound method returning {gauge name: value}; values of the same name from
        several sources (the buckets of an all-buckets mount) are added up. Held weakly."""
        self._sources.append(weakref.WeakMethod(source))  # type: ignore[arg-type]

    def observe(self, client: Any) -> None:
        """Count every request attempt of a boto3 client, and its errors and bytes."""
        events = client.meta.events
        events.register("before-send.s3", self._on_send)
        events.register("response-received.s3", self._on_response)

    def _on_send(self, request: Any, event_name: str, **_: Any) -> None:
        self.sent(event_name.rsplit(".", 1)[-1], int(request.headers.get("Content-Length") or 0))

    def _on_response(self, event_name: str, response_dict: Any, parsed_response: Any, exception: Any, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        if exception is not None:
            self.failed(operation, type(exception).__name__)
            return
        self.received(operation, int(response_dict["headers"].get("content-length") or 0))
        if response_dict.get("status_code", 200) >= 300:
            error = (parsed_response or {}).get("Error", {})
            self.failed(operation, str(error.get("Code") or response_dict.get("status_code")))

    def sent(self, operation: str, body_bytes: int) -> None:
        """One request attempt (by botocore, or by direct.py)."""
        self.count("s3fuse_requests_total", operation=operation)
        self.count("s3fuse_bytes_sent_total", body_bytes)

    def received(self, operation: str, content_length: int) -> None:
        if not operation.startswith("Head"):  # a HEAD's Content-Length is the object's, not sent
            self.count("s3fuse_bytes_received_total", content_length)

    def failed(self, operation: str, code: str) -> None:
        """An attempt that failed: with an S3 error code, an HTTP status, or the exception's name."""
        self.count("s3fuse_request_errors_total", operation=operation, code=code)

    def gauges(self) -> Counter[tuple[str, Labels]]:
        totals: Counter[tuple[str, Labels]] = Counter({("s3fuse_uptime_seconds", ()): time.monotonic() - self._started})
        live = [ref for ref in self._sources if ref() is not None]
        self._sources = live
        for ref in live:
            source = ref()
            for name, value in (source() if source else {}).items():
                totals[(name, ())] += value
        return totals

    def snapshot(self, reader: int) -> str:
        """``exposition()``, the same text for the same reader (a process id) within a second:
        getxattr asks for the size of a value and then for the value, and a value that grew
        in between (a counter passing a power of ten) fails with ERANGE."""
        text = self._snapshots.get(reader)
        if text is None:
            text = self._snapshots[reader] = self.exposition()
        return text

    def exposition(self) -> str:
        """Every counter and gauge in the Prometheus text format."""
        with self._lock:
            samples = Counter(self._counters)
        samples.update(self.gauges())
        lines = []
        for name, help_text in HELP.items():
            kind = "counter" if name.endswith("_total") else "gauge"
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            for (sample, labels), value in sorted(samples.items()):
                if sample == name:
                    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                    lines.append(f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def parse_exposition(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a Prometheus text exposition: (name, labels, value)."""
    samples = []
    for line in text.splitlines():
        m = _SAMPLE_RE.match(line)
        if m:
            labels = {k: re.sub(r"\\(.)", lambda c: "\n" if c.group(1) == "n" else c.group(1), v)
                      for k, v in _LABEL_RE.findall(m.group(2) or "")}  # fmt: skip
            samples.append((m.group(1), labels, float(m.group(3))))
    return samples


METRICS = Metrics()
