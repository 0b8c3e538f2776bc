"""write/upload.py against the real moto server (multipart copies, batched deletes); write/parts.py's part sizes."""

from __future__ import annotations

import base64
import hashlib
import os
import random

import pytest
import trio
from conftest import boto_client, keys_of
from hypothesis import given, settings
from hypothesis import strategies as st

from s3fuse.errors import S3Error
from s3fuse.extents import Extents
from s3fuse.s3client import ClientSettings, S3Client
from s3fuse.write import upload
from s3fuse.write.parts import (
    MAX_FILE_SIZE,
    MAX_ZERO_PART,
    SINGLE_PUT_LIMIT,
    MiB,
    Source,
    planned_part_size,
    rebuild_plan,
    streamed_part_size,
)
from s3fuse.write.upload import (
    FileRange,
    MultipartUpload,
    ObjectHeaders,
    UploadRegistry,
    content_crc32,
    content_md5,
    copy_object,
    delete_keys,
)
from s3fuse.write.zeros import ZeroObjects


def test_part_sizes_reach_five_tib_within_10000_parts():
    assert planned_part_size(1) == 8 * MiB
    five_tib = 5 << 40
    part = planned_part_size(five_tib)
    assert part % MiB == 0 and -(-five_tib // part) <= 10_000 and part <= 5 << 30
    streamed = sum(streamed_part_size(i) for i in range(10_000))
    assert streamed >= five_tib and max(streamed_part_size(i) for i in range(10_000)) <= 5 << 30


S3_MIN_PART, S3_MAX_PART, S3_MAX_PARTS = 5 * MiB, 5 << 30, 10_000  # S3's multipart limits
sizes = st.one_of(st.integers(SINGLE_PUT_LIMIT + 1, 200 * MiB), st.integers(200 * MiB, MAX_FILE_SIZE))


@settings(max_examples=300, deadline=None)
@given(sizes, st.data())
def test_a_rebuild_plan_tiles_the_file_within_s3_limits_and_copies_what_it_can(size, data):
    base_limit = data.draw(st.sampled_from([0, size, data.draw(st.integers(0, size))]))
    offsets = st.integers(0, size - 1)
    written = Extents.of(
        [sorted((data.draw(offsets), data.draw(offsets))) for _ in range(data.draw(st.integers(0, 6)))]
    )
    plan = rebuild_plan(size, base_limit, written)
    assert [s for s, _, _ in plan] == [0] + [e for _, e, _ in plan[:-1]] and plan[-1][1] == size  # tiles it
    assert len(plan) <= S3_MAX_PARTS
    assert all(e - s >= S3_MIN_PART for s, e, _ in plan[:-1])  # every part but the last
    assert all(e - s <= S3_MAX_PART for s, e, _ in plan)
    part = planned_part_size(size)
    for s, e, source in plan:
        if source is Source.COPY:  # only unchanged bytes of the old object are copied ...
            assert e <= base_limit and not written.intersects(s, e)
        elif source is Source.ZERO:  # ... only holes are copied from zeros ...
            assert s >= base_limit and not written.intersects(s, e) and e - s <= MAX_ZERO_PART
        else:  # ... and every part that could be copied is: only parts with written bytes cost upload
            assert e - s <= part and (s < base_limit < e or written.intersects(s, e))


@pytest.fixture
def client(moto, bucket):
    return S3Client(boto_client(moto.url), bucket, ClientSettings(endpoint_url=moto.url))


def test_file_range_is_a_part_read_from_its_file(tmp_path):
    """A part's body: the bytes of its range only, seekable for hashing and retries, read with pread."""
    data = random.Random(7).randbytes(3 * MiB + 5)
    path = tmp_path / "spill"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        part = FileRange(fd, MiB + 1, 3 * MiB + 2)
        assert len(part) == 2 * MiB + 1
        assert content_md5(part) == content_md5(data[MiB + 1 : 3 * MiB + 2]) == content_md5(part)
        assert content_crc32(part) == content_crc32(data[MiB + 1 : 3 * MiB + 2])
        check_value = base64.b64encode(bytes.fromhex("cbf43926")).decode()  # CRC-32's, of "123456789"
        assert content_crc32(b"123456789") == check_value
        assert part.tell() == 0
        assert part.read(10) == data[MiB + 1 : MiB + 11]
        assert part.read() == data[MiB + 11 : 3 * MiB + 2]
        assert part.read(1) == b""
        part.seek(-4, os.SEEK_END)
        assert part.read() == data[3 * MiB - 2 : 3 * MiB + 2]
        part.seek(0)
        assert hashlib.md5(part.read()).digest() == hashlib.md5(data[MiB + 1 : 3 * MiB + 2]).digest()
        beyond = FileRange(fd, 3 * MiB, 4 * MiB)  # the file ends first: an error, not a short part
        with pytest.raises(OSError):
            beyond.read()
    finally:
        os.close(fd)


def test_copy_above_the_single_copy_limit_is_a_multipart_copy(s3, bucket, client, tmp_path, monkeypatch):
    """Objects over 5 GiB are copied part by part; here the limit is lowered to 1 MiB."""
    data = random.Random(1).randbytes(20 * MiB + 3)
    s3.put_object(Bucket=bucket, Key="src", Body=data, ContentType="text/x-test", Metadata={"mode": "33188"})
    monkeypatch.setattr(upload, "MAX_SINGLE_COPY", MiB)
    monkeypatch.setattr(upload, "COPY_PART", 0)  # parts of planned_part_size: 8 MiB
    registry = UploadRegistry(str(tmp_path), bucket)
    etag = trio.run(copy_object, client, "src", "dst", len(data), registry)
    assert etag.strip('"').endswith("-3")  # three 8 MiB parts (the last one short)
    head = s3.head_object(Bucket=bucket, Key="dst")
    assert (head["ContentType"], head["Metadata"]) == ("text/x-test", {"mode": "33188"})
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == data
    assert registry.entries() == {}  # completed uploads leave no record


def test_an_upload_is_announced_until_its_id_is_recorded_and_a_refused_one_leaves_nothing(moto, bucket, tmp_path):
    """The registry holds an announcement of the key while CreateMultipartUpload is on its way
    (a daemon killed then leaves it for cleanup), then the upload's record; a server's refusal
    made no upload, so it leaves neither."""
    registry = UploadRegistry(str(tmp_path), bucket)
    client = S3Client(boto_client(moto.url), bucket, ClientSettings(endpoint_url=moto.url))
    seen_during: list[dict] = []
    call = client.call

    async def watched(operation: str, **params):
        if operation == "create_multipart_upload":
            seen_during.extend(registry.announced().values())
        return await call(operation, **params)

    client.call = watched
    started = MultipartUpload(client, "k", ObjectHeaders("text/plain"), registry)
    trio.run(started.start)
    assert [entry["key"] for entry in seen_during] == ["k"] and seen_during[0]["pid"] == os.getpid()
    assert registry.announced() == {}
    assert registry.entries()[started.upload_id]["key"] == "k"
    trio.run(started.abort)
    assert registry.entries() == {}

    missing = S3Client(boto_client(moto.url), "no-such-bucket", ClientSettings(endpoint_url=moto.url))
    with pytest.raises(S3Error, match="NoSuchBucket"):
        trio.run(MultipartUpload(missing, "k", ObjectHeaders("text/plain"), registry).start)
    assert registry.announced() == {} and registry.entries() == {}


def test_delete_keys_in_batches_of_1000(s3, bucket, client, monkeypatch):
    keys = [f"k/{i:04d}" for i in range(25)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
    monkeypatch.setattr(upload, "DELETE_BATCH", 10)  # 3 batches
    trio.run(delete_keys, client, keys[:-1])
    assert list(keys_of(s3, bucket)) == keys[-1:]


def test_holes_are_copied_from_all_zero_objects_made_once_and_again_if_gone(s3, bucket, client, tmp_path):
    """ZeroObjects: 8 MiB sent once, doubled inside S3 for longer holes; a vanished one is
    made again; all of them deleted at the end."""
    registry = UploadRegistry(str(tmp_path), bucket)
    zeros = ZeroObjects(client, registry)
    head = random.Random(2).randbytes(8 * MiB)

    async def upload_with_holes(key: str, lengths: list[int]) -> None:
        upload = MultipartUpload(client, key, ObjectHeaders("application/octet-stream"), registry)
        await upload.start()
        await upload.send_part(1, head)
        for number, length in enumerate(lengths, 2):
            await zeros.copy_part(upload, number, length)
        await upload.complete()

    trio.run(upload_with_holes, "a", [20 * MiB, 8 * MiB, 3])
    made = sorted(k for k in keys_of(s3, bucket, internal=True) if k.startswith(".s3fuse/zeros/"))
    assert sorted(int(k.rsplit("-", 1)[1]) for k in made) == [8 * MiB, 16 * MiB, 32 * MiB]
    assert s3.get_object(Bucket=bucket, Key="a")["Body"].read() == head + bytes(28 * MiB + 3)
    for key in made:  # someone removes them: the next hole makes them again
        s3.delete_object(Bucket=bucket, Key=key)
    trio.run(upload_with_holes, "b", [5 * MiB])
    assert s3.get_object(Bucket=bucket, Key="b")["Body"].read() == head + bytes(5 * MiB)
    trio.run(zeros.remove)
    assert sorted(keys_of(s3, bucket)) == ["a", "b"]
    assert registry.entries() == {}
