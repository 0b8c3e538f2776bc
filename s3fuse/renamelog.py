"""Directory renames in progress, one small file each in the cache dir: what a crash cut short.

S3 has no rename: a directory's is a copy and a delete of every key under it, and a
``kill -9`` in the middle leaves its entries split between the two names. Before its
first request such a rename writes its intent here (the old and new key prefixes and
the daemon's pid, fsync'd) and removes it after its last one, or when it fails with an
error its caller sees. The next mount of the bucket with this cache dir finds the
intents of dead daemons (``cut_short``), reports each one and finishes the move before
it serves a request (``Mutations.finish_renames``). Another machine's mount knows
nothing of them: there the entries stay split between the names, none lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from typing import Any
from urllib.parse import quote

from .write.journal import write_durably
from .write.upload import process_alive

log = logging.getLogger(__name__)


class RenameLog:
    """The intents of the directory renames of one bucket, under CACHE_DIR/renames/BUCKET/."""

    def __init__(self, cache_dir: str, bucket: str) -> None:
        self.directory = os.path.join(cache_dir, "renames", quote(bucket, safe=""))

    def begin(self, old: str, new: str) -> str:
        """Record, durably, that the keys under ``old`` are being moved under ``new``; the record's path."""
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"{uuid.uuid4().hex}.json")
        write_durably(path, {"old": old, "new": new, "pid": os.getpid(), "started": time.time()})
        return path

    def end(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def cut_short(self) -> list[tuple[str, dict[str, Any]]]:
        """(path, record) of every rename whose daemon is gone, oldest first."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.directory):
                path = os.path.join(self.directory, name)
                if not name.endswith(".json"):
                    continue
                try:
                    with open(path) as f:
                        record = json.load(f)
                    old, new, pid = record["old"], record["new"], record["pid"]
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    log.error("unreadable rename record %s: %s; left in place", path, exc)
                    continue
                if isinstance(old, str) and isinstance(new, str) and (pid == os.getpid() or not process_alive(pid)):
                    found.append((path, record))
        return sorted(found, key=lambda item: item[1].get("started", 0))
