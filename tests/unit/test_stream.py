"""BodyStream against the moto server: chunks served as they arrive, and what it refuses."""

from __future__ import annotations

import random

import pytest
import trio
from conftest import boto_client

from s3fuse.s3client import ClientSettings, S3Client
from s3fuse.stream import BodyStream

MIB = 1 << 20


@pytest.fixture
def client(moto, bucket):
    return S3Client(boto_client(moto.url), bucket, ClientSettings(endpoint_url=moto.url, max_connections=4))


@pytest.fixture
def data(s3, bucket):
    body = random.Random(5).randbytes(3 * MIB + 123)
    s3.put_object(Bucket=bucket, Key="obj", Body=body)
    return body


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(BodyStream, "CHUNK", CHUNK)


CHUNK = MIB // 4


def test_reads_across_chunks_in_and_slightly_out_of_order(client, data):
    start, end = 1000, 3 * MIB
    size = CHUNK + 7  # each read spans two chunks

    async def main():
        async with trio.open_nursery() as nursery:
            stream = BodyStream.open(nursery, client, "obj", start, end, window=MIB)
            assert stream.chunk == CHUNK
            got = {}
            for index in (0, 1, 3, 2, 4, 5):  # the kernel's reads may overtake each other by one
                offset = start + index * CHUNK
                got[offset] = bytes(await stream.read(offset, size))
            assert await stream.read(start - 1, 10) is None  # before the segment
            assert await stream.read(end, 10) is None  # after it
            assert await stream.read(start + 6 * CHUNK, 4 * CHUNK) is None  # beyond the window
            assert await stream.read(start + CHUNK, 10) is None  # let go of: more than a chunk behind
            for offset in range(start + 6 * CHUNK, end, CHUNK):
                got[offset] = bytes(await stream.read(offset, size))  # the last one clipped to the segment
            assert len(got[offset]) == end - offset
            assert not stream.broke_off
            stream.close()
            assert client.streams.borrowed_tokens == 0
        for offset, chunk in got.items():
            assert chunk == data[offset : min(offset + size, end)]

    trio.run(main)


def test_the_mounts_streams_are_limited(client, data):
    async def main():
        async with trio.open_nursery() as nursery:
            streams = [BodyStream.open(nursery, client, "obj", 0, MIB, window=MIB) for _ in range(3)]
            assert None not in streams[:2] and streams[2] is None  # max_connections 4: two streams
            streams[0].close()
            streams[1].close()
            again = BodyStream.open(nursery, client, "obj", 0, MIB, window=MIB)
            assert again is not None
            again.close()

    trio.run(main)


def test_a_stream_whose_reader_stops_drops_its_get(client, data, monkeypatch):
    monkeypatch.setattr(BodyStream, "IDLE_TIMEOUT", 0.3)

    async def main():
        async with trio.open_nursery() as nursery:
            stream = BodyStream.open(nursery, client, "obj", 0, len(data), window=MIB)
            assert bytes(await stream.read(0, 100)) == data[:100]
            with trio.fail_after(10):
                while not stream.ended:
                    await trio.sleep(0.05)
            assert stream.broke_off and not stream.failed  # idle, not an error
            assert await stream.read(2 * MIB, 100) is None
            stream.close()

    trio.run(main)


def test_a_stream_of_a_replaced_object_fails(client, data):
    async def main():
        async with trio.open_nursery() as nursery:
            stream = BodyStream.open(nursery, client, "obj", 0, MIB, window=MIB, IfMatch='"0123"')
            assert await stream.read(0, 100) is None
            assert stream.failed
            stream.close()

    trio.run(main)
