"""pager.py against moto: every listing s3fuse pages, with pages small enough to need several.

Each page is one request, counted in the metrics under its S3 operation.
"""

from __future__ import annotations

import functools

import trio
from conftest import boto_client

from s3fuse.metrics import METRICS, parse_exposition
from s3fuse.pager import Pager, next_params, pages, pages_sync
from s3fuse.s3client import ClientSettings, RequestOptions, S3Client


def client_of(moto, bucket: str, **request) -> S3Client:
    """An S3Client whose requests are counted in METRICS, as make_boto_client's are."""
    client = boto_client(moto.url)
    METRICS.observe(client)
    return S3Client(client, bucket, ClientSettings(endpoint_url=moto.url, request=RequestOptions(**request)))


def requests(operation: str) -> float:
    return sum(
        value
        for name, labels, value in parse_exposition(METRICS.exposition())
        if name == "s3fuse_requests_total" and labels.get("operation") == operation
    )


async def all_pages(s3: S3Client, operation: str, **params) -> list[dict]:
    return [page async for page in pages(s3, operation, **params)]


def test_list_objects_v2_pages(moto, s3, bucket):
    keys = [f"d/k{i}" for i in range(5)] + ["d/sub/x", "e"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    client = client_of(moto, bucket)
    before = requests("ListObjectsV2")
    got = trio.run(functools.partial(all_pages, client, "list_objects_v2", Prefix="d/", Delimiter="/", MaxKeys=2))
    assert len(got) == 3 and requests("ListObjectsV2") - before == 3
    listed = [o["Key"] for page in got for o in page.get("Contents", ())]
    listed += [p["Prefix"] for page in got for p in page.get("CommonPrefixes", ())]
    assert sorted(listed) == [f"d/k{i}" for i in range(5)] + ["d/sub/"]


def test_list_objects_v1_pages_in_v2_terms(moto, s3, bucket):
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"k{i}", Body=b"x")
    client = client_of(moto, bucket, list_version=1)
    before = requests("ListObjects")
    got = trio.run(functools.partial(all_pages, client, "list_objects_v2", MaxKeys=2))
    assert [o["Key"] for page in got for o in page["Contents"]] == [f"k{i}" for i in range(5)]
    assert requests("ListObjects") - before == len(got) == 3


def test_list_object_versions_pages(moto, s3, bucket):
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for key in ("a", "b", "c"):
        for body in (b"1", b"2"):
            s3.put_object(Bucket=bucket, Key=key, Body=body)
    s3.delete_object(Bucket=bucket, Key="b")  # a delete marker
    whole = s3.list_object_versions(Bucket=bucket)
    expected = {(v["Key"], v["VersionId"]) for v in whole["Versions"] + whole["DeleteMarkers"]}
    assert len(expected) == 7
    client = client_of(moto, bucket)
    before = requests("ListObjectVersions")
    got = trio.run(functools.partial(all_pages, client, "list_object_versions", MaxKeys=2))
    assert len(got) > 2 and requests("ListObjectVersions") - before == len(got)
    listed = [
        (v["Key"], v["VersionId"]) for page in got for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
    ]
    assert len(listed) == len(expected) and set(listed) == expected  # pages split keys: no version twice or lost


def test_a_loop_that_stops_early_asks_for_no_more_pages(moto, s3, bucket):
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"k{i}", Body=b"x")
    client = client_of(moto, bucket)

    async def first() -> dict:
        async for page in pages(client, "list_objects_v2", MaxKeys=2):
            return page
        raise AssertionError("no page")

    before = requests("ListObjectsV2")
    assert [o["Key"] for o in trio.run(first)["Contents"]] == ["k0", "k1"]
    assert requests("ListObjectsV2") - before == 1


def test_a_pager_with_a_nursery_asks_for_the_next_page_ahead(moto, s3, bucket):
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"k{i}", Body=b"x")
    client = client_of(moto, bucket)
    before = requests("ListObjectsV2")
    keys = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            pager = Pager(client, "list_objects_v2", {"MaxKeys": 2}, nursery)
            keys.extend(o["Key"] for o in (await pager.next_page())["Contents"])
            with trio.fail_after(10):
                while requests("ListObjectsV2") - before < 2:  # the second page, before anyone wanted it
                    await trio.sleep(0.01)
            while not pager.done:
                keys.extend(o["Key"] for o in (await pager.next_page())["Contents"])

    trio.run(main)
    assert keys == ["k0", "k1", "k2"] and requests("ListObjectsV2") - before == 2


def test_list_buckets_pages(moto, s3, new_bucket):
    """The account's listing, without Bucket= (moto sends no ContinuationToken: one page)."""
    mine = {new_bucket() for _ in range(3)}
    client = client_of(moto, "unused")
    before = requests("ListBuckets")
    got = trio.run(all_pages, client, "list_buckets")
    assert mine <= {b["Name"] for page in got for b in page["Buckets"]}
    assert requests("ListBuckets") - before == len(got) == 1


def test_multipart_uploads_and_parts_pages_without_trio(moto, s3, bucket):
    uploads = {s3.create_multipart_upload(Bucket=bucket, Key=f"k{i}")["UploadId"] for i in range(3)}
    first = sorted(uploads)[0]
    key = next(u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"] if u["UploadId"] == first)
    for number in (1, 2, 3):
        s3.upload_part(Bucket=bucket, Key=key, UploadId=first, PartNumber=number, Body=b"x" * number)
    client = boto_client(moto.url)
    got = list(pages_sync(client, "list_multipart_uploads", Bucket=bucket, MaxUploads=1))  # moto: one page
    assert {u["UploadId"] for page in got for u in page["Uploads"]} == uploads
    parts = list(pages_sync(client, "list_parts", Bucket=bucket, Key=key, UploadId=first, MaxParts=1))
    assert [p["Size"] for page in parts for p in page["Parts"]] == [1, 2, 3]


def test_next_params_follow_each_operations_markers():
    """Every position parameter is replaced by the answer's next one; one it leaves out is dropped."""
    asked = {"Bucket": "b", "MaxUploads": 1, "KeyMarker": "a", "UploadIdMarker": "u1"}
    page = {"IsTruncated": True, "NextKeyMarker": "c/", "NextUploadIdMarker": None}
    assert next_params("list_multipart_uploads", asked, page) == {"Bucket": "b", "MaxUploads": 1, "KeyMarker": "c/"}
    assert next_params("list_multipart_uploads", asked, {**page, "IsTruncated": False}) is None
    # truncated but no token (a server without ListObjectsV2): over, not the same page forever
    assert next_params("list_objects_v2", {"MaxKeys": 2}, {"IsTruncated": True}) is None
    # ListBuckets says more only by a token
    assert next_params("list_buckets", {}, {"ContinuationToken": "t"}) == {"ContinuationToken": "t"}
    assert next_params("list_buckets", {"ContinuationToken": "t"}, {"Buckets": []}) is None
