"""s3fuse.bucketconfig against a real moto S3 server over HTTP; boto3 (``s3``) is the ground truth.

moto behaviours these tests rely on or work around (moto 5.2):
- GetBucketRequestPayment is not implemented: GET ?requestPayment is answered as a
  ListObjects (a ListBucketResult, which botocore parses to no Payer), and PUT
  ?requestPayment as an idempotent CreateBucket (200, nothing stored).
- A rejected PutBucketCors / PutBucketLifecycle first deletes the old rules (S3 keeps them),
  so "old configuration unchanged" is checked with errors caught before the Put.
- PutBucketPolicy stores any text (no MalformedPolicy); PutBucketVersioning stores any
  Status, and answers a body without one with a bare 404.
- PutBucketReplication needs versioning enabled (as S3 does), drops the Filter's Prefix
  (stores ""), and answers 500 to an empty rule list.
- EventBridgeConfiguration is accepted but never returned.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from conftest import ACCESS_KEY, REGION, SECRET_KEY, MotoServer, base_env, boto_client

from s3fuse import bucketconfig
from s3fuse.bucketconfig import DOCUMENTS, ConfigDocument
from s3fuse.errors import FsError
from s3fuse.s3client import ClientSettings, S3Client, make_boto_client

OWNER_ARN = "arn:aws:iam::123456789012:role/replication"


def s3fuse_client(url: str, bucket: str, monkeypatch: pytest.MonkeyPatch, **credentials: str) -> S3Client:
    """An S3Client built the way the mount builds it (make_boto_client: env credentials, timestamp parser)."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in base_env(**credentials).items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    settings = ClientSettings(endpoint_url=url, max_attempts=1)
    boto = make_boto_client(settings)
    return S3Client(boto, bucket, settings)


@pytest.fixture
def client(moto, bucket, monkeypatch) -> S3Client:
    return s3fuse_client(moto.url, bucket, monkeypatch)


def loads(content: bytes | None) -> Any:
    assert content is not None
    assert content.endswith(b"\n") and not content.endswith(b"\n\n")
    return json.loads(content)


async def write_json(client: S3Client, name: str, doc: Any) -> None:
    await DOCUMENTS[name].write(client, json.dumps(doc).encode())


async def expect_einval(client: S3Client, name: str, data: bytes, *fragments: str) -> FsError:
    with pytest.raises(FsError) as info:
        await DOCUMENTS[name].write(client, data)
    assert info.value.errno == errno.EINVAL, info.value
    for fragment in fragments:
        assert fragment in str(info.value)
    return info.value


def ground(s3, op: str, bucket: str, unwrap: str | None = None) -> Any:
    """What boto3 itself reads (None when S3 says there is no such configuration)."""
    try:
        answer = getattr(s3, op)(Bucket=bucket)
    except s3.exceptions.ClientError as exc:
        if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
            return None
        raise
    answer.pop("ResponseMetadata")
    return answer.get(unwrap) if unwrap else answer


# ---------------------------------------------------------------- the table


def test_documents_are_listed_in_order_with_their_abilities():
    assert list(DOCUMENTS) == [
        "cors", "lifecycle", "policy", "website", "logging", "notification", "notification-legacy",
        "replication", "request-payment", "versioning", "acl", "tagging", "location",
    ]  # fmt: skip
    assert {n for n, d in DOCUMENTS.items() if d.deletable} == {
        "cors", "lifecycle", "policy", "website", "replication", "tagging",
    }  # fmt: skip
    assert [n for n, d in DOCUMENTS.items() if not d.writable] == ["location"]
    assert all(isinstance(d, ConfigDocument) and d.name == n for n, d in DOCUMENTS.items())


@pytest.mark.trio
async def test_fresh_bucket_has_only_acl_location_and_request_payment(client):
    contents = {name: await doc.read(client) for name, doc in DOCUMENTS.items()}
    assert {n for n, c in contents.items() if c is not None} == {"acl", "location", "request-payment"}
    assert loads(contents["location"]) == {"LocationConstraint": None}  # us-east-1
    acl = loads(contents["acl"])
    assert set(acl) == {"Owner", "Grants"} and acl["Grants"][0]["Permission"] == "FULL_CONTROL"
    assert contents["acl"].startswith(b'{\n  "') and b"ResponseMetadata" not in contents["acl"]


# ---------------------------------------------------------------- every writable document: full cycle


@dataclass(frozen=True)
class Case:
    name: str
    get_op: str  # boto3's read, the ground truth
    document: Callable[[Any, str], dict]  # (s3, bucket) -> a document to write; may prepare the bucket
    unwrap: str | None = None
    shown: Callable[[dict], dict] = lambda truth: truth  # what the file shows of boto3's answer

    def __str__(self) -> str:
        return self.name


def enable_versioning(s3, bucket: str) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


def logging_target(s3, bucket: str) -> str:
    # moto, like S3, wants the log-delivery group to be able to write to the target.
    target = bucket[:50] + "-logs"
    s3.create_bucket(Bucket=target)
    s3.put_bucket_acl(Bucket=target, ACL="log-delivery-write")
    return target


def acl_with_public_read(s3, bucket: str) -> dict:
    acl = ground(s3, "get_bucket_acl", bucket)
    all_users = {"Type": "Group", "URI": "http://acs.amazonaws.com/groups/global/AllUsers"}
    return {**acl, "Grants": [*acl["Grants"], {"Grantee": all_users, "Permission": "READ"}]}


def replication(s3, bucket: str) -> dict:
    enable_versioning(s3, bucket)  # moto and S3 refuse replication on an unversioned bucket
    rule = {
        "ID": "all",
        "Priority": 1,
        "Status": "Enabled",
        "Filter": {"Prefix": ""},  # moto stores "" whatever the prefix, so the test uses ""
        "DeleteMarkerReplication": {"Status": "Disabled"},
        "Destination": {"Bucket": "arn:aws:s3:::replica"},
    }
    return {"Role": OWNER_ARN, "Rules": [rule]}


QUEUE = "arn:aws:sqs:us-east-1:123456789012:events"


def without_event(truth: dict) -> dict:
    """botocore reads the legacy <Event> elements into both "Event" and "Events"; the file shows "Events"."""
    return {key: {k: v for k, v in config.items() if k != "Event"} for key, config in truth.items()}


CASES = [
    Case(
        "cors",
        "get_bucket_cors",
        lambda s3, b: {"CORSRules": [{"ID": "web", "AllowedOrigins": ["*"], "AllowedMethods": ["GET", "PUT"]}]},
    ),
    Case(
        "lifecycle",
        "get_bucket_lifecycle_configuration",
        lambda s3, b: {
            "Rules": [{"ID": "logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 7}}]
        },
        # TransitionDefaultMinimumObjectSize is a Put argument of its own, not part of LifecycleConfiguration.
        shown=lambda truth: {"Rules": truth["Rules"]},
    ),
    Case(
        "website",
        "get_bucket_website",
        lambda s3, b: {"IndexDocument": {"Suffix": "index.html"}, "ErrorDocument": {"Key": "error.html"}},
    ),
    Case(
        "logging",
        "get_bucket_logging",
        lambda s3, b: {"LoggingEnabled": {"TargetBucket": logging_target(s3, b), "TargetPrefix": "access/"}},
    ),
    Case(
        "notification",
        "get_bucket_notification_configuration",
        lambda s3, b: {"QueueConfigurations": [{"Id": "new", "QueueArn": QUEUE, "Events": ["s3:ObjectCreated:*"]}]},
    ),
    Case(
        "notification-legacy",
        "get_bucket_notification",
        lambda s3, b: {"QueueConfiguration": {"Id": "old", "Queue": QUEUE, "Events": ["s3:ObjectRemoved:*"]}},
        shown=without_event,
    ),
    Case("replication", "get_bucket_replication", replication, unwrap="ReplicationConfiguration"),
    Case("versioning", "get_bucket_versioning", lambda s3, b: {"Status": "Enabled"}),
    Case("acl", "get_bucket_acl", acl_with_public_read),
    Case("tagging", "get_bucket_tagging", lambda s3, b: {"TagSet": [{"Key": "team", "Value": "storage"}]}),
]
CASE = {case.name: case for case in CASES}


@pytest.mark.trio
@pytest.mark.parametrize("case", CASES, ids=str)
async def test_write_read_round_trip_bad_content_and_delete(client, s3, bucket, case):
    doc = DOCUMENTS[case.name]
    document = case.document(s3, bucket)

    await write_json(client, case.name, document)
    truth = ground(s3, case.get_op, bucket, case.unwrap)
    assert case.shown(truth) == document  # boto3 sees exactly what was written

    content = await doc.read(client)
    assert content == json.dumps(case.shown(truth), indent=2, ensure_ascii=False).encode() + b"\n"
    await doc.write(client, content)  # what cat shows can be written back unchanged
    assert ground(s3, case.get_op, bucket, case.unwrap) == truth

    # Bad contents are refused before any Put: the configuration stays as it was.
    await expect_einval(client, case.name, b'{"unfinished": ', "not valid JSON")
    await expect_einval(client, case.name, b"[]", "must be a JSON object, not an array")
    await expect_einval(client, case.name, b"\xff\xfe", "not UTF-8")
    await expect_einval(client, case.name, json.dumps({**truth, "Bogus": 1}).encode(), "Bogus")
    assert ground(s3, case.get_op, bucket, case.unwrap) == truth

    if doc.deletable:
        await doc.delete(client)
        assert ground(s3, case.get_op, bucket, case.unwrap) is None
        assert await doc.read(client) is None
    else:
        with pytest.raises(FsError) as info:
            await doc.delete(client)
        assert info.value.errno == errno.EPERM
        assert ground(s3, case.get_op, bucket, case.unwrap) == truth


@pytest.mark.trio
async def test_policy_is_the_document_itself_sent_as_written(client, s3, bucket):
    policy = DOCUMENTS["policy"]
    text = (
        '{"Version": "2012-10-17",\n "Statement": [{"Sid": "read", "Effect": "Allow", "Principal": "*",'
        f' "Action": "s3:GetObject", "Resource": "arn:aws:s3:::{bucket}/*"}}]}}\n'
    )
    await policy.write(client, text.encode())
    assert s3.get_bucket_policy(Bucket=bucket)["Policy"] == text  # as written, not re-serialized

    content = await policy.read(client)
    assert loads(content) == json.loads(text)
    assert content.startswith(b'{\n  "Version": "2012-10-17",\n  "Statement": [')
    await policy.write(client, content)
    assert json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"]) == json.loads(text)

    # moto accepts any policy text, so "malformed" is caught here, before the Put.
    await expect_einval(client, "policy", b'{"Version": "2012-10-17", ', "not valid JSON")
    await expect_einval(client, "policy", b'"s3:GetObject"', "must be a JSON object, not a string")
    assert json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"]) == json.loads(text)

    await policy.delete(client)
    assert await policy.read(client) is None
    assert ground(s3, "get_bucket_policy", bucket) is None


@pytest.mark.trio
async def test_policy_the_server_stored_as_garbage_is_an_error_not_content(client, s3, bucket):
    s3.put_bucket_policy(Bucket=bucket, Policy="not a policy")  # moto stores it
    with pytest.raises(FsError) as info:
        await DOCUMENTS["policy"].read(client)
    assert info.value.errno == errno.EIO and "not JSON" in str(info.value)


# ---------------------------------------------------------------- server rejections


@dataclass(frozen=True)
class Rejection:
    name: str
    document: Callable[[Any, str], dict]
    message: str  # part of the server's message
    before: Callable[[Any, str], None] | None = None  # a configuration the rejection must leave in place
    get_op: str | None = None

    def __str__(self) -> str:
        return f"{self.name}-{self.message[:20]}"


def put_tags(s3, bucket: str) -> None:
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": "keep", "Value": "me"}]})


def put_queue(s3, bucket: str) -> None:
    config = {"QueueConfigurations": [{"Id": "keep", "QueueArn": QUEUE, "Events": ["s3:ObjectCreated:*"]}]}
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=config)


def owner_only_acl(s3, bucket: str) -> dict:
    acl = ground(s3, "get_bucket_acl", bucket)
    return {"Owner": acl["Owner"], "Grants": [{"Grantee": acl["Grants"][0]["Grantee"], "Permission": "EVERYTHING"}]}


REJECTIONS = [
    # moto deletes the old CORS rules before it rejects the new ones, so no "before" here.
    Rejection(
        "cors",
        lambda s3, b: {"CORSRules": [{"AllowedOrigins": ["*"], "AllowedMethods": ["FETCH"]}]},
        "Unsupported method is FETCH",
    ),
    Rejection(
        "tagging",
        lambda s3, b: {"TagSet": [{"Key": "a", "Value": "1"}, {"Key": "a", "Value": "2"}]},
        "Cannot provide multiple Tags with the same key",
        put_tags,
        "get_bucket_tagging",
    ),
    Rejection(
        "notification",
        lambda s3, b: {"QueueConfigurations": [{"QueueArn": "sqs-queue", "Events": ["s3:ObjectCreated:*"]}]},
        "The ARN is not well formed",
        put_queue,
        "get_bucket_notification_configuration",
    ),
    Rejection(
        "notification-legacy",
        lambda s3, b: {"TopicConfiguration": {"Topic": "topic", "Events": ["s3:ObjectCreated:*"]}},
        "The ARN is not well formed",
    ),
    Rejection(
        "logging",
        lambda s3, b: {"LoggingEnabled": {"TargetBucket": b + "-none", "TargetPrefix": "x/"}},
        "The target bucket for logging does not exist",
    ),
    Rejection(
        "replication",
        lambda s3, b: {
            "Role": OWNER_ARN,
            "Rules": [{"Status": "Enabled", "Destination": {"Bucket": "arn:aws:s3:::r"}}],
        },
        "Versioning must be 'Enabled'",
    ),
    Rejection("acl", owner_only_acl, "did not validate", None, "get_bucket_acl"),
]


@pytest.mark.trio
@pytest.mark.parametrize("case", REJECTIONS, ids=str)
async def test_server_rejection_is_einval_with_the_server_message(client, s3, bucket, case):
    if case.before:
        case.before(s3, bucket)
    before = ground(s3, case.get_op, bucket) if case.get_op else None
    exc = await expect_einval(client, case.name, json.dumps(case.document(s3, bucket)).encode(), case.message)
    assert "rejected by the server" in str(exc)
    if case.get_op:
        assert ground(s3, case.get_op, bucket) == before


@pytest.mark.trio
@pytest.mark.parametrize(
    ("name", "document", "message"),
    [
        # botocore's own check of the Put shape (nothing is sent); S3 would answer MalformedXML.
        ("cors", {"CORSRules": [{"AllowedOrigins": ["*"]}]}, 'AllowedMethods"'),
        ("cors", {"CORSRules": []}, '"CORSRules" must be a non-empty list'),
        ("website", {"IndexDocument": {"Suffix": 5}}, "IndexDocument.Suffix"),
        # moto would store these; S3 knows only the listed values.
        ("versioning", {"Status": "On"}, '"Status" must be one of Enabled, Suspended'),
        ("versioning", {"MFADelete": "Disabled"}, '"Status" must be one of Enabled, Suspended, not nothing'),
        ("request-payment", {"Payer": "Nobody"}, '"Payer" must be one of Requester, BucketOwner'),
        # moto answers MalformedXML and deletes the old rules; S3 rejects it too.
        ("lifecycle", {"Rules": [{"ID": "x", "Status": "Enabled", "Expiration": {"Days": 1}}]}, 'needs a "Filter"'),
        ("lifecycle", {"Rules": "all"}, '"Rules" must be a non-empty list of objects'),
        ("lifecycle", {"Rules": [{"ID": "x", "Status": "Enabled", "Prefix": "", "Transitions": 5}]}, "Transitions"),
        (
            "lifecycle",
            {"Rules": [{"ID": "x", "Status": "Enabled", "Prefix": "", "Expiration": {"Date": "soon"}}]},
            "Date",
        ),
        ("replication", {"Role": OWNER_ARN, "Rules": []}, '"Rules" must be a non-empty list'),  # moto: 500
    ],
)
async def test_bad_documents_are_refused_before_the_put(client, s3, bucket, moto, name, document, message):
    s3.put_bucket_cors(
        Bucket=bucket, CORSConfiguration={"CORSRules": [{"AllowedOrigins": ["*"], "AllowedMethods": ["GET"]}]}
    )
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket,
        LifecycleConfiguration={
            "Rules": [{"ID": "keep", "Status": "Enabled", "Filter": {}, "Expiration": {"Days": 9}}]
        },
    )
    mark = moto.mark()
    await expect_einval(client, name, json.dumps(document).encode(), message)
    assert [r for r in moto.requests(mark, bucket) if r.method != "GET"] == []
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"][0]["AllowedMethods"] == ["GET"]
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Suspended"
    assert s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"][0]["ID"] == "keep"


@pytest.mark.trio
async def test_access_denied_keeps_eacces_and_a_missing_bucket_enoent(client, bucket, tmp_path, monkeypatch):
    # The shared moto checks no credentials; this one does, after its first 3 actions.
    server = MotoServer(tmp_path, env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    try:
        boto_client(server.url).create_bucket(Bucket=bucket)
        iam = boto3.client(
            "iam",
            endpoint_url=server.url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )
        iam.create_user(UserName="nobody")  # a user without any policy
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        nobody = s3fuse_client(
            server.url,
            bucket,
            monkeypatch,
            AWS_ACCESS_KEY_ID=key["AccessKeyId"],
            AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"],
        )
        for attempt in (
            DOCUMENTS["tagging"].write(nobody, b'{"TagSet": []}'),
            DOCUMENTS["cors"].read(nobody),
            DOCUMENTS["policy"].delete(nobody),
        ):
            with pytest.raises(FsError) as info:
                await attempt
            assert (info.value.errno, info.value.code) == (errno.EACCES, "AccessDenied")
    finally:
        server.stop()

    client.bucket = bucket + "-missing"
    with pytest.raises(FsError) as info:
        await write_json(client, "tagging", {"TagSet": [{"Key": "a", "Value": "b"}]})
    assert (info.value.errno, info.value.code) == (errno.ENOENT, "NoSuchBucket")


# ---------------------------------------------------------------- lifecycle shapes


@pytest.fixture
def put_calls(client, monkeypatch) -> list[str]:
    """The operations the client is asked for (the two lifecycle Puts are the same PUT on the wire)."""
    calls: list[str] = []
    original = client.call

    async def call(operation: str, **params: Any) -> dict[str, Any]:
        calls.append(operation)
        return await original(operation, **params)

    monkeypatch.setattr(client, "call", call)
    return calls


@pytest.mark.trio
async def test_lifecycle_classic_rules_use_put_bucket_lifecycle_and_round_trip(client, s3, bucket, put_calls):
    lifecycle = DOCUMENTS["lifecycle"]
    classic = {
        "Rules": [
            {
                "ID": "tmp",
                "Prefix": "tmp/",
                "Status": "Enabled",
                "Transition": {"Days": 30, "StorageClass": "GLACIER"},
                "NoncurrentVersionTransition": {"NoncurrentDays": 10, "StorageClass": "GLACIER"},
                "Expiration": {"Date": "2031-01-01T00:00:00Z"},
            }
        ]
    }
    await write_json(client, "lifecycle", classic)
    assert put_calls == ["put_bucket_lifecycle"]
    rule = s3.get_bucket_lifecycle(Bucket=bucket)["Rules"][0]
    assert rule["Prefix"] == "tmp/" and rule["Transition"] == {"Days": 30, "StorageClass": "GLACIER"}
    assert rule["NoncurrentVersionTransition"] == {"NoncurrentDays": 10, "StorageClass": "GLACIER"}

    content = loads(await lifecycle.read(client))  # the newer shape: lists, top-level Prefix kept
    assert set(content) == {"Rules"}  # TransitionDefaultMinimumObjectSize is not LifecycleConfiguration
    assert content["Rules"][0]["Transitions"] == [{"Days": 30, "StorageClass": "GLACIER"}]
    assert content["Rules"][0]["Expiration"] == {"Date": "2031-01-01T00:00:00+00:00"}  # datetime as ISO 8601

    put_calls.clear()
    await write_json(client, "lifecycle", content)
    assert put_calls == ["put_bucket_lifecycle"]
    assert s3.get_bucket_lifecycle(Bucket=bucket)["Rules"][0] == rule


@pytest.mark.trio
async def test_lifecycle_filter_rules_and_multi_transition_rules_use_the_newer_put(client, s3, bucket, put_calls):
    two_steps = [{"Days": 30, "StorageClass": "STANDARD_IA"}, {"Days": 90, "StorageClass": "GLACIER"}]
    newer = {
        "Rules": [
            {
                "ID": "f",
                "Status": "Enabled",
                "Filter": {"Prefix": "a/"},
                "Transition": {"Days": 5, "StorageClass": "GLACIER"},
            },
            {"ID": "p", "Status": "Disabled", "Filter": {"Tag": {"Key": "k", "Value": "v"}}, "Transitions": two_steps},
        ]
    }
    await write_json(client, "lifecycle", newer)
    classic_many = {"Rules": [{"ID": "c", "Status": "Enabled", "Prefix": "c/", "Transitions": two_steps}]}
    await write_json(client, "lifecycle", classic_many)
    assert put_calls == ["put_bucket_lifecycle_configuration", "put_bucket_lifecycle_configuration"]
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert [(r["ID"], r["Prefix"], r["Transitions"]) for r in rules] == [("c", "c/", two_steps)]


# ---------------------------------------------------------------- read-only, fallbacks, garbage


@pytest.mark.trio
async def test_location_is_read_only(client, s3, bucket):
    location = DOCUMENTS["location"]
    assert not location.writable and not location.deletable
    assert loads(await location.read(client)) == ground(s3, "get_bucket_location", bucket)
    for attempt in (location.write(client, b'{"LocationConstraint": "eu-west-1"}'), location.delete(client)):
        with pytest.raises(FsError) as info:
            await attempt
        assert info.value.errno == errno.EPERM


@pytest.mark.trio
async def test_request_payment_falls_back_to_the_s3_default_when_the_server_sends_no_payer(
    client, moto, bucket, caplog
):
    request_payment = DOCUMENTS["request-payment"]
    with caplog.at_level(logging.INFO, logger=bucketconfig.__name__):
        assert loads(await request_payment.read(client)) == {"Payer": "BucketOwner"}
    notes = [r for r in caplog.records if r.name == bucketconfig.__name__]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO and "sent no Payer" in notes[0].getMessage()

    # The write is sent and answered 200, but moto takes PUT ?requestPayment for a
    # CreateBucket and stores nothing: reading still shows the fallback.
    mark = moto.mark()
    await write_json(client, "request-payment", {"Payer": "Requester"})
    puts = [r for r in moto.requests(mark, bucket) if r.method == "PUT"]
    assert [(r.query, r.status) for r in puts] == [({"requestPayment": [""]}, 200)]
    assert loads(await request_payment.read(client)) == {"Payer": "BucketOwner"}


@pytest.mark.trio
async def test_a_value_the_server_should_not_have_sent_is_an_error(client, s3, bucket):
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Sideways"})  # moto stores it
    with pytest.raises(FsError) as info:
        await DOCUMENTS["versioning"].read(client)
    assert info.value.errno == errno.EIO and "Status='Sideways'" in str(info.value)


@pytest.mark.trio
async def test_versioning_never_set_is_absent_then_suspended_stays(client, s3, bucket):
    versioning = DOCUMENTS["versioning"]
    assert await versioning.read(client) is None
    await write_json(client, "versioning", {"Status": "Enabled"})
    await write_json(client, "versioning", {"Status": "Suspended"})
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Suspended"
    assert loads(await versioning.read(client)) == {"Status": "Suspended"}


@pytest.mark.trio
async def test_empty_off_documents_read_as_absent(client, s3, bucket):
    """Logging and notifications have no Delete*: writing {} turns them off, and the file goes away."""
    for name in ("logging", "notification", "notification-legacy"):
        case = CASE[name]
        await write_json(client, name, case.document(s3, bucket))
        assert await DOCUMENTS[name].read(client) is not None
        await write_json(client, name, {})
        assert await DOCUMENTS[name].read(client) is None
        assert not ground(s3, case.get_op, bucket)


@pytest.mark.trio
async def test_legacy_notification_event_is_not_doubled(client, s3, bucket):
    """botocore fills the deprecated "Event" and "Events" from the same <Event> elements."""
    legacy = DOCUMENTS["notification-legacy"]
    config = {
        "TopicConfiguration": {
            "Id": "t",
            "Topic": "arn:aws:sns:us-east-1:123456789012:t",
            "Event": "s3:ObjectCreated:*",
        }
    }
    await write_json(client, "notification-legacy", config)
    assert s3.get_bucket_notification(Bucket=bucket)["TopicConfiguration"]["Event"] == "s3:ObjectCreated:*"
    content = loads(await legacy.read(client))
    assert "Event" not in content["TopicConfiguration"]
    assert content["TopicConfiguration"]["Events"] == ["s3:ObjectCreated:*"]
    await write_json(client, "notification-legacy", content)
    assert s3.get_bucket_notification(Bucket=bucket)["TopicConfiguration"]["Events"] == ["s3:ObjectCreated:*"]

    # Written by someone else with both members, moto stores the event twice and botocore
    # then parses "Event" into XML Element objects: they never reach the file.
    both = {"TopicConfiguration": {**config["TopicConfiguration"], "Events": ["s3:ObjectCreated:*"]}}
    s3.put_bucket_notification(Bucket=bucket, NotificationConfiguration=both)
    content = loads(await legacy.read(client))
    assert "Event" not in content["TopicConfiguration"]
