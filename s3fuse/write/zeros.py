"""Holes on the wire: all-zero objects that the parts of a file's holes are copied from.

S3 has no sparse objects, so a hole must be stored as zeros; sending them from the
spill file made a 1 GiB file with three written 64 KiB extents cost 1 GiB of upload
at every save that had no old object to copy from (its first one, or every one while
it is streamed or truncated to 0). Instead, a part that is all hole is an UploadPartCopy
of a range of an all-zero object this daemon made: the first one is ``MIN_PART`` of
zeros sent once (PutObject), and a bigger one is made inside S3 from two copies of the
one before, so a long hole is one copy of up to 1 GiB, not a request per 8 MiB (128 for
1 GiB: 128 round trips to a distant server). Local servers copy byte by byte either way:
the first save of a 1 GiB file with three 64 KiB extents, these objects made on the way,
took 32 s on moto and 44 s on SeaweedFS here (14 and 24 s sending the 1 GiB), and later
saves of it 15-25 s on both, as before; it sends 32 MiB instead of 1 GiB.

``ZeroObjects`` owns them: keys ``.s3fuse/zeros/ID-SIZE`` under the bucket's reserved
``.s3fuse/`` (hidden from the mount, as the attribute index of attrindex.py), ID unique
to the daemon so that no mount deletes another's, pinned by ETag (CopySourceIfMatch: a
key changed by someone else is never copied as zeros), made again if they vanish, and
deleted at unmount. A daemon that crashes
leaves them behind (``s3fuse cleanup`` does not know them; 8 MiB to 2 GiB in all).
"""

from __future__ import annotations

import errno
import logging
import os
import uuid

import trio

from .. import attrindex  # the module, not its name: attrindex imports write.upload, and so this package
from ..errors import FsError
from ..s3client import S3Client
from .parts import MAX_ZERO_PART, MIN_PART
from .upload import FileRange, MultipartUpload, ObjectHeaders, UploadRegistry, delete_keys, put_object

log = logging.getLogger(__name__)

HEADERS = ObjectHeaders("application/octet-stream")


class ZeroObjects:
    """All-zero objects of ``MIN_PART`` doubled up to ``MAX_ZERO_PART`` bytes, made when first needed."""

    def __init__(self, s3: S3Client, registry: UploadRegistry) -> None:
        self.s3, self.registry = s3, registry
        self.stem = f"{attrindex.INDEX_DIR}/zeros/{uuid.uuid4().hex[:12]}-"
        self.made: dict[int, str] = {}  # size -> ETag, in increasing sizes
        self.lock = trio.Lock()  # each object is made once

    def key(self, size: int) -> str:
        return f"{self.stem}{size}"

    async def copy_part(self, upload: MultipartUpload, number: int, length: int) -> None:
        """Part ``number`` of ``upload`` is ``length`` zeros, copied inside S3."""
        assert length <= MAX_ZERO_PART
        size = MIN_PART
        while size < length:
            size *= 2
        for attempt in (1, 2):
            etag = await self._ensure(size)
            try:
                await upload.copy_part(number, self.key(size), 0, length, etag)
                return
            except FsError as exc:
                if attempt == 2 or exc.errno not in (errno.ENOENT, errno.ESTALE):
                    raise
                log.warning("the all-zero object %s is gone or changed (%s); making it again", self.key(size), exc)
                self.made.clear()

    async def _ensure(self, size: int) -> str:
        """The ETag of the all-zero object of ``size`` bytes (MIN_PART times a power of two)."""
        async with self.lock:
            made = MIN_PART
            while made <= size:
                if made not in self.made:
                    self.made[made] = await (self._double(made) if made > MIN_PART else self._first())
                made *= 2
            return self.made[size]

    async def _first(self) -> str:
        fd = os.open("/dev/zero", os.O_RDONLY | os.O_CLOEXEC)  # read as sent, never whole in memory
        try:
            return await put_object(self.s3, self.key(MIN_PART), FileRange(fd, 0, MIN_PART), HEADERS)
        finally:
            os.close(fd)

    async def _double(self, size: int) -> str:
        half = size // 2
        upload = MultipartUpload(self.s3, self.key(size), HEADERS, self.registry)
        await upload.start()
        try:
            for number in (1, 2):
                await upload.copy_part(number, self.key(half), 0, half, self.made[half])
            return await upload.complete()
        except BaseException:
            await upload.abort()
            raise

    async def remove(self) -> None:
        """At unmount: delete the objects made (a failure is logged; they stay)."""
        keys = [self.key(size) for size in self.made]
        self.made.clear()
        if not keys:
            return
        try:
            await delete_keys(self.s3, keys)
        except FsError as exc:
            log.warning("could not delete the all-zero objects %s: %s", keys, exc)
