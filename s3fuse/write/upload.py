"""Putting bytes into S3 and copying objects server-side: the S3 calls of every write.

Owns the checksum on every upload (Content-MD5 on a PutObject, CRC32 on a part),
multipart uploads (created, fed, completed or aborted), server-side copies
(CopyObject, or UploadPartCopy for objects over 5 GiB), batched deletes, and the
registry of the multipart uploads s3fuse started: ``s3fuse cleanup`` reads it to
abort orphans without touching anyone else's uploads. The part sizes come from
parts.py; which calls save a file is save.py's choice. ``mutations.py`` uses the
same calls for directory markers, symlinks and renames.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import logging
import mimetypes
import os
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import trio

from ..errors import FsError, S3Error
from ..s3client import S3Client, s3_error
from .parts import MAX_SINGLE_COPY, MiB, planned_part_size

log = logging.getLogger(__name__)

# The checksum of a multipart upload's parts: the server checks each part against it, as
# against a PutObject's Content-MD5, and CRC32 costs a sixth of MD5's CPU (0.06 against
# 0.36 s per 256 MiB here), which a big write spends while it competes with the server.
PART_CHECKSUM = "CRC32"
PENDING = "pending-"  # the registry's announcements of uploads not created yet
DELETE_BATCH = 1000  # DeleteObjects' limit
PARALLEL_COPIES = 16
# HeadObject fields that are also PutObject/CopyObject parameters of the same name.
KEPT_HEADERS = ("CacheControl", "ContentDisposition", "ContentEncoding", "ContentLanguage", "Expires")
COPY_PART = 512 * MiB  # parts of a server-side copy: no bytes pass through s3fuse, so few and large


class FileRange(io.RawIOBase):
    """Bytes [start, end) of an open file as a seekable body for botocore, read with pread.

    A part is hashed (its CRC32), sent and, on a retry, rewound from its file
    without ever being in memory whole: 4 parts in flight would otherwise hold
    32 MiB. pread keeps parts of one file independent of each other and of the
    file's offset.
    """

    def __init__(self, fd: int, start: int, end: int) -> None:
        super().__init__()
        self.fd, self.start, self.end = fd, start, end
        self.position = 0

    def __len__(self) -> int:
        return self.end - self.start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: len(self)}[whence]
        self.position = max(0, base + offset)
        return self.position

    def read(self, size: int | None = -1) -> bytes:
        left = max(0, len(self) - self.position)
        size = left if size is None or size < 0 else min(size, left)
        data = os.pread(self.fd, size, self.start + self.position) if size else b""
        if len(data) < size:
            raise OSError(errno.EIO, f"file ended {size - len(data)} bytes before the part did")
        self.position += size
        return data

    def readall(self) -> bytes:
        return self.read()


def _chunks(data: bytes | memoryview | FileRange) -> Iterator[bytes | memoryview]:
    """The bytes of a body; a FileRange is read a MiB at a time and left rewound."""
    if not isinstance(data, FileRange):
        yield data
        return
    data.seek(0)
    while chunk := data.read(MiB):
        yield chunk
    data.seek(0)


def content_md5(data: bytes | memoryview | FileRange) -> str:
    digest = hashlib.md5()
    for chunk in _chunks(data):
        digest.update(chunk)
    return base64.b64encode(digest.digest()).decode()


def content_crc32(data: bytes | memoryview | FileRange) -> str:
    """The body's CRC32 as x-amz-checksum-crc32 spells it (base64 of the big-endian value)."""
    crc = 0
    for chunk in _chunks(data):
        crc = zlib.crc32(chunk, crc)
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


def guess_content_type(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


@dataclass
class ObjectHeaders:
    """What a write gives an object besides its bytes."""

    content_type: str
    metadata: dict[str, str] = field(default_factory=dict)
    # None: the server's default. Kept from the object's HEAD, or a copy onto itself
    # (chmod, setxattr) would move an infrequent-access object to STANDARD.
    storage_class: str | None = None
    # Cache-Control, Content-Encoding and the like: a copy that replaces the metadata
    # drops every header it does not repeat.
    other: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_head(cls, resp: dict[str, Any]) -> ObjectHeaders:
        return cls(
            resp.get("ContentType") or "application/octet-stream",
            dict(resp.get("Metadata") or {}),
            resp.get("StorageClass"),
            {name: resp[name] for name in KEPT_HEADERS if resp.get(name)},
        )

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"ContentType": self.content_type, "Metadata": self.metadata, **self.other}
        if self.storage_class is not None:
            params["StorageClass"] = self.storage_class
        return params


@dataclass
class HeaderChanges:
    """Headers set through xattrs, waiting for the object's next upload or copy."""

    metadata: dict[str, str | None] = field(default_factory=dict)  # None: removed
    content_type: str | None = None
    storage_class: str | None = None

    def update(self, other: HeaderChanges) -> None:
        self.metadata.update(other.metadata)
        self.content_type = other.content_type or self.content_type
        self.storage_class = other.storage_class or self.storage_class

    def applied_to(self, headers: ObjectHeaders) -> ObjectHeaders:
        metadata = dict(headers.metadata)
        for name, value in self.metadata.items():
            if value is None:
                metadata.pop(name, None)
            else:
                metadata[name] = value
        return dataclasses.replace(
            headers,
            metadata=metadata,
            content_type=self.content_type or headers.content_type,
            storage_class=self.storage_class or headers.storage_class,
        )


def quoted_etag(etag: str) -> str:
    """An ETag as HeadObject and listings give it: some servers (SeaweedFS) answer
    CopyObject with the ETag unquoted, which would look like another version."""
    return etag if etag.startswith('"') else f'"{etag}"'


async def put_object(s3: S3Client, key: str, data: bytes | FileRange, headers: ObjectHeaders) -> str:
    """PutObject with Content-MD5, hashed in the worker thread; returns the new ETag."""
    return (await put_object_answer(s3, key, data, headers))["ETag"]


async def put_object_answer(
    s3: S3Client, key: str, data: bytes, headers: ObjectHeaders, conditions: dict[str, str] | None = None
) -> dict[str, Any]:
    """put_object, with ``conditions`` (IfMatch=, IfNoneMatch=); returns S3's answer, its ETag quoted."""
    params = s3.params("put_object", Key=key, Body=data, **headers.params(), **(conditions or {}))

    def send() -> dict[str, Any]:
        return s3.direct.put_object(ContentMD5=content_md5(data), **params)

    answer = await s3.run(send)
    answer["ETag"] = quoted_etag(answer["ETag"])
    return answer


async def gather(jobs: Iterable[Callable[[], Awaitable[None]]], limit: int) -> None:
    """Run jobs concurrently, at most ``limit`` at a time; the first failure cancels the rest."""
    slots = trio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with slots:
            await job()

    try:
        async with trio.open_nursery() as nursery:
            for job in jobs:
                await slots.acquire()  # don't queue millions of tasks for a huge directory
                slots.release()
                nursery.start_soon(one, job)
    except BaseExceptionGroup as group:
        # Callers map an FsError to an errno; a group of them would reach nobody.
        failures = group.subgroup(FsError)
        if failures is None:
            raise
        first: BaseException = failures
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from group


def process_alive(pid: Any) -> bool:
    """Whether a process with this id runs (on this machine)."""
    try:
        os.kill(int(pid), 0)
    except PermissionError:
        return True  # another user's process, but alive
    except (OSError, TypeError, ValueError):
        return False
    return True


class UploadRegistry:
    """The multipart uploads s3fuse started and has not finished, one small file each.

    Lives in the cache dir, so it survives a crash; S3 itself cannot tell whose an
    upload is, and cleanup must never abort another program's upload. An upload is
    announced (``starting``: key, time, process) before its CreateMultipartUpload is
    sent and recorded with its id once the answer comes, so a daemon killed in
    between leaves an announcement that claims the one upload of that key it made.
    """

    def __init__(self, cache_dir: str, bucket: str) -> None:
        self.directory = os.path.join(cache_dir, "uploads", quote(bucket, safe=""))

    def _path(self, upload_id: str) -> str:
        return os.path.join(self.directory, hashlib.sha1(upload_id.encode()).hexdigest() + ".json")

    def _write(self, path: str, entry: dict[str, Any]) -> None:
        os.makedirs(self.directory, exist_ok=True)
        with open(path, "w") as f:
            json.dump({**entry, "started": time.time(), "pid": os.getpid()}, f)

    def starting(self, key: str) -> str:
        """Announce an upload of key about to be created; returns the announcement's name."""
        name = f"{PENDING}{os.getpid()}-{time.time_ns()}.json"
        self._write(os.path.join(self.directory, name), {"key": key})
        return name

    def record(self, upload_id: str, key: str, announced: str | None = None) -> None:
        self._write(self._path(upload_id), {"upload_id": upload_id, "key": key})
        if announced is not None:
            self.withdraw(announced)

    def withdraw(self, announced: str) -> None:
        """The announced upload was recorded, or never created."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.directory, announced))

    def forget(self, upload_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(upload_id))

    def _read(self) -> Iterator[tuple[str, dict[str, Any]]]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for name in names:
            try:
                with open(os.path.join(self.directory, name)) as f:
                    yield name, json.load(f)
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable upload record %s: %s", name, exc)

    def entries(self) -> dict[str, dict[str, Any]]:
        """upload id -> what was recorded about it."""
        return {entry["upload_id"]: entry for name, entry in self._read() if "upload_id" in entry}

    def announced(self) -> dict[str, dict[str, Any]]:
        """announcement name -> key, time and process of an upload whose id was never recorded."""
        return {name: entry for name, entry in self._read() if name.startswith(PENDING) and "key" in entry}


class MultipartUpload:
    """One multipart upload: parts may be sent or copied in any order, then completed.

    Created with the CRC32 checksum algorithm: every part sent carries its CRC32, a
    copied part gets one from the server, and the completion lists them all.
    """

    def __init__(self, s3: S3Client, key: str, headers: ObjectHeaders, registry: UploadRegistry) -> None:
        self.s3 = s3
        self.key = key
        self.headers = headers
        self.registry = registry
        self.upload_id: str | None = None
        self.parts: dict[int, dict[str, str]] = {}  # number -> ETag and checksum

    async def start(self) -> None:
        announced = self.registry.starting(self.key)
        try:
            resp = await self.s3.call(
                "create_multipart_upload", Key=self.key, ChecksumAlgorithm=PART_CHECKSUM, **self.headers.params()
            )
        except S3Error as exc:
            # A refusal made no upload; after a timeout or a cancellation one may exist, and
            # the announcement lets cleanup claim it once this daemon is gone.
            if exc.status is not None:
                self.registry.withdraw(announced)
            raise
        self.upload_id = resp["UploadId"]
        self.registry.record(self.upload_id, self.key, announced)

    async def send_part(self, number: int, body: bytes | FileRange) -> None:
        """Upload part ``number``; a FileRange is read (hashed, sent) inside the worker thread."""

        params = self.s3.params("upload_part", Key=self.key, UploadId=self.upload_id, PartNumber=number)

        def send() -> dict[str, str]:
            checksum = content_crc32(body)
            resp = self.s3.direct.upload_part(
                Body=body, ChecksumAlgorithm=PART_CHECKSUM, ChecksumCRC32=checksum, **params
            )
            return {"ETag": resp["ETag"], "ChecksumCRC32": checksum}

        self.parts[number] = await self.s3.run(send)

    async def copy_part(self, number: int, source_key: str, start: int, end: int, if_match: str | None) -> None:
        """Part ``number`` is bytes [start, end) of another object, copied inside S3."""
        params: dict[str, Any] = {"CopySourceIfMatch": if_match} if if_match else {}
        resp = await self.s3.call(
            "upload_part_copy",
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            CopySource={"Bucket": self.s3.bucket, "Key": source_key},
            CopySourceRange=f"bytes={start}-{end - 1}",
            **params,
        )
        result = resp["CopyPartResult"]
        # Servers that keep checksums (S3, SeaweedFS) compute the copied part's and want it back
        # at completion; moto has none to give.
        self.parts[number] = {k: result[k] for k in ("ETag", "ChecksumCRC32") if k in result}

    async def complete(self, conditions: dict[str, str] | None = None) -> str:
        """Complete the upload (``conditions``: IfMatch=, IfNoneMatch=); returns the new object's ETag.

        A completion refused on its conditions leaves the upload open: it may be completed again."""
        parts = [{"PartNumber": n, **part} for n, part in sorted(self.parts.items())]
        resp = await self.s3.call(
            "complete_multipart_upload",
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": parts},
            **(conditions or {}),
        )
        assert self.upload_id is not None
        self.registry.forget(self.upload_id)
        return quoted_etag(resp["ETag"])

    async def abort(self) -> None:
        """Best effort: an upload that cannot be aborted now stays registered for cleanup."""
        if self.upload_id is None:
            return
        try:
            with trio.CancelScope(shield=True):
                await self.s3.call("abort_multipart_upload", Key=self.key, UploadId=self.upload_id)
        except FsError as exc:
            log.warning(
                "could not abort the upload of %r (%s); 's3fuse cleanup %s' will", self.key, exc, self.s3.bucket
            )
            return
        self.registry.forget(self.upload_id)


async def copy_object(
    s3: S3Client,
    source_key: str,
    dest_key: str,
    size: int,
    registry: UploadRegistry,
    headers: ObjectHeaders | None = None,
    if_match: str | None = None,
) -> str:
    """Copy an object inside S3, optionally with new headers; returns the new ETag."""
    if size <= MAX_SINGLE_COPY:
        params: dict[str, Any] = {"CopySource": {"Bucket": s3.bucket, "Key": source_key}}
        if headers is not None:
            params.update(MetadataDirective="REPLACE", **headers.params())
        if if_match:
            params["CopySourceIfMatch"] = if_match
        resp = await s3.call("copy_object", Key=dest_key, **params)
        return quoted_etag(resp["CopyObjectResult"]["ETag"])
    if headers is None:  # a multipart copy does not carry the source's headers by itself
        headers = ObjectHeaders.from_head(await s3.call("head_object", Key=source_key))
    upload = MultipartUpload(s3, dest_key, headers, registry)
    await upload.start()
    part = max(planned_part_size(size), COPY_PART)
    try:
        await gather(
            (
                lambda n=n, start=start: upload.copy_part(n, source_key, start, min(start + part, size), if_match)
                for n, start in enumerate(range(0, size, part), 1)
            ),
            PARALLEL_COPIES,
        )
        etag = await upload.complete()
    except BaseException:
        await upload.abort()
        raise
    return etag


async def delete_keys(s3: S3Client, keys: list[str]) -> None:
    """DeleteObjects in batches of 1000; any key that could not be deleted fails the call."""
    for i in range(0, len(keys), DELETE_BATCH):
        batch = keys[i : i + DELETE_BATCH]
        resp = await s3.call("delete_objects", Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
        errors = resp.get("Errors") or []
        if errors:
            raise s3_error(errors[0].get("Code", "InternalError"), errors[0].get("Message", ""))
