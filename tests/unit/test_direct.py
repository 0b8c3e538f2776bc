"""direct.py against real servers: the answers boto3 gives, the keys boto3 writes, botocore's
retries, errors that map to the same errno, and a signature that SeaweedFS (which checks
signatures, unlike moto) accepts."""

from __future__ import annotations

import errno
import hashlib
import os

import botocore.exceptions
import pytest
from conftest import ACCESS_KEY, boto_client, keys_of
from faultproxy import Rule

from s3fuse.metrics import METRICS
from s3fuse.s3client import ClientSettings, S3Client, translate
from s3fuse.write.upload import FileRange, content_crc32, content_md5

# Keys whose URL needs care: empty components, dot segments, reserved and non-ASCII characters.
ODD_KEYS = [
    "plain.txt",
    "a//b",
    "../up",
    "./dot/./x",
    "sp ace+plus",
    "percent%20d",
    "tilde~",
    "ünïcødé/名前",
    "q?x=1&y=2",
    "#hash;semi=colon",
    "x" * 900,
]
HEAD_FIELDS = ("ContentLength", "ETag", "ContentType", "Metadata", "LastModified", "CacheControl", "StorageClass")


def direct(url: str, bucket: str, **settings):
    return S3Client(boto_client(url), bucket, ClientSettings(endpoint_url=url, **settings)).direct


def put(d, bucket: str, key: str, body: bytes, **params):
    return d.put_object(Bucket=bucket, Key=key, Body=body, **{"ContentMD5": content_md5(body), **params})


def test_answers_and_keys_are_boto3s(s3, bucket, moto):
    d = direct(moto.url, bucket)
    for key in ODD_KEYS:
        body = key.encode() * 3
        etag = put(d, bucket, key, body, ContentType="text/x-test", Metadata={"mode": "33188"}, CacheControl="no-cache")
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body, key
        assert etag["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
        mine, theirs = d.head_object(Bucket=bucket, Key=key), s3.head_object(Bucket=bucket, Key=key)
        assert {f: mine.get(f) for f in HEAD_FIELDS} == {f: theirs.get(f) for f in HEAD_FIELDS}, key
        ranged = d.get_object(Bucket=bucket, Key=key, Range="bytes=1-4")
        assert ranged["Body"].read() == body[1:5]
        assert ranged["ContentRange"] == f"bytes 1-4/{len(body)}" and ranged["ContentLength"] == 4
    assert sorted(keys_of(s3, bucket)) == sorted(ODD_KEYS)


def test_errors_are_botocores(s3, bucket, moto):
    d = direct(moto.url, bucket)
    put(d, bucket, "k", b"data")
    cases = [
        (lambda: d.head_object(Bucket=bucket, Key="missing"), "404", errno.ENOENT),
        (lambda: d.get_object(Bucket=bucket, Key="missing"), "NoSuchKey", errno.ENOENT),
        (lambda: d.get_object(Bucket=bucket, Key="k", IfMatch='"0123"'), "PreconditionFailed", errno.ESTALE),
        (lambda: d.get_object(Bucket=bucket, Key="k", Range="bytes=100-200"), "InvalidRange", errno.EINVAL),
    ]
    for call, code, number in cases:
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            call()
        assert caught.value.response["Error"]["Code"] == code
        assert translate(caught.value).errno == number
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"data"
    with pytest.raises(ValueError):
        d.head_object(Bucket="another-bucket", Key="k")  # the URL is this bucket's


def test_copies_and_deletes_are_boto3s(s3, bucket, moto):
    d = direct(moto.url, bucket)
    for key in ODD_KEYS:
        body = key.encode() * 2
        put(d, bucket, key, body, Metadata={"mode": "33188"})
        mine = d.copy_object(Bucket=bucket, Key=key + ".mine", CopySource={"Bucket": bucket, "Key": key})
        theirs = s3.copy_object(Bucket=bucket, Key=key + ".theirs", CopySource={"Bucket": bucket, "Key": key})
        assert mine["CopyObjectResult"]["ETag"] == theirs["CopyObjectResult"]["ETag"], key
        assert (
            mine["CopyObjectResult"]["LastModified"] == s3.head_object(Bucket=bucket, Key=key + ".mine")["LastModified"]
        )
        assert s3.get_object(Bucket=bucket, Key=key + ".mine")["Body"].read() == body, key
        assert s3.head_object(Bucket=bucket, Key=key + ".mine")["Metadata"] == {"mode": "33188"}
        d.delete_object(Bucket=bucket, Key=key + ".mine")
        d.delete_object(Bucket=bucket, Key=key + ".theirs")
    replaced = d.copy_object(
        Bucket=bucket,
        Key="plain.txt",
        CopySource=f"{bucket}/plain.txt",
        MetadataDirective="REPLACE",
        Metadata={"uid": "7"},
    )
    assert s3.head_object(Bucket=bucket, Key="plain.txt")["Metadata"] == {"uid": "7"}
    assert replaced["CopyObjectResult"]["ETag"] == s3.head_object(Bucket=bucket, Key="plain.txt")["ETag"]
    assert sorted(keys_of(s3, bucket)) == sorted(ODD_KEYS)
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        d.copy_object(Bucket=bucket, Key="to", CopySource={"Bucket": bucket, "Key": "missing"})
    assert translate(caught.value).errno == errno.ENOENT


def test_a_copy_whose_answer_breaks_off_is_sent_again(s3, bucket, faulty):
    """A 200 whose body does not arrive whole is no answer (botocore makes it a 500 and retries)."""
    d = direct(faulty.url, bucket, max_attempts=3)
    put(d, bucket, "src", b"source")
    faulty.add(Rule("truncate", method="PUT", header="x-amz-copy-source", times=1, keep=0.3))
    copied = d.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    copies = [e for e in faulty.log if e.method == "PUT" and e.path.endswith("/dst")]
    assert [e.fault for e in copies] == ["truncate", None], faulty.log
    assert copied["CopyObjectResult"]["ETag"] == s3.head_object(Bucket=bucket, Key="dst")["ETag"]


def test_retries_and_counts_are_botocores(s3, bucket, faulty, tmp_path):
    d = direct(faulty.url, bucket, max_attempts=3)
    before = METRICS.exposition()

    faulty.add(Rule("internal", method="PUT", times=2))
    put(d, bucket, "retried", b"third time")
    assert [e.fault for e in faulty.log if e.method == "PUT"] == ["internal", "internal", None]

    faulty.add(Rule("reset", method="GET", times=1))
    assert d.get_object(Bucket=bucket, Key="retried")["Body"].read() == b"third time"

    faulty.add(Rule("slowdown", method="HEAD"))
    with pytest.raises(botocore.exceptions.ClientError):
        d.head_object(Bucket=bucket, Key="retried")
    assert len([e for e in faulty.log if e.method == "HEAD"]) == 3  # attempts, the first included

    # A part read from a file is sent again whole after a reset in the middle of its body.
    part = os.urandom(3 << 20)
    path = tmp_path / "spill"
    path.write_bytes(b"head" + part)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    faulty.add(Rule("reset", method="PUT", query="partNumber", times=1, when="after"))
    with open(path, "rb") as f:
        body = FileRange(f.fileno(), 4, 4 + len(part))
        sent = d.upload_part(
            Bucket=bucket, Key="mp", UploadId=upload, PartNumber=1, Body=body, ContentMD5=content_md5(body)
        )
    assert sent["ETag"] == f'"{hashlib.md5(part).hexdigest()}"'
    s3.complete_multipart_upload(
        Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": sent["ETag"]}]}
    )
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == part

    # every attempt is counted, with the code of each failure, as botocore's events count them
    counted = METRICS.exposition()
    for operation, attempts in (("PutObject", 3), ("GetObject", 2), ("HeadObject", 3), ("UploadPart", 2)):
        assert (
            _sample(counted, "s3fuse_requests_total", operation) - _sample(before, "s3fuse_requests_total", operation)
            == attempts
        )
    assert _sample(counted, "s3fuse_request_errors_total", "PutObject", "InternalError") >= 2
    assert _sample(counted, "s3fuse_request_errors_total", "HeadObject", "503") >= 3


def _sample(exposition: str, name: str, operation: str, code: str | None = None) -> float:
    labels = f'code="{code}",operation="{operation}"' if code else f'operation="{operation}"'
    line = next((line for line in exposition.splitlines() if line.startswith(f"{name}{{{labels}}} ")), None)
    return float(line.split()[-1]) if line else 0.0


def test_seaweedfs_accepts_the_signature(seaweed):
    """SeaweedFS checks SigV4, including an UNSIGNED-PAYLOAD body (with its checksum) and query strings."""
    bucket = seaweed.BUCKET
    d = direct(seaweed.url, bucket)
    body = os.urandom(6 << 20)
    key = "direct/ünï code+ke y"
    put(d, bucket, key, body, Metadata={"mtime": "1700000000"})
    assert d.get_object(Bucket=bucket, Key=key, Range="bytes=5-9")["Body"].read() == body[5:10]
    assert d.head_object(Bucket=bucket, Key=key)["Metadata"] == {"mtime": "1700000000"}
    boto = boto_client(seaweed.url)
    upload = boto.create_multipart_upload(Bucket=bucket, Key="direct/mp", ChecksumAlgorithm="CRC32")["UploadId"]
    crc = {"ChecksumAlgorithm": "CRC32", "ChecksumCRC32": content_crc32(body)}
    part = d.upload_part(Bucket=bucket, Key="direct/mp", UploadId=upload, PartNumber=1, Body=body, **crc)
    # a part whose CRC32 is not its bytes' is refused, as a body with a wrong Content-MD5 is
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        d.upload_part(Bucket=bucket, Key="direct/mp", UploadId=upload, PartNumber=2, Body=body[1:], **crc)
    assert caught.value.response["Error"]["Code"] == "BadDigest"
    boto.complete_multipart_upload(
        Bucket=bucket,
        Key="direct/mp",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"], "ChecksumCRC32": crc["ChecksumCRC32"]}]},
    )
    assert boto.get_object(Bucket=bucket, Key="direct/mp")["Body"].read() == body

    # SeaweedFS checks Content-MD5 (moto does not): the MD5 is what protects an unsigned body
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        put(d, bucket, "direct/corrupt", b"data", ContentMD5=content_md5(b"other"))
    assert caught.value.response["Error"]["Code"] == "BadDigest"

    wrong = S3Client(
        boto_client(seaweed.url, access_key=ACCESS_KEY, secret_key="not-the-secret"),
        bucket,
        ClientSettings(endpoint_url=seaweed.url),
    ).direct
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        put(wrong, bucket, "direct/refused", b"x")
    assert translate(caught.value).errno == errno.EACCES
