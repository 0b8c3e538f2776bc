"""Conditional writes: which ones the server honours, and the guard a save puts on the object it replaces.

S3 refuses (412) a PutObject or CompleteMultipartUpload whose ``If-Match`` names another
ETag than the object's (404 when there is no object), or whose ``If-None-Match: *``
finds one (AWS since 2024). Every save of a file carries one (``Guard``): ``If-Match``
of the version it checked it may replace, or ``If-None-Match: *`` for a name created
here, so that a save racing another mount's can never replace that mount's version
unnoticed (what then happens is the file's business: ``OpenFile``, by ``--on-conflict``).

Servers differ. Measured with the test suite's servers (moto 5.2.6, SeaweedFS 4.48):
moto honours both headers on PutObject, only ``If-None-Match`` on
CompleteMultipartUpload and none of them on CopyObject, and checks them apart from the write (two
racing writes can both pass); SeaweedFS honours them all, atomically.
So each kind of write is probed once per bucket connection, lazily, on the mount's
own probe keys (never by writing user data): where the server ignores the headers,
saves send none and rely on the check before the write (a HeadObject), which is
logged once.
"""

from __future__ import annotations

import errno
import functools
import logging
import uuid
from collections.abc import Awaitable
from typing import Any

import trio

from ..errors import FsError
from ..s3client import S3Client
from .upload import MultipartUpload, ObjectHeaders, UploadRegistry, gather, put_object, put_object_answer

log = logging.getLogger(__name__)

# The mount's own keys (attrindex.INDEX_DIR), one a probe, deleted after it: two mounts probing at
# once on one key would see each other's writes (one's delete made the other's If-None-Match pass).
PROBE_PREFIX = ".s3fuse/probe-"
# An ETag no object has (an MD5 of 32 zeros would need bytes hashing to it).
NO_SUCH_ETAG = '"00000000000000000000000000000000"'
PUT = "PutObject"
COMPLETE = "CompleteMultipartUpload"


def refused(exc: FsError) -> bool:
    """Whether a conditional write failed on its condition: 412; 409 ConditionalRequestConflict (S3's
    answer to two conditional writes racing); 404 to an If-Match of an object that is gone."""
    return exc.code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404")


async def honoured(s3: S3Client, kind: str, registry: UploadRegistry | None = None) -> bool:
    """Whether the server honours If-Match and If-None-Match on ``kind`` (PUT, or COMPLETE: then
    ``registry`` records the probe's multipart upload) writes."""
    if kind in s3.honours:  # every save asks: no lock once known
        return s3.honours[kind]
    async with s3.probing[kind]:  # one probe of each kind at a time; kinds side by side
        if kind not in s3.honours:
            answer = await _probe(s3, kind, registry)
            if answer is None:
                return False  # this write goes unguarded (the HEAD before it is the check)
            s3.honours[kind] = answer
            if not answer:
                log.warning("the server ignores If-Match/If-None-Match on %s (or s3fuse may not write "
                            "%s to check): a save checks the object with HeadObject before it instead, "
                            "and two mounts saving one file at the same moment can both succeed (the "
                            "later one wins)", kind, PROBE_PREFIX + "*")  # fmt: skip
    return s3.honours[kind]


def probe_soon(s3: S3Client, kind: str, registry: UploadRegistry | None, nursery: trio.Nursery) -> None:
    """Start finding out (``honoured``) in the background, for a write that will ask later."""
    if kind not in s3.honours and not s3.probing[kind].locked():
        nursery.start_soon(honoured, s3, kind, registry)


async def _probe(s3: S3Client, kind: str, registry: UploadRegistry | None) -> bool | None:
    """The probe's answer; None when the network or the server failed it (the next write asks again)."""
    try:
        if kind == PUT:
            return await _probe_put(s3)
        assert registry is not None
        return await _probe_complete(s3, registry)
    except FsError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return False  # no right to write the probe key: never
        log.info("could not check how the server treats conditional %s: %s", kind, exc)
        return None


async def _refuses(attempt: Awaitable[Any]) -> bool:
    try:
        await attempt
    except FsError as exc:
        if refused(exc):
            return True
        raise
    return False


def _probe_key() -> str:
    return PROBE_PREFIX + uuid.uuid4().hex


async def _probe_put(s3: S3Client) -> bool:
    headers, key = ObjectHeaders("text/plain"), _probe_key()
    await put_object(s3, key, b"probe", headers)
    conditions = ({"IfNoneMatch": "*"}, {"IfMatch": NO_SUCH_ETAG})
    refusals: list[bool] = []

    async def attempt(condition: dict[str, str]) -> None:
        refusals.append(await _refuses(put_object_answer(s3, key, b"probe", headers, condition)))

    try:
        # Side by side: each is refused, or (ignored) writes the same bytes; a round trip less.
        await gather([functools.partial(attempt, c) for c in conditions], len(conditions))
    finally:
        await s3.call("delete_object", Key=key)
    return all(refusals)


async def _probe_complete(s3: S3Client, registry: UploadRegistry) -> bool:
    # Registered as every upload of s3fuse's: a kill in the middle leaves one that cleanup aborts.
    upload = MultipartUpload(s3, _probe_key(), ObjectHeaders("text/plain"), registry)
    await upload.start()
    try:
        await upload.send_part(1, b"probe")
        honours = await _refuses(upload.complete({"IfMatch": NO_SUCH_ETAG}))
    except BaseException:
        await upload.abort()
        raise
    if honours:
        await upload.abort()
    else:
        await s3.call("delete_object", Key=upload.key)  # completed: the condition was ignored
    return honours


class Guard:
    """The condition one save puts on what it replaces: the version ``etag``, or no object (``etag`` None).

    ``params`` gives the request's headers (none where the server ignores them, or for
    an unguarded save); ``sent`` tells whether any were, so that a refusal means a race.
    """

    def __init__(self, s3: S3Client | None, etag: str | None, registry: UploadRegistry | None = None) -> None:
        self.s3 = s3
        self.etag = etag
        self.registry = registry  # for COMPLETE
        self.sent = False

    async def params(self, kind: str) -> dict[str, str]:
        if self.s3 is None or not await honoured(self.s3, kind, self.registry):
            return {}
        self.sent = True
        return {"IfMatch": self.etag} if self.etag is not None else {"IfNoneMatch": "*"}


UNGUARDED = Guard(None, None)  # a save that replaces whatever is there (the conflict is decided)
