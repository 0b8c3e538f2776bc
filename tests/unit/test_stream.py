"""BodyStream against the moto server: chunks served as they arrive, what it refuses, and streams on standby."""

from __future__ import annotations

import random

import pytest
import trio
from conftest import boto_client

from s3fuse.blockcache import BlockCache
from s3fuse.reader import ObjectReader
from s3fuse.s3client import ClientSettings, S3Client
from s3fuse.stream import BodyStream
from s3fuse.transfer import ConnectionRate

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


def recording_gets(client, monkeypatch) -> list[str]:
    """The Range of each GetObject the client sends, in the order their answers' headers came."""
    ranges: list[str] = []
    get_object = client.direct.get_object

    def recorded(**kwargs):
        response = get_object(**kwargs)
        ranges.append(kwargs.get("Range", ""))
        return response

    monkeypatch.setattr(client.direct, "get_object", recorded)
    return ranges


def test_a_standby_stream_sends_its_get_and_reads_its_body_only_once_admitted(client, data, monkeypatch):
    ranges = recording_gets(client, monkeypatch)
    start, end = MIB, 3 * MIB

    async def main():
        async with trio.open_nursery() as nursery:
            stream = BodyStream.open(nursery, client, "obj", start, end, window=MIB, standby=True)
            assert BodyStream.open(nursery, client, "obj", 0, MIB, window=MIB, standby=True) is None  # 1 slot of 4
            with trio.fail_after(10):
                while not ranges:  # the GET was answered: its body waits in the connection
                    await trio.sleep(0.01)
            await trio.sleep(0.2)
            assert ranges == [f"bytes={start}-{end - 1}"] and not stream.flowing
            assert await stream.read(start, 100) is None  # not admitted: the caller reads by ranged GETs
            assert (client.standby.borrowed_tokens, client.streams.borrowed_tokens, client.transfer.used) == (1, 0, 0)
            client.transfer.try_take("another file", client.transfer.limit)
            assert not stream.admit()  # no room in the budget: it stays on standby
            client.transfer.give_back("another file", client.transfer.limit)
            assert stream.admit()
            assert (client.standby.borrowed_tokens, client.streams.borrowed_tokens) == (0, 1)
            assert client.transfer.used == stream.reserved
            got = b"".join([bytes(await stream.read(offset, CHUNK)) for offset in range(start, end, CHUNK)])
            assert got == data[start:end] and ranges == [f"bytes={start}-{end - 1}"]
            stream.close()
            assert (client.streams.borrowed_tokens, client.transfer.used) == (0, 0)
            closed = BodyStream.open(nursery, client, "obj", 0, MIB, window=MIB, standby=True)
            assert closed is not None
            closed.close()  # never admitted: its standby slot comes back, and nothing of the budget
            assert (client.standby.borrowed_tokens, client.transfer.used) == (0, 0)

    trio.run(main)


def test_a_reader_keeps_its_next_segments_on_standby_and_admits_them_in_order(s3, bucket, moto, monkeypatch):
    monkeypatch.setattr(ConnectionRate, "NEAR_ROUND_TRIP", -1.0)  # segments of SEGMENT, however fast moto answers
    segment = 256 << 10
    monkeypatch.setattr(ObjectReader, "SEGMENT", segment)
    monkeypatch.setattr(ObjectReader, "SMALL_OBJECT", segment)
    body = random.Random(6).randbytes(16 * segment + 5)
    etag = s3.put_object(Bucket=bucket, Key="big", Body=body)["ETag"]
    client = S3Client(boto_client(moto.url), bucket, ClientSettings(endpoint_url=moto.url, max_connections=32))
    ranges = recording_gets(client, monkeypatch)
    window = 4

    async def main():
        async with trio.open_nursery() as nursery:
            reader = ObjectReader(
                client, BlockCache(8 * MIB), nursery, "big", len(body), etag, MIB, window * segment, lambda: None
            )
            got, standby_seen = [], 0
            for offset in range(0, len(body), CHUNK):
                got.append(bytes(await reader.read(offset, CHUNK)))
                admitted = [stream.admitted for stream in reader._streams]
                # the window's streams read, those after them wait: never one admitted behind one that waits
                assert admitted == sorted(admitted, reverse=True)
                ahead = [stream.admitted for stream in reader._streams if stream.end > offset + CHUNK]
                assert (not ahead or ahead[0]) and sum(ahead) <= window  # the next read's stream reads
                assert len([stream for stream in reader._streams if stream.end > offset]) <= 2 * window
                standby_seen = max(standby_seen, admitted.count(False))
            reader.close()
            assert b"".join(got) == body
            assert standby_seen == window
            # every segment came from its one stream, standby or not: no ranged GET beside them
            assert sorted(ranges) == sorted(
                f"bytes={start}-{min(start + segment, len(body)) - 1}" for start in range(0, len(body), segment)
            )

    trio.run(main)


def test_the_connection_rate_is_the_median_of_the_last_segments_and_says_near_above_its_threshold():
    rate = ConnectionRate()
    assert (rate.rate, rate.near) == (0.0, False)
    for _ in range(ConnectionRate.KEPT - 1):  # fast, but too few to tell
        rate.observe(2000 * MIB, 1.0)
    assert rate.rate == 2000 * MIB and not rate.near
    for mibps in (100, 90, 2000, 110, 95):  # one fast segment among S3's: not near
        rate.observe(mibps * MIB, 1.0)
    assert rate.rate == 100 * MIB and not rate.near
    for mibps in (900, 1200, 800):  # now three of the last five are fast
        rate.observe(mibps * MIB, 1.0)
    assert rate.rate == 800 * MIB and rate.near


def test_a_server_that_answers_fast_is_near_until_measured_segments_say_one_connection_is_slow():
    rate = ConnectionRate()
    rate.answered(0.030)  # S3's round trip: nothing measured, not near
    assert not rate.near
    rate.answered(ConnectionRate.NEAR_ROUND_TRIP / 2)  # one fast answer: near, before any segment
    rate.answered(0.030)  # the quickest counts
    assert rate.near
    for _ in range(ConnectionRate.KEPT):  # S3's connections, answering fast: short segments
        rate.observe(100 * MIB, 1.0)
    assert not rate.near
    for _ in range(ConnectionRate.KEPT):  # more than that, though less than NEAR: long ones again
        rate.observe(ConnectionRate.FAR + MIB, 1.0)
    assert rate.near
    slow = ConnectionRate()  # the same rates from a server far away: short
    slow.answered(0.030)
    for _ in range(ConnectionRate.KEPT):
        slow.observe(ConnectionRate.FAR + MIB, 1.0)
    assert not slow.near


@pytest.mark.parametrize("near", [False, True])
def test_a_reader_streams_long_segments_where_one_connection_carries_much(s3, bucket, moto, monkeypatch, near):
    """Segments of NEAR_SEGMENTS times SEGMENT where the connection rate says near (each stream
    still reading at most SEGMENT ahead); segments read whole by streams not on standby are measured."""
    segment = 256 << 10
    monkeypatch.setattr(ObjectReader, "SEGMENT", segment)
    monkeypatch.setattr(ObjectReader, "SMALL_OBJECT", segment)
    monkeypatch.setattr(BodyStream, "MEASURED", segment)
    step = segment // 4  # reads within what a stream holds: a window of 4 chunks, one behind the read
    monkeypatch.setattr(ObjectReader, "STREAMING_FIRST_READ", step)
    body = random.Random(7).randbytes(40 * segment + 5)
    etag = s3.put_object(Bucket=bucket, Key="big", Body=body)["ETag"]
    client = S3Client(boto_client(moto.url), bucket, ClientSettings(endpoint_url=moto.url, max_connections=32))
    rate = client.connection_rate
    for _ in range(ConnectionRate.KEPT):
        rate.observe(ConnectionRate.NEAR * (2 if near else 1 / 4), 1.0)
    monkeypatch.setattr(ConnectionRate, "observe", lambda self, n, s: measured.append(n))  # keep it as set
    measured: list[int] = []
    ranges = recording_gets(client, monkeypatch)

    async def main():
        async with trio.open_nursery() as nursery:
            reader = ObjectReader(client, BlockCache(8 * MIB), nursery, "big", len(body), etag, MIB, 2 * segment, print)
            got = [bytes(await reader.read(offset, step)) for offset in range(0, len(body), step)]
            assert all(stream.reserved <= segment for stream in reader._streams)
            reader.close()
            assert b"".join(got) == body

    trio.run(main)
    length = segment * (ObjectReader.NEAR_SEGMENTS if near else 1)
    assert sorted(ranges) == sorted(
        f"bytes={start}-{min(start + length, len(body)) - 1}" for start in range(0, len(body), length)
    )
    assert measured and all(n == length for n in measured[:-1])
