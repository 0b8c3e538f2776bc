"""Bucket configuration as JSON documents: the contents of the hidden ``.s3/`` directory.

Owns what each file of ``.s3/`` means: which S3 call reads it (Get*), writes it (Put*)
and removes it (Delete*), the JSON shape of its content (the configuration argument of
the matching boto3 Put call), when a bucket counts as having no such configuration
(the file is absent), the checks a new content must pass before it is sent (so a bad
write leaves the old configuration in place), and the errno of a rejected write.
It does not own the FUSE side (inodes, open files, permissions): the caller reads a
whole document, and writes a whole new content when the file is closed.

Every document is one ``ConfigDocument`` row in ``DOCUMENTS``; the few that need more
than the table (lifecycle's two rule shapes, the legacy notification's doubled event,
the policy being JSON text rather than a structure) plug in small functions.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import FsError, S3Error
from .s3client import S3Client

log = logging.getLogger(__name__)

Document = dict[str, Any]

JSON_TYPE_NAMES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def _invalid(name: str, code: str, message: str) -> FsError:
    return FsError(errno.EINVAL, code, f".s3/{name}: {message}")


def _bad_answer(name: str, message: str) -> S3Error:
    # The server answered 200 but with something that is not a configuration: a failure
    # of the read (EIO), never a made-up or half-parsed document handed to the user.
    log.warning(".s3/%s: %s", name, message)
    return S3Error(errno.EIO, "InvalidResponse", f".s3/{name}: {message}")


def _message(exc: S3Error) -> str:
    """The server's (or botocore's) own message, without the code S3Error puts in front."""
    return str(exc).removeprefix(f"{exc.code}: ")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()  # botocore parses it back when the document is written
    raise TypeError(f"{type(value).__name__} is not JSON")


def dump(doc: Any) -> bytes:
    """The file content: pretty JSON with a trailing newline (UTF-8, not \\u escapes)."""
    return (json.dumps(doc, indent=2, ensure_ascii=False, default=_jsonable) + "\n").encode()


# ---------------------------------------------------------------- per-document hooks

# Rule members that the classic PutBucketLifecycle has as one object and
# PutBucketLifecycleConfiguration as a list. Both calls send the same PUT ?lifecycle
# body (the list members are flattened XML), so a rule converts without loss.
LIFECYCLE_SINGULAR = {"Transition": "Transitions", "NoncurrentVersionTransition": "NoncurrentVersionTransitions"}


def _lifecycle_problem(doc: Document) -> str | None:
    for i, rule in enumerate(doc["Rules"]):
        if "Filter" not in rule and "Prefix" not in rule:
            # S3 requires one; moto answers MalformedXML *and drops the old rules* first.
            return f'rule {i} ({rule.get("ID", "no ID")}) needs a "Filter" (or a classic "Prefix")'
    return None


def _lifecycle_route(doc: Document) -> tuple[str, Document]:
    """Classic rules (top-level Prefix, no Filter) go to PutBucketLifecycle, others to the newer call.

    Reading always gives the newer shape (GetBucketLifecycleConfiguration), in which a
    classic rule comes back with its top-level Prefix but with "Transitions" lists; those
    are turned into the classic single objects so the document can be written back. A
    classic rule with two transitions has no classic form: the newer call, which still
    takes a top-level Prefix, carries it.
    """
    rules = doc["Rules"]
    classic = any("Prefix" in r for r in rules) and not any("Filter" in r for r in rules)
    # Anything but a list of at most one (say "Transitions": 5) goes to the newer call, whose
    # parameter validation names the member; the classic form could not carry it anyway.
    fits = all(
        r.get(many) is None or (isinstance(r[many], list) and len(r[many]) <= 1)
        for r in rules
        for many in LIFECYCLE_SINGULAR.values()
    )
    if classic and fits:
        out = []
        for rule in rules:
            rule = dict(rule)
            for one, many in LIFECYCLE_SINGULAR.items():
                if many in rule and one not in rule:
                    items = rule.pop(many)
                    if items:
                        rule[one] = items[0]
            out.append(rule)
        return "put_bucket_lifecycle", {**doc, "Rules": out}
    out = []
    for rule in rules:
        rule = dict(rule)
        for one, many in LIFECYCLE_SINGULAR.items():
            if one in rule and many not in rule:
                rule[many] = [rule.pop(one)]
        out.append(rule)
    return "put_bucket_lifecycle_configuration", {**doc, "Rules": out}


def _legacy_notification_tidy(doc: Document) -> Document:
    """Merge the deprecated single "Event" into "Events".

    Both members are the same <Event> XML elements: botocore fills both from one answer,
    and a document holding both would send every event twice (after which botocore
    parses "Event" into raw XML Element objects).
    """
    out = dict(doc)
    for key, config in doc.items():
        if isinstance(config, dict) and "Event" in config and isinstance(config.get("Events"), list):
            config = dict(config)
            event = config.pop("Event")
            if isinstance(event, str) and event not in config["Events"]:
                config["Events"] = [*config["Events"], event]
            out[key] = config
    return out


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class ConfigDocument:
    """One file of ``.s3/``: a bucket configuration read with Get*, written with Put*, removed with Delete*."""

    name: str  # file name in .s3/
    get_op: str
    put_op: str | None = None  # None: read-only
    put_arg: str | None = None  # the Put call's argument that takes the document
    delete_op: str | None = None  # None: S3 has no Delete* for it (write an "off" document instead)
    unwrap: str | None = None  # member of the Get answer that holds the document
    absent_codes: tuple[str, ...] = ()  # error codes of the Get call meaning "no such configuration"
    present_if: tuple[str, ...] = ()  # members whose presence means it exists; () = any member of the shape
    always: bool = False  # every bucket has one (never absent)
    required_lists: tuple[str, ...] = ()  # members that must be non-empty lists of objects
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)  # member -> allowed values
    defaults: Mapping[str, Any] = field(default_factory=dict, hash=False)  # S3's default for a member left out
    text: bool = False  # the document is JSON text passed as a string (the policy)
    tidy: Callable[[Document], Document] | None = None  # cleanup applied on read and before writing
    problem: Callable[[Document], str | None] | None = None  # extra check before writing
    route: Callable[[Document], tuple[str, Document]] | None = None  # picks the Put call from the content

    @property
    def writable(self) -> bool:
        return self.put_op is not None

    @property
    def deletable(self) -> bool:
        return self.delete_op is not None

    # ------------------------------------------------------------ read

    async def read(self, s3: S3Client) -> bytes | None:
        """The file content (pretty JSON and a newline), or None when the bucket has no such configuration."""
        try:
            answer = await s3.call(self.get_op)
        except S3Error as exc:
            if exc.code in self.absent_codes:
                return None
            raise
        if self.text:
            return self._read_text(answer)
        doc = answer.get(self.unwrap) if self.unwrap else answer
        if doc is None:
            return None
        if not isinstance(doc, dict):
            raise _bad_answer(self.name, f"the server sent {type(doc).__name__} instead of a configuration")
        members = self._members(s3)
        doc = {k: v for k, v in doc.items() if k in members}  # drops ResponseMetadata and non-shape extras
        if self.tidy:
            doc = self.tidy(doc)
        if not self.always and not any(doc.get(k) not in (None, []) for k in self.present_if or members):
            return None  # an "empty" answer: logging off, no notifications, versioning never set
        for key, value in self.defaults.items():
            if key not in doc:
                log.info(".s3/%s: the server sent no %s; showing the S3 default %r", self.name, key, value)
                doc[key] = value
        for key, allowed in self.choices.items():
            if key in doc and doc[key] not in allowed:
                raise _bad_answer(self.name, f"the server sent {key}={doc[key]!r}, not one of {', '.join(allowed)}")
        try:
            return dump(doc)
        except (TypeError, ValueError) as exc:
            raise _bad_answer(self.name, f"the server's answer does not convert to JSON: {exc}") from exc

    def _read_text(self, answer: dict[str, Any]) -> bytes | None:
        text = answer.get(self.unwrap or "")
        if not text:
            return None
        try:
            return dump(json.loads(text))
        except ValueError as exc:
            raise _bad_answer(self.name, f"the server sent a document that is not JSON: {exc}") from exc

    def _members(self, s3: S3Client) -> frozenset[str]:
        """Member names of the configuration shape, from botocore's model of the S3 API."""
        meta = s3.client.meta
        if self.put_op and self.put_arg:
            op = meta.service_model.operation_model(meta.method_to_api_mapping[self.put_op])
            shape = op.input_shape.members[self.put_arg]
        else:
            op = meta.service_model.operation_model(meta.method_to_api_mapping[self.get_op])
            shape = op.output_shape
        return frozenset(shape.members)

    # ------------------------------------------------------------ write

    async def write(self, s3: S3Client, data: bytes) -> None:
        """Replace the configuration with ``data`` (the whole new file content).

        Everything that can be checked here is checked before the Put call, so a bad
        content leaves the old configuration in place. Errors are S3Error with EINVAL
        for a bad content (here or by the server), EACCES for a refused permission.
        """
        if not self.put_op or not self.put_arg:
            raise FsError(errno.EPERM, "ReadOnly", f".s3/{self.name} is read-only")
        doc = self._parse(data)
        if self.text:
            op, value = self.put_op, data.decode()  # the policy goes as written, not re-serialized
        else:
            if self.tidy:
                doc = self.tidy(doc)
            self._check(doc)
            op, doc = self.route(doc) if self.route else (self.put_op, doc)
            value = doc
        try:
            await s3.call(op, **{self.put_arg: value})
        except S3Error as exc:
            raise self._rejection(exc) from exc

    def _parse(self, data: bytes) -> Document:
        try:
            doc = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise _invalid(self.name, "InvalidEncoding", f"not UTF-8 text: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise _invalid(self.name, "MalformedJSON", f"not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            kind = JSON_TYPE_NAMES.get(type(doc), "null")
            raise _invalid(self.name, "InvalidDocument", f"must be a JSON object, not {kind}")
        return doc

    def _check(self, doc: Document) -> None:
        for key in self.required_lists:
            items = doc.get(key)
            if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
                # S3 rejects an empty list; moto instead deletes the configuration or fails with a 500.
                raise _invalid(self.name, "InvalidDocument", f'"{key}" must be a non-empty list of objects')
        for key, allowed in self.choices.items():
            if doc.get(key) not in allowed:
                # moto stores any value (and answers 404 to a missing Status); S3 knows only these.
                got = f"{doc[key]!r}" if key in doc else "nothing"
                raise _invalid(self.name, "InvalidDocument", f'"{key}" must be one of {", ".join(allowed)}, not {got}')
        problem = self.problem(doc) if self.problem else None
        if problem:
            raise _invalid(self.name, "InvalidDocument", problem)

    def _rejection(self, exc: S3Error) -> S3Error:
        """EINVAL for a document the server (or botocore, before sending) refused; other failures as they are."""
        if exc.code == "ParamValidationError":  # botocore's check of the shape: nothing was sent
            return _invalid(self.name, exc.code, f"does not fit {self.put_arg}: {_message(exc)}")
        if exc.code == "OperationAborted":  # a conflicting change of the bucket is under way: try again
            return S3Error(errno.EAGAIN, exc.code, f".s3/{self.name}: {_message(exc)}")
        status = exc.status
        # A 4xx the errno table has no meaning for (MalformedXML, InvalidArgument, InvalidTag,
        # MalformedPolicy, ...) is the server refusing this content; AccessDenied (EACCES),
        # NoSuchBucket (ENOENT) and 5xx/network failures (EIO) keep their errno.
        if status is not None and 400 <= status < 500 and exc.errno in (errno.EIO, errno.EINVAL):
            return _invalid(self.name, exc.code, f"rejected by the server: {exc.code}: {_message(exc)}")
        return exc

    # ------------------------------------------------------------ delete

    async def delete(self, s3: S3Client) -> None:
        """Remove the configuration (EPERM for a document S3 cannot delete, ENOENT when there is none)."""
        if not self.delete_op:
            raise FsError(
                errno.EPERM, "NotDeletable", f".s3/{self.name} cannot be removed; write a new content instead"
            )
        try:
            await s3.call(self.delete_op)
        except S3Error as exc:
            if exc.code in self.absent_codes:
                raise S3Error(errno.ENOENT, exc.code, f".s3/{self.name}: {_message(exc)}") from exc
            raise


def _table(*docs: ConfigDocument) -> dict[str, ConfigDocument]:
    return {doc.name: doc for doc in docs}


DOCUMENTS: dict[str, ConfigDocument] = _table(
    ConfigDocument(
        "cors",
        "get_bucket_cors",
        "put_bucket_cors",
        "CORSConfiguration",
        "delete_bucket_cors",
        absent_codes=("NoSuchCORSConfiguration",),
        required_lists=("CORSRules",),
    ),
    ConfigDocument(
        "lifecycle",
        "get_bucket_lifecycle_configuration",
        "put_bucket_lifecycle_configuration",
        "LifecycleConfiguration",
        "delete_bucket_lifecycle",
        absent_codes=("NoSuchLifecycleConfiguration",),
        required_lists=("Rules",),
        problem=_lifecycle_problem,
        route=_lifecycle_route,
    ),
    ConfigDocument(
        "policy",
        "get_bucket_policy",
        "put_bucket_policy",
        "Policy",
        "delete_bucket_policy",
        unwrap="Policy",
        absent_codes=("NoSuchBucketPolicy",),
        text=True,
    ),
    ConfigDocument(
        "website",
        "get_bucket_website",
        "put_bucket_website",
        "WebsiteConfiguration",
        "delete_bucket_website",
        absent_codes=("NoSuchWebsiteConfiguration",),
    ),
    ConfigDocument("logging", "get_bucket_logging", "put_bucket_logging", "BucketLoggingStatus"),
    ConfigDocument(
        "notification",
        "get_bucket_notification_configuration",
        "put_bucket_notification_configuration",
        "NotificationConfiguration",
    ),
    ConfigDocument(
        "notification-legacy",
        "get_bucket_notification",
        "put_bucket_notification",
        "NotificationConfiguration",
        tidy=_legacy_notification_tidy,
    ),
    ConfigDocument(
        "replication",
        "get_bucket_replication",
        "put_bucket_replication",
        "ReplicationConfiguration",
        "delete_bucket_replication",
        unwrap="ReplicationConfiguration",
        absent_codes=("ReplicationConfigurationNotFoundError",),
        required_lists=("Rules",),
    ),
    ConfigDocument(
        "request-payment",
        "get_bucket_request_payment",
        "put_bucket_request_payment",
        "RequestPaymentConfiguration",
        always=True,
        choices={"Payer": ("Requester", "BucketOwner")},
        defaults={"Payer": "BucketOwner"},
    ),
    ConfigDocument(
        "versioning",
        "get_bucket_versioning",
        "put_bucket_versioning",
        "VersioningConfiguration",
        present_if=("Status",),
        choices={"Status": ("Enabled", "Suspended")},
    ),
    ConfigDocument("acl", "get_bucket_acl", "put_bucket_acl", "AccessControlPolicy", always=True),
    ConfigDocument(
        "tagging",
        "get_bucket_tagging",
        "put_bucket_tagging",
        "Tagging",
        "delete_bucket_tagging",
        absent_codes=("NoSuchTagSet", "NoSuchTagSetError"),
    ),
    ConfigDocument("location", "get_bucket_location", always=True),
)
