"""The one place s3fuse talks to S3.

Owns the boto3 client (credentials, signing and retries come from botocore), the
thread limiter that lets trio code call it without blocking the event loop, the
per-call deadline, the retry of response bodies that break off, the table that
turns S3 errors into errno values, and the mount's request options (requester pays,
SSE-C, ACL, storage class, ListObjects version), added to every call that takes them.
"""

from __future__ import annotations

import base64
import collections
import copy
import errno
import hashlib
import logging
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import botocore.loaders
import botocore.session
import botocore.utils
import trio

from . import direct
from .direct import DirectRequests, parse_timestamp
from .errors import S3Error
from .metrics import METRICS
from .transfer import ConnectionRate, TransferBudget

log = logging.getLogger(__name__)

# Requests without a body whose answer is small: how long they take tells how far the server is
# (transfer.ConnectionRate.answered).
ROUND_TRIPS = frozenset({"head_object", "list_objects_v2", "list_objects"})

# S3 error codes (and bare HTTP statuses, for HEAD responses that carry no body) to errno.
# Anything not listed is EIO: the caller sees a failure, never a wrong answer.
ERRNO_BY_CODE: dict[str, int] = {
    "NoSuchKey": errno.ENOENT,
    "NoSuchBucket": errno.ENOENT,
    "NoSuchUpload": errno.ENOENT,
    "NoSuchVersion": errno.ENOENT,
    "NotFound": errno.ENOENT,
    "404": errno.ENOENT,
    "AccessDenied": errno.EACCES,
    "AllAccessDisabled": errno.EACCES,
    "AccountProblem": errno.EACCES,
    "InvalidAccessKeyId": errno.EACCES,
    "SignatureDoesNotMatch": errno.EACCES,
    "ExpiredToken": errno.EACCES,
    "InvalidToken": errno.EACCES,
    "403": errno.EACCES,
    "PreconditionFailed": errno.ESTALE,
    "412": errno.ESTALE,
    "InvalidRange": errno.EINVAL,
    "416": errno.EINVAL,
    "InvalidArgument": errno.EINVAL,
    "InvalidRequest": errno.EINVAL,
    "MalformedXML": errno.EINVAL,
    # An archived object that is not restored: EACCES, as mountpoint-s3 answers. Not
    # EAGAIN, which Python's read() and others take for "no data yet" and return empty.
    "InvalidObjectState": errno.EACCES,
    "BucketNotEmpty": errno.ENOTEMPTY,
    "InvalidBucketName": errno.EINVAL,
    "BucketAlreadyExists": errno.EEXIST,
    "BucketAlreadyOwnedByYou": errno.EEXIST,
    "EntityTooLarge": errno.EFBIG,
    "KeyTooLongError": errno.ENAMETOOLONG,
    "NotImplemented": errno.EOPNOTSUPP,
    "501": errno.EOPNOTSUPP,
    "MethodNotAllowed": errno.EPERM,
    "405": errno.EPERM,
    "RequestTimeout": errno.ETIMEDOUT,
    "SlowDown": errno.EIO,
    "ServiceUnavailable": errno.EIO,
    "InternalError": errno.EIO,
}


# Failures of a response body after botocore handed it over (its retries are done by then).
BODY_READ_ERRORS = (
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
)


def s3_error(code: str, message: str) -> S3Error:
    """An S3Error for an S3 error code, with the errno the table gives it."""
    return S3Error(ERRNO_BY_CODE.get(code, errno.EIO), code, message or code)


def translate(exc: BaseException) -> S3Error:
    """Map a botocore exception (or a deadline) to an S3Error with the right errno."""
    if isinstance(exc, S3Error):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        error = s3_error(str(err.get("Code") or status), str(err.get("Message") or ""))
        error.status = status
        return error
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return S3Error(errno.EACCES, "NoCredentials", "no AWS credentials found")
    if isinstance(exc, (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError)):
        return S3Error(errno.EIO, "Timeout", str(exc))
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return S3Error(errno.EIO, "EndpointUnreachable", str(exc))
    if isinstance(exc, trio.TooSlowError):
        return S3Error(errno.EIO, "Timeout", "no answer within the request deadline")
    return S3Error(errno.EIO, type(exc).__name__, str(exc))


@dataclass(frozen=True)
class RequestOptions:
    """What the mount adds to, or changes in, the S3 requests it sends."""

    requester_pays: bool = False
    sse_c_key: bytes | None = field(default=None, repr=False)
    acl: str | None = None  # canned ACL of the objects s3fuse writes
    storage_class: str | None = None  # of the objects s3fuse writes, unless one is kept (upload.ObjectHeaders)
    list_version: int = 2  # 1: ListObjects with markers, for servers without ListObjectsV2

    def params_for(self, accepted: Collection[str]) -> dict[str, Any]:
        """The parameters for an operation whose input shape has the members ``accepted``."""
        params: dict[str, Any] = {}
        if self.requester_pays:
            params["RequestPayer"] = "requester"
        if self.sse_c_key is not None:
            # Encoded here, MD5 included: botocore would encode a raw key only for some operations.
            key, md5 = self.sse_c_key_b64, base64.b64encode(hashlib.md5(self.sse_c_key).digest()).decode()
            for prefix in ("SSECustomer", "CopySourceSSECustomer"):
                params.update({prefix + "Algorithm": "AES256", prefix + "Key": key, prefix + "KeyMD5": md5})
        # ACL and storage class are for the operations that write an object, which are
        # those that take a StorageClass (PutObjectAcl takes an ACL but writes none).
        if "StorageClass" in accepted:
            if self.acl:
                params["ACL"] = self.acl
            if self.storage_class:
                params["StorageClass"] = self.storage_class
        return {name: value for name, value in params.items() if name in accepted}

    @property
    def sse_c_key_b64(self) -> str:
        return base64.b64encode(self.sse_c_key).decode() if self.sse_c_key is not None else ""

    def secrets(self) -> list[str]:
        """Strings the log must never show."""
        return [self.sse_c_key_b64] if self.sse_c_key is not None else []


@dataclass(frozen=True)
class ClientSettings:
    """What a boto3 client and S3Client need; built from the mount options."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    addressing_style: str = "auto"
    max_connections: int = 32
    timeout: float = 30.0
    max_attempts: int = 4
    transfer_budget: int = 64 << 20
    request: RequestOptions = RequestOptions()


def _add_request_payer_header(params: dict[str, Any], **_: Any) -> None:
    params["headers"]["x-amz-request-payer"] = "requester"


class LeanModelLoader(botocore.loaders.JSONFileLoader):
    """botocore's JSON data files, less what an S3 mount never uses, which its clients
    would otherwise hold for as long as they live: of the endpoint data of every AWS
    service (6.8 MiB once parsed) only S3's and that of the services credentials may
    come from, and no documentation strings in service models (about 1 MiB of S3's)."""

    KEPT_ENDPOINTS = frozenset({"s3", "s3-control", "sts", "sso", "sso-oidc", "signin"})

    def load_file(self, file_path: str) -> Any:
        data = super().load_file(file_path)
        name = os.path.basename(file_path)
        if name == "endpoints" and data is not None:
            for partition in data.get("partitions", ()):
                services = partition.get("services", {})
                for service in [s for s in services if s not in self.KEPT_ENDPOINTS]:
                    del services[service]
        elif name == "service-2" and data is not None:
            _drop_documentation(data)
        return data


def _drop_documentation(model: Any) -> None:
    if isinstance(model, dict):
        for key in ("documentation", "documentationUrl"):
            if key in model:
                model[key] = ""  # emptied, not removed: botocore reads some of them
        for value in model.values():
            _drop_documentation(value)
    elif isinstance(model, list):
        for value in model:
            _drop_documentation(value)


def boto_session(settings: ClientSettings) -> boto3.session.Session:
    """A boto3 session for ``make_boto_client``: clients made from one session share its loaded
    service model (about 5 MiB of memory per session). Not thread-safe: make its clients one at a time."""
    core = botocore.session.get_session()
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_timestamp)
    session = boto3.session.Session(botocore_session=core, profile_name=settings.profile)
    core.get_component("data_loader").file_loader = LeanModelLoader()
    return session


def make_boto_client(
    settings: ClientSettings, region: str | None = None, session: boto3.session.Session | None = None
) -> Any:
    """A boto3 S3 client (from ``session``, else a new one), whose credentials and SSE-C key
    ``REDACT`` hides from the log before it sends anything (botocore's debug lines carry headers
    such as X-Amz-Security-Token).

    botocore does credentials (env, profiles, SSO, instance metadata), signing and
    retries with backoff.
    """
    session = session or boto_session(settings)
    config = botocore.config.Config(
        region_name=region or settings.region or session.region_name or "us-east-1",
        max_pool_connections=settings.max_connections,
        connect_timeout=min(settings.timeout, 10.0),
        read_timeout=settings.timeout,
        # --retries counts attempts, the first included; botocore's "max_attempts" would count
        # retries after it (one attempt more than asked, past the per-call deadline).
        retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
        s3={"addressing_style": settings.addressing_style},
        tcp_keepalive=True,
        signature_version="s3v4",  # presigned URLs too (botocore would sign those with SigV2)
        # Uploads carry their checksum (Content-MD5 or CRC32, computed by s3fuse); botocore's
        # own would cost the CPU a second time.
        request_checksum_calculation="when_required",
        # Not a CRC of every whole-object GET either (a third of a cold read's CPU): reads are
        # pinned to the ETag seen at open, and ranged GETs carry no checksum to check anyway.
        response_checksum_validation="when_required",
    )
    client = session.client("s3", endpoint_url=settings.endpoint_url, config=config)
    METRICS.observe(client)
    if settings.request.requester_pays:
        # The start-up checks have no RequestPayer parameter, but a Requester Pays bucket
        # of another account refuses requests without the header.
        for operation in ("HeadBucket", "GetBucketLocation"):
            client.meta.events.register(f"before-call.s3.{operation}", _add_request_payer_header)
    creds = session.get_credentials()
    frozen = creds.get_frozen_credentials() if creds else None
    REDACT.add([s for s in (frozen.secret_key, frozen.token) if s] if frozen else [])
    REDACT.add(settings.request.secrets())
    return client


def region_of(location: str | None) -> str:
    """The region named by a GetBucketLocation answer (None or "" is us-east-1, EU the old eu-west-1)."""
    if not location:
        return "us-east-1"
    return "eu-west-1" if location == "EU" else location


class S3Client:
    """Async facade over one boto3 client for one bucket.

    Every call runs in a worker thread under a CapacityLimiter sized like the
    connection pool, so trio never blocks and botocore never waits for a socket.
    A call that outlives ``deadline`` seconds (all retries included) fails with EIO.
    Every call's parameters come from ``params``, which adds the mount's request options.
    """

    def __init__(self, client: Any, bucket: str, settings: ClientSettings) -> None:
        self.client = client
        self.bucket = bucket
        # GetObject, HeadObject, PutObject and UploadPart, at a third of botocore's CPU per request
        self.direct = DirectRequests(client, bucket, settings.max_attempts)
        self.limiter = trio.CapacityLimiter(settings.max_connections)
        # Streaming GETs (stream.py) hold a connection and a thread each while they last: at
        # most half of them, so that the other requests of the mount always find some.
        self.streams = trio.CapacityLimiter(max(1, settings.max_connections // 2))
        # Streams on standby (their GET sent, their body not read yet) hold a connection and a thread
        # too: at most a quarter of them, apart from the streams' own, so none is taken from a reader.
        self.standby = trio.CapacityLimiter(max(1, settings.max_connections // 4))
        # Bytes read ahead by streams and parts in flight, for all the files of the mount.
        self.transfer = TransferBudget(settings.transfer_budget)
        # What one connection carries: how long the streams' segments are (reader.py).
        self.connection_rate = ConnectionRate()
        # botocore's own timeouts bound each attempt; this bounds the whole call.
        self.deadline = settings.timeout * settings.max_attempts + 5.0
        self.max_attempts = settings.max_attempts
        self.request = settings.request
        self._options: dict[str, dict[str, Any]] = {}  # boto3 method name -> its request options
        # Which conditional writes the server honours, by kind, and the lock of their probe (write/conditions.py).
        self.honours: dict[str, bool] = {}
        self.probing: collections.defaultdict[str, trio.Lock] = collections.defaultdict(trio.Lock)

    def params(self, operation: str, **params: Any) -> dict[str, Any]:
        """The parameters of one call of ``operation`` (a boto3 method name, like "put_object"):
        Bucket=, the request options its input shape accepts, and ``params``, which win."""
        options = self._options.get(operation)
        if options is None:
            name = self.client.meta.method_to_api_mapping[operation]
            shape = self.client.meta.service_model.operation_model(name).input_shape
            options = self._options[operation] = self.request.params_for(shape.members)
        return {"Bucket": self.bucket, **options, **params}

    def for_bucket(self, bucket: str, client: Any) -> S3Client:
        """Another bucket, through a client of its region, sharing this one's thread limiter and options."""
        other = copy.copy(self)
        other.bucket, other.client = bucket, client
        other.direct = DirectRequests(client, bucket, self.max_attempts)
        return other

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking function in the S3 thread pool, under the deadline."""
        try:
            with trio.fail_after(self.deadline):
                return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter, abandon_on_cancel=True)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, trio.TooSlowError) as exc:
            raise translate(exc) from exc

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """Call one S3 operation on the mounted bucket (Bucket= and the request options are filled in)."""
        method = getattr(self.direct if operation in direct.OPERATIONS else self.client, operation)
        kwargs = self.params(operation, **params)
        if operation not in ROUND_TRIPS:
            return await self.run(lambda: method(**kwargs))

        def timed() -> dict[str, Any]:
            began = time.monotonic()
            answer = method(**kwargs)
            self.connection_rate.answered(time.monotonic() - began)
            return answer

        return await self.run(timed)

    async def list_page(self, **params: Any) -> dict[str, Any]:
        """One page of ListObjectsV2, or with list version 1 one page of ListObjects, in V2's terms.

        Callers pass StartAfter and ContinuationToken and read NextContinuationToken
        and KeyCount. V1's Marker is a key, which serves as both StartAfter and token.
        """
        if self.request.list_version == 2:
            page = await self.call("list_objects_v2", **params)
            if page.get("IsTruncated") and not page.get("NextContinuationToken"):
                # e.g. a server that ignores list-type=2 and answers as ListObjects (v1)
                log.warning(
                    "the listing of %r is truncated but S3 sent no continuation token: only its first %d "
                    "entries are seen; if the server has no ListObjectsV2, mount with --list-version 1",
                    params.get("Prefix", ""),
                    page.get("KeyCount", 0),
                )
            return page
        token, start_after = params.pop("ContinuationToken", None), params.pop("StartAfter", None)
        if token or start_after:
            params["Marker"] = token or start_after
        page = await self.call("list_objects", **params)
        names = [obj["Key"] for obj in page.get("Contents", ())] + [p["Prefix"] for p in page.get("CommonPrefixes", ())]
        page["KeyCount"] = len(names)
        if page.get("IsTruncated"):
            # S3 sends NextMarker only with a Delimiter; without one the last key is the marker.
            page["NextContinuationToken"] = page.get("NextMarker") or max(names, default=None)
        return page

    async def get_bytes(self, key: str, **params: Any) -> tuple[dict[str, Any], bytes]:
        """GetObject with the body read inside the worker thread.

        botocore retries a request that fails, but not a body that breaks off while
        being read; those are retried here, with the same backoff budget.
        """
        kwargs = self.params("get_object", Key=key, **params)

        def fetch() -> tuple[dict[str, Any], bytes]:
            attempt = 1
            while True:
                resp = self.direct.get_object(**kwargs)
                # Not 'with resp["Body"] as body': that gives urllib3's raw stream, whose
                # errors are not botocore's (and would escape as a crash of the mount).
                body = resp["Body"]
                try:
                    return resp, body.read()
                except BODY_READ_ERRORS:
                    if attempt >= self.max_attempts:
                        raise
                    log.info("reading %r broke off (attempt %d); retrying", key, attempt)
                    time.sleep(min(0.1 * 2**attempt, 2.0))
                    attempt += 1
                finally:
                    body.close()

        return await self.run(fetch)


class RedactSecrets(logging.Filter):
    """Replaces credential strings in every log record, whoever logged them."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: list[str] = []

    def add(self, secrets: list[str]) -> None:
        """More strings to hide; short ones would hide innocent text, and are not secrets anyway."""
        self.secrets += [s for s in secrets if len(s) >= 8 and s not in self.secrets]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            msg = record.getMessage()
            if any(s in msg for s in self.secrets):
                for s in self.secrets:
                    msg = msg.replace(s, "***")
                record.msg, record.args = msg, None
        return True


REDACT = RedactSecrets()  # on every log handler of the daemon (mount.setup_logging)
