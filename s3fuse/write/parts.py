"""The part plan of an upload: pure arithmetic, no I/O.

Owns S3's multipart limits as s3fuse applies them (parts grow with the file, so
10,000 parts still reach 5 TiB), the largest file s3fuse stores, which files are one
PutObject, the part sizes of a streamed upload (final size unknown) and of a planned
one, and ``rebuild_plan``: which parts of a changed object are copied inside S3 (from
the old object, or from an all-zero one for a hole: zeros.py) and which are sent from
the spill file. Tested against the limits in tests/unit/test_upload.py.
"""

from __future__ import annotations

import enum
import errno

from ..errors import FsError
from ..extents import Extents

MiB = 1 << 20
MIN_PART = 8 * MiB  # S3 wants at least 5 MiB in every part but the last
MAX_PARTS = 10_000
MAX_SINGLE_COPY = 5 << 30  # CopyObject's limit; larger objects are copied part by part
# The largest file s3fuse writes: 5 TiB, the largest object of classic S3 and still of MinIO,
# Ceph and most other servers (AWS has since raised its own to 10,000 parts of 5 GiB, 48.8 TiB).
# A write or truncate past it fails with EFBIG before anything is sent.
MAX_FILE_SIZE = 5 << 40
SINGLE_PUT_LIMIT = MIN_PART  # files up to this size are one PutObject
PARTS_IN_FLIGHT = 4  # per file; parts are read from the spill file as they are sent, so this bounds connections
# The longest part copied from an all-zero object (zeros.py, which makes objects up to this size).
MAX_ZERO_PART = 1 << 30


class Source(enum.Enum):
    """Where a part of a rebuilt object comes from."""

    COPY = "copy"  # unchanged bytes of the old object, copied inside S3 (UploadPartCopy)
    ZERO = "zero"  # all hole: copied inside S3 from an all-zero object
    SEND = "send"  # sent from the spill file


def planned_part_size(size: int) -> int:
    """Part size for an upload of known size: at least MIN_PART, at most 10,000 parts."""
    part = max(MIN_PART, -(-size // MAX_PARTS))
    return -(-part // MiB) * MiB


def rebuild_plan(size: int, base_limit: int, written: Extents) -> list[tuple[int, int, Source]]:
    """The parts of an object of ``size`` bytes rebuilt from an older one: (start, end, source).

    The old object's bytes are in use below ``base_limit`` except where ``written`` (sent
    from the spill file); ``base_limit`` 0: no old object; at or above it, unwritten
    bytes are a hole. Parts are ``planned_part_size`` long (the last one shorter). A part
    with a written byte, or with both old bytes and hole, is sent; one wholly below
    ``base_limit`` is copied from the old object, a run of such parts as one copy of up
    to ``MAX_SINGLE_COPY``; one wholly in the hole is copied from an all-zero object, a
    run of such parts as one of up to ``MAX_ZERO_PART``. So every part but the last is at
    least MIN_PART, none exceeds 5 GiB, there are at most MAX_PARTS, and only parts with
    written bytes cost upload.
    """
    part = planned_part_size(size)
    plan: list[tuple[int, int, Source]] = []
    for start in range(0, size, part):
        end = min(start + part, size)
        if written.intersects(start, end) or start < base_limit < end:
            source = Source.SEND
        else:
            source = Source.COPY if end <= base_limit else Source.ZERO
        limit = MAX_SINGLE_COPY if source is Source.COPY else MAX_ZERO_PART
        if source is not Source.SEND and plan and plan[-1][2] is source and end - plan[-1][0] <= limit:
            plan[-1] = (plan[-1][0], end, source)  # one copy part for a long unchanged run or hole
        else:
            plan.append((start, end, source))
    return plan


def check_file_size(size: int) -> None:
    """EFBIG (FsError) for a file size s3fuse cannot store as one object."""
    if size > MAX_FILE_SIZE:
        raise FsError(errno.EFBIG, "FileTooLarge", f"{size} bytes: the largest file is {MAX_FILE_SIZE} (5 TiB)")


def streamed_part_size(index: int) -> int:
    """Part size for part ``index`` (0-based) of an upload whose final size is unknown.

    8 MiB for the first 1000 parts, doubling every 1000 parts: 10,000 parts reach
    8 TiB, and no part exceeds 4 GiB.
    """
    return MIN_PART << min(index // 1000, 9)
