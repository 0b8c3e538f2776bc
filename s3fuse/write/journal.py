"""The write-back journal: files closed under ``--write-back`` whose upload has not finished.

Owns CACHE_DIR/journal/BUCKET/: the spill files of the bucket's files open for writing,
one record (JSON) per closed file waiting for its upload, ``mount.json`` (how to reach
the bucket, for ``s3fuse recover``) and ``lock``, which makes one process at a time the
journal's owner. A record is durable before close() returns: written to a temporary
file, fsync'd, renamed into place and the directory fsync'd, after the spill file it
names was fsync'd. It is removed once S3 holds what it describes. Records are numbered
in the order they were written, across daemons, so recovery replays them in order and
an older version of a file never overwrites a newer one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from typing import Any
from urllib.parse import quote, unquote

from .spill import SPILL_PREFIX

log = logging.getLogger(__name__)


class JournalInUse(Exception):
    """Another process owns the journal of this bucket in this cache dir."""


class Journal:
    def __init__(self, cache_dir: str, bucket: str) -> None:
        self.bucket = bucket
        self.directory = os.path.join(cache_dir, "journal", quote(bucket, safe=""))
        self._lock_fd = -1
        self._last_seq = 0

    @property
    def owned(self) -> bool:
        return self._lock_fd >= 0

    def acquire(self, connection: dict[str, Any]) -> None:
        """Become the journal's owner (until this process exits), or raise JournalInUse.

        connection: how to reach the bucket (endpoint, region, ...; never credentials),
        kept for ``s3fuse recover``.
        """
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(os.path.join(self.directory, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalInUse(
                f"the write-back journal {self.directory} is in use by another s3fuse process; "
                "give each mount of this bucket its own --cache-dir"
            ) from None
        self._lock_fd = fd
        self._write_atomically("mount.json", {"bucket": self.bucket, **connection})

    def release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def has_records(self) -> bool:
        with contextlib.suppress(FileNotFoundError):
            return any(name.endswith(".json") and name[0].isdigit() for name in os.listdir(self.directory))
        return False

    def connection(self) -> dict[str, Any]:
        """What the last owner recorded in mount.json ({} if nothing)."""
        try:
            with open(os.path.join(self.directory, "mount.json")) as f:
                return dict(json.load(f))
        except (OSError, ValueError):
            return {}

    # ---- records

    def write(self, record: dict[str, Any], spill_fd: int | None) -> str:
        """Make a record durable (and the spill file it names); returns the record's name."""
        if spill_fd is not None:
            os.fsync(spill_fd)
        # Numbered by the clock, so records of successive daemons sort in the order written.
        seq = self._last_seq = max(time.time_ns(), self._last_seq + 1)
        name = f"{seq:020d}.json"
        self._write_atomically(name, {**record, "seq": seq})
        return name

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.directory, name))
            self._sync_directory()

    def records(self) -> list[dict[str, Any]]:
        """The records, oldest first, each with its "name"; the newest for each key only.

        An older record of a key is what a newer one superseded (a crash came between
        writing the new one and removing the old): it is removed, never replayed.
        """
        try:
            names = sorted(n for n in os.listdir(self.directory) if n.endswith(".json") and n[0].isdigit())
        except FileNotFoundError:
            return []
        newest: dict[str, dict[str, Any]] = {}
        for name in names:
            try:
                with open(os.path.join(self.directory, name)) as f:
                    record = json.load(f)
                record["name"] = name
                key = record["key"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("unreadable write-back record %s: %s; left in place", os.path.join(self.directory, name), exc)
                continue
            # A renamed file's record supersedes the older ones of its old key too ("moved_from").
            for superseded in (key, record.get("moved_from")):
                older = newest.pop(superseded, None) if superseded is not None else None
                if older is not None:
                    log.info("write-back record %s supersedes %s of %r", name, older["name"], superseded)
                    self._drop_superseded(older, record)
            newest[key] = record
        return sorted(newest.values(), key=lambda record: record["seq"])

    def _drop_superseded(self, older: dict[str, Any], newer: dict[str, Any]) -> None:
        self.remove(older["name"])
        if older.get("spill") and older.get("spill") != newer.get("spill"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, older["spill"]))

    def unreferenced_spill_files(self, records: list[dict[str, Any]]) -> list[str]:
        """Spill files no record names: writes of a dead daemon that no close() acknowledged."""
        named = {record.get("spill") for record in records}
        with contextlib.suppress(FileNotFoundError):
            return sorted(
                os.path.join(self.directory, name)
                for name in os.listdir(self.directory)
                if name.startswith(SPILL_PREFIX) and name not in named
            )
        return []

    # ---- durability

    def _write_atomically(self, name: str, content: dict[str, Any]) -> None:
        write_durably(os.path.join(self.directory, name), content)

    def _sync_directory(self) -> None:
        sync_directory(self.directory)


def write_durably(path: str, content: dict[str, Any]) -> None:
    """Write content to path as JSON so that a crash leaves no file or the whole one: a temporary
    file fsync'd, renamed into place, then its directory fsync'd."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        json.dump(content, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(temporary, path)
    sync_directory(os.path.dirname(path))


def sync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def journals(cache_dir: str) -> list[Journal]:
    """Every bucket's journal in a cache dir."""
    base = os.path.join(cache_dir, "journal")
    with contextlib.suppress(FileNotFoundError):
        return [Journal(cache_dir, unquote(name)) for name in sorted(os.listdir(base))]
    return []
