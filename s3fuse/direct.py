"""The object requests of file data and renames, without botocore's request pipeline.

GetObject, HeadObject, PutObject and UploadPart carry every byte of file data, and
one of them is the round trip of each small file read or written; CopyObject and
DeleteObject are a rename (one of each per file, also for every key of a renamed
directory) and an unlink. Through a boto3 client each costs about 2 ms of CPU
(events, parameter validation, endpoint rules, response parsing): more than a local
S3 server takes to answer it, and twice what it costs here.

What must be right stays botocore's: the client's credentials and SigV4 signer, its
HTTP session (proxies, TLS verification, timeouts and the connection pool), the
standard retry mode's decision and backoff, the service model that says which
parameter is which header or query string and how each response header is typed,
and the exception types that ``s3client.translate`` maps to errno. The bucket's URL
comes from the client's own endpoint resolution (a presigned URL, made once).

The calls take boto3's parameters and return boto3's response dicts, so callers
cannot tell the difference, except that a body with a checksum (Content-MD5 or
x-amz-checksum-crc32, which the server checks) is signed as UNSIGNED-PAYLOAD
instead of being hashed with SHA-256 again over plain HTTP, and only bodies of
1 MiB or more ask the server for ``100 Continue`` first.
"""

from __future__ import annotations

import datetime
import email.utils
import itertools
import logging
import time
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

import botocore
import botocore.awsrequest
import botocore.config
import botocore.exceptions
import botocore.handlers
import botocore.response
import botocore.utils
from botocore.retries import standard
from urllib3.exceptions import HTTPError

from . import __version__
from .metrics import METRICS

log = logging.getLogger(__name__)

# boto3 method name -> S3 operation
OPERATIONS = {
    "get_object": "GetObject",
    "head_object": "HeadObject",
    "put_object": "PutObject",
    "upload_part": "UploadPart",
    "copy_object": "CopyObject",
    "delete_object": "DeleteObject",
}
# A body corrupted on the way fails its checksum, and a changed checksum fails the signature.
# (Over plain HTTP, someone on the path could still forge a body with the same CRC32.)
CHECKSUM_HEADERS = ("Content-MD5", "x-amz-checksum-crc32")
UNSIGNED_BODY = botocore.config.Config(s3={"payload_signing_enabled": False})
EXPECT_CONTINUE_FROM = 1 << 20  # smaller bodies go out with their headers, in one round trip
USER_AGENT = f"s3fuse/{__version__} botocore/{botocore.__version__}"
# what reading a body that breaks off raises (urllib3's IncompleteRead and read timeouts)
BROKEN_BODY = (botocore.exceptions.BotoCoreError, OSError, HTTPError)


def parse_timestamp(value: str) -> datetime.datetime:
    """botocore's timestamp parser, minus dateutil for the two forms S3 sends.

    dateutil costs about 0.13 s per 1000-entry listing page (ISO 8601), as much as
    the request, and 0.2 ms per HEAD or GET (RFC 1123 Last-Modified header).
    """
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return botocore.utils.parse_timestamp(value)  # epoch numbers and other rarities
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


class DirectRequests:
    """The object operations of OPERATIONS on one bucket, through the internals of one boto3 client."""

    def __init__(self, client: Any, bucket: str, max_attempts: int) -> None:
        self.client = client
        self.bucket = bucket
        # Both are attributes botocore has had for a decade; get_auth_instance is the signer's
        # public method, and fetches (refreshed) credentials for each request.
        self.signer = client._request_signer
        self.http = client._endpoint.http_session
        self.region = client.meta.region_name
        self.model = client.meta.service_model
        self.retry = standard.RetryPolicy(
            standard.StandardRetryConditions(max_attempts=max_attempts), standard.ExponentialBackoff()
        )
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        """The URL of the bucket's keys, ending with '/': what botocore's endpoint rules give
        (path style, virtual host, the region's endpoint, ...)."""
        if self._base_url is None:
            url = self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": "K"})
            base = url.split("?", 1)[0]
            if not base.endswith("/K"):
                raise ValueError(f"unexpected object URL {base!r}")
            self._base_url = base[:-1]
        return self._base_url

    def get_object(self, **params: Any) -> dict[str, Any]:
        """GetObject; its Body is a botocore StreamingBody, to be read and closed by the caller."""
        return self._call("get_object", params, stream=True)

    def head_object(self, **params: Any) -> dict[str, Any]:
        return self._call("head_object", params)

    def put_object(self, **params: Any) -> dict[str, Any]:
        return self._call("put_object", params)

    def upload_part(self, **params: Any) -> dict[str, Any]:
        return self._call("upload_part", params)

    def copy_object(self, **params: Any) -> dict[str, Any]:
        botocore.handlers.handle_copy_source_param(params)  # {"Bucket", "Key"} -> the quoted header
        return self._call("copy_object", params)

    def delete_object(self, **params: Any) -> dict[str, Any]:
        return self._call("delete_object", params)

    # ---- the request

    def _call(self, method_name: str, params: dict[str, Any], stream: bool = False) -> dict[str, Any]:
        operation = self.model.operation_model(OPERATIONS[method_name])
        if params.get("Bucket") != self.bucket:
            raise ValueError(f"{self.bucket!r} is this client's bucket, not {params.get('Bucket')!r}")
        url, headers, body = self._serialize(operation, params)
        response, answer = self._send(operation, url, headers, body, stream)
        return self._parse(operation, response, answer)

    def _serialize(self, operation: Any, params: dict[str, Any]) -> tuple[str, dict[str, str], Any]:
        """URL, headers and body of a call, placed where the service model says."""
        headers = {"User-Agent": USER_AGENT}
        query = []
        members = operation.input_shape.members
        for name, value in params.items():
            if name in ("Bucket", "Key", "Body"):
                continue
            where = members[name].serialization
            location = where.get("location")
            if location == "header":
                headers[where["name"]] = _header_value(value)
            elif location == "headers":
                headers.update({where["name"] + k: _header_value(v) for k, v in value.items()})
            elif location == "querystring":
                query.append(f"{quote(where['name'], safe='')}={quote(str(value), safe='-_.~')}")
            else:
                raise ValueError(f"{operation.name} takes {name} in its {location or 'body'}, not here")
        url = self.base_url + quote(params["Key"], safe="/~")
        if query:
            url += "?" + "&".join(sorted(query))
        return url, headers, params.get("Body", b"")

    def _send(
        self, operation: Any, url: str, headers: dict[str, str], body: Any, stream: bool
    ) -> tuple[botocore.awsrequest.AWSResponse, ElementTree.Element | None]:
        """The successful response, and its XML body parsed (None for a streamed one)."""
        method = operation.http["method"]
        length = len(body)
        for attempt in itertools.count(1):
            request = botocore.awsrequest.AWSRequest(
                method=method, url=url, data=body, headers=dict(headers), stream_output=stream
            )
            if length and any(name in headers for name in CHECKSUM_HEADERS):
                request.context["client_config"] = UNSIGNED_BODY
            if length >= EXPECT_CONTINUE_FROM:
                request.headers["Expect"] = "100-continue"
            self.signer.get_auth_instance("s3", self.region, "s3v4").add_auth(request)
            prepared = request.prepare()
            prepared.reset_stream()  # a retried file body starts again from its first byte
            METRICS.sent(operation.name, length)
            response: botocore.awsrequest.AWSResponse | None = None
            error: dict[str, Any] | None = None
            answer: ElementTree.Element | None = None
            failure: Exception | None = None
            try:
                response = self.http.send(prepared)
            except botocore.exceptions.BotoCoreError as exc:
                failure = exc
                METRICS.failed(operation.name, type(exc).__name__)
            else:
                METRICS.received(operation.name, int(response.headers.get("Content-Length") or 0))
                if response.status_code < 300 and not stream:
                    answer = _answer_of(response)
                    if answer is None:
                        # S3 may answer a copy with 200 and then fail it in the body, or the body
                        # breaks off: botocore makes that a 500, which the retry policy retries.
                        response.status_code = 500
                if response.status_code >= 300:
                    error = _error_of(response)
                    METRICS.failed(operation.name, error["Error"]["Code"])
            if failure is None and error is None:
                assert response is not None
                return response, answer
            context = standard.RetryContext(
                attempt_number=attempt,
                operation_model=operation,
                parsed_response=error,
                http_response=response,
                caught_exception=failure,
            )
            if not self.retry.should_retry(context):
                if failure is not None:
                    raise failure
                raise botocore.exceptions.ClientError(error, operation.name)  # type: ignore[arg-type]
            delay = self.retry.compute_retry_delay(context)
            log.debug(
                "%s %s: attempt %d failed (%s); retrying in %.2f s",
                operation.name,
                url,
                attempt,
                failure or error,
                delay,
            )
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _parse(
        self, operation: Any, response: botocore.awsrequest.AWSResponse, answer: ElementTree.Element | None
    ) -> dict[str, Any]:
        """The response's header members and XML payload (CopyObjectResult), typed as botocore
        types them; ``answer`` is the parsed body, None for a streamed one."""
        headers = response.headers
        parsed: dict[str, Any] = {}
        payload = operation.output_shape.serialization.get("payload")
        if payload is not None and answer is not None:
            parsed[payload] = _members_of(operation.output_shape.members[payload], answer)
        for name, member in operation.output_shape.members.items():
            where = member.serialization
            location = where.get("location")
            if location == "header":
                value = headers.get(where["name"])
                if value is None:
                    continue
                try:
                    parsed[name] = _typed(member.type_name, value)
                except (ValueError, TypeError, OverflowError):
                    parsed[name + "String"] = value  # as botocore keeps an Expires header that is no date
            elif location == "headers":
                prefix = where["name"].lower()
                parsed[name] = {k[len(prefix) :]: v for k, v in headers.items() if k.lower().startswith(prefix)}
        if answer is None:  # streamed: the body is the caller's to read
            length = headers.get("Content-Length")
            parsed["Body"] = botocore.response.StreamingBody(response.raw, int(length) if length else None)
        parsed["ResponseMetadata"] = {
            "HTTPStatusCode": response.status_code,
            "HTTPHeaders": {k.lower(): v for k, v in headers.items()},
        }
        return parsed


def _header_value(value: Any) -> str:
    if isinstance(value, datetime.datetime):  # Expires
        return email.utils.format_datetime(value.astimezone(datetime.UTC), usegmt=True)
    return str(value)


def _typed(type_name: str, value: str) -> Any:
    if type_name in ("integer", "long"):
        return int(value)
    if type_name == "boolean":
        return value.lower() == "true"
    if type_name == "timestamp":
        return parse_timestamp(value)
    return value


def _answer_of(response: botocore.awsrequest.AWSResponse) -> ElementTree.Element | None:
    """The XML root of a successful answer with a body; None for an error in it, or a broken body."""
    try:
        body = response.content
    except BROKEN_BODY:
        return None
    if not body:
        return ElementTree.Element("Empty")
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None
    return None if root.tag == "Error" else root


def _members_of(shape: Any, root: ElementTree.Element) -> dict[str, Any]:
    """A structure's scalar members from the children of its XML element."""
    members = {member.serialization.get("name", name): (name, member) for name, member in shape.members.items()}
    out: dict[str, Any] = {}
    for child in root:
        tag = child.tag.rpartition("}")[2]  # without the namespace
        if tag in members and child.text is not None:
            name, member = members[tag]
            out[name] = _typed(member.type_name, child.text)
    return out


def _error_of(response: botocore.awsrequest.AWSResponse) -> dict[str, Any]:
    """botocore's error dict of a failed response: the XML body's Code and Message, or the status."""
    code, message = str(response.status_code), ""
    try:
        body = response.content  # read whole, so the connection goes back to the pool
        root = ElementTree.fromstring(body) if body else None
    except (ElementTree.ParseError, *BROKEN_BODY):
        root = None
    if root is not None:
        code = root.findtext("Code") or code
        message = root.findtext("Message") or ""
    return {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {
            "HTTPStatusCode": response.status_code,
            "HTTPHeaders": {k.lower(): v for k, v in response.headers.items()},
        },
    }
