"""CACHE_DIR/lost+found: the data of files that could not be saved, kept for a human.

Owns that directory and the names files get in it (a timestamp, and a serial, so two
versions of a file kept in the same second both stay), why each path's last save
failed (``kept``: s3.upload_state shows it until the path is saved again), and what
is found of daemons that died: journal spill files that no record names (writes no
close() acknowledged) are moved here, and the spill files of a process that did not
exit cleanly are reported where they are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

from cachetools import LRUCache

from .journal import Journal
from .upload import process_alive

log = logging.getLogger(__name__)


class LostAndFound:
    def __init__(self, cache_dir: str) -> None:
        self.directory = os.path.join(cache_dir, "lost+found")
        # path -> why its last save failed and where its data went, until it is saved again
        self.kept: LRUCache[str, str] = LRUCache(maxsize=1000)

    def move(self, path: str, name: str) -> str:
        """Move a file into lost+found under a name no other kept file has; returns its new path."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        os.makedirs(self.directory, exist_ok=True)
        target, serial = os.path.join(self.directory, f"{stamp}-{name}"[:255]), 1
        # A rename replaces a file of the same name: another version of this file kept in
        # the same second (a write, its failed save, a rewrite and its failed save) would be lost.
        while os.path.lexists(target):
            serial += 1
            target = os.path.join(self.directory, f"{stamp}.{serial}-{name}"[:255])
        os.rename(path, target)
        return target

    def take_unacknowledged(self, journal: Journal, records: list[dict[str, Any]]) -> None:
        """Move the journal's spill files that none of its records names here."""
        for path in journal.unreferenced_spill_files(records):
            kept = self.move(path, os.path.basename(path))
            log.warning("%s holds writes no close() acknowledged (s3fuse died first); moved to %s", path, kept)


def report_leftovers(spill_dirs: str) -> None:
    """Spill files of daemons that died (in ``spill_dirs``/PID): data acknowledged to no one, but worth a look."""
    with contextlib.suppress(OSError):
        for pid in os.listdir(spill_dirs):
            path = os.path.join(spill_dirs, pid)
            if pid.isdigit() and not process_alive(pid) and os.listdir(path):
                log.warning(
                    "%s holds the unsaved writes of s3fuse process %s, which did not exit cleanly; "
                    "nothing uploads them automatically",
                    path,
                    pid,
                )
