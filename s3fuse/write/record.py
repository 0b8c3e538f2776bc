"""The record format of the write-back journal: what it keeps of one closed file.

Owns the translation between an ``OpenFile`` and its record, a JSON object that
journal.py makes durable and hands back after a crash. A record holds enough to
upload the file as it was closed: its key and attributes, the name of its spill file
in the journal directory and the ranges written there, the object it changes (ETag,
size, and the offset below which that object's bytes are still in use), and the
attribute and header changes not yet saved. journal.py adds ``seq`` (the order of
records across daemons) and, when reading, ``name`` (the record's file name). The
keys are read by daemons of other versions: a change of meaning needs a new key.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import TYPE_CHECKING, Any

from ..extents import Extents
from ..metadata import POSIX_FIELDS, EntryInfo
from .openfile import OpenFile
from .spill import SpillFile
from .upload import HeaderChanges

if TYPE_CHECKING:
    from .writeback import WriteBack


def to_record(of: OpenFile) -> dict[str, Any]:
    """What the journal keeps of this file: enough to upload it after a crash."""
    info, spill, base = of.node.info, of.spill, of.base
    return {
        "key": of.key,
        "size": info.size,
        **{name: getattr(info, name) for name in POSIX_FIELDS},
        "spill": os.path.basename(spill.path) if spill is not None else None,
        "written": spill.written.ranges() if spill is not None else [],
        "base": None
        if base is None
        else {"etag": base.etag, "size": base.size, "limit": spill.base_limit if spill else base.size},
        "never_saved": of.never_saved,
        "replaces": of.replaces,
        "attributes_changed": of.attributes_changed,
        "mtime_set": of.mtime_set,
        "changed": sorted(of.changed),
        "header_changes": dataclasses.asdict(of.header_changes),
        "journaled_at": time.time(),
    }


def from_record(wb: WriteBack, path: str, record: dict[str, Any]) -> OpenFile:
    """A file an earlier process journaled, pending here as if just closed; OSError if its spill file is gone."""
    # .get: records of earlier versions have no atime_ns or rdev
    fields = {name: record.get(name) for name in ("size", *POSIX_FIELDS)}
    base = record["base"]
    spill = None
    if record["spill"]:
        limit = base["limit"] if base else 0
        written = Extents.of(record["written"])
        path_on_disk = os.path.join(wb.journal.directory, record["spill"])
        spill = SpillFile.reopen(path_on_disk, record["size"], limit, written)
    node = wb.tree.added(path, EntryInfo(is_dir=False, etag=base and base["etag"], from_head=True, **fields))
    of = OpenFile(wb, node, exists=base is not None)
    if base is not None:
        of.base = dataclasses.replace(node.info, size=base["size"])
    of.spill = spill
    of.never_saved = record["never_saved"]
    of.replaces = record.get("replaces")  # records of earlier versions have none
    of.attributes_changed = record["attributes_changed"]
    of.mtime_set = record["mtime_set"]
    of.changed = set(record["changed"])
    of.header_changes = HeaderChanges(**record["header_changes"])
    of.record = record["name"]
    return of
