"""Saving a changed file's bytes from its spill file: one PutObject, or a rebuilt object.

Owns the two ways a file that was not streamed (streaming.py) reaches S3: up to
``SINGLE_PUT_LIMIT`` one PutObject of the whole file; above it a multipart upload
that follows ``parts.rebuild_plan``, the ranges nobody wrote copied inside S3 from
the object as it was opened (UploadPartCopy, pinned to its ETag), the holes copied
from an all-zero object (zeros.py), and the others sent from the spill file.
``OpenFile.save`` chooses between these, the end of a stream, and a copy onto itself
for a change of attributes only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..metadata import EntryInfo
from ..s3client import S3Client
from .conditions import COMPLETE, PUT, Guard
from .parts import PARTS_IN_FLIGHT, SINGLE_PUT_LIMIT, Source, rebuild_plan
from .spill import FetchBase, SpillFile
from .upload import FileRange, MultipartUpload, ObjectHeaders, UploadRegistry, gather, put_object_answer
from .zeros import ZeroObjects


async def save_spill(
    s3: S3Client,
    registry: UploadRegistry,
    zeros: ZeroObjects,
    key: str,
    spill: SpillFile,
    headers: ObjectHeaders,
    base: EntryInfo | None,
    fetch_base: FetchBase,
    block_size: int,
    guard: Guard,
) -> str:
    """Upload the file ``spill`` holds (``base``: the object it changes, None if new); returns the new ETag.

    ``fetch_base`` reads the bytes of ``base`` nobody wrote here, ``block_size`` at a time;
    ``guard``: what the new object may replace.
    """
    size = spill.size
    if size <= SINGLE_PUT_LIMIT:
        data = await spill.read(0, size, fetch_base)
        # Not kept in the block cache: the kernel's page cache holds what was written
        # (its pages stay valid, see kernel_etag), and the daemon's memory stays small.
        return (await put_object_answer(s3, key, data, headers, await guard.params(PUT)))["ETag"]
    # A multipart upload: unchanged ranges and holes copied, changed ranges sent.
    plan = rebuild_plan(size, spill.base_limit if base is not None else 0, spill.written)
    upload = MultipartUpload(s3, key, headers, registry)
    await upload.start()

    async def send(number: int, start: int, end: int) -> None:
        # From the spill file, never whole in memory: a part of a large file is up to
        # 525 MiB, and one of a sparse file is mostly a hole (zeros the file reads as).
        await spill.fill(start, end, fetch_base, block_size)
        with spill.in_use():
            await upload.send_part(number, FileRange(spill.fd, start, end))

    def job(number: int, start: int, end: int, source: Source) -> Callable[[], Awaitable[None]]:
        if source is Source.COPY:
            assert base is not None
            return lambda: upload.copy_part(number, key, start, end, base.etag)
        if source is Source.ZERO:
            return lambda: zeros.copy_part(upload, number, end - start)
        return lambda: send(number, start, end)

    jobs = [job(n, s, e, source) for n, (s, e, source) in enumerate(plan, 1)]
    try:
        await gather(jobs, PARTS_IN_FLIGHT)
        return await upload.complete(await guard.params(COMPLETE))
    except BaseException:
        await upload.abort()
        raise
