"""The ``.versions/`` tree and the time views (s3fuse/versions.py) against a real moto server.

boto3 is the ground truth: the names, sizes, dates and bytes of every version come from its
ListObjectVersions and GetObject answers. moto dates versions to the second, so tests that need an
order between versions sleep a little more than a second between writes.
"""

from __future__ import annotations

import datetime
import errno
import os
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import trio
from conftest import base_env

from s3fuse.blockcache import BlockCache
from s3fuse.errors import FsError
from s3fuse.metadata import EntryInfo
from s3fuse.options import Config, parse_args
from s3fuse.reader import ObjectReader
from s3fuse.s3client import ClientSettings, S3Client, make_boto_client
from s3fuse.versions import TimeView, Versions, ordered_versions, record_kinds, version_reader

UTC = datetime.UTC
AFTER_A_SECOND = 1.1  # LastModified has whole seconds: writes this far apart get different ones


@pytest.fixture
def client_for(monkeypatch):
    """client_for(url, bucket): an S3Client built as mount.py builds one (make_boto_client, its timestamp parser)."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in base_env().items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)

    def make(url: str, bucket: str) -> S3Client:
        settings = ClientSettings(endpoint_url=url, max_attempts=1)
        boto = make_boto_client(settings)
        return S3Client(boto, bucket, settings)

    return make


@pytest.fixture
def client(moto, bucket, client_for) -> S3Client:
    return client_for(moto.url, bucket)


@pytest.fixture
def versioned(s3, bucket) -> str:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return bucket


def options(spec: str, *args: str) -> Config:
    return parse_args([spec, "/mnt", *args])


def name_of(item: dict, deleted: bool = False) -> str:
    """The entry name the spec gives a version in boto3's ListObjectVersions answer."""
    stamp = item["LastModified"].astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}_{item['VersionId']}" + (".deleted" if deleted else "")


def instant(moment: datetime.datetime) -> str:
    return "@" + moment.isoformat().replace("+00:00", "Z")


async def listdir(tree: Versions | TimeView, path: str) -> list[tuple[str, EntryInfo]]:
    handle = tree.open_dir(path)
    out: list[tuple[str, EntryInfo]] = []
    while (item := await handle.entry(len(out))) is not None:
        out.append(item)
    return out


async def names(tree: Versions | TimeView, path: str) -> list[str]:
    return [name for name, _ in await listdir(tree, path)]


async def read(tree: Versions | TimeView, path: str) -> bytes:
    version = await tree.version(path)
    async with trio.open_nursery() as nursery:
        reader = version_reader(tree.s3, tree.opts, version, BlockCache(1 << 20), nursery)
        return bytes(await reader.read(0, version.size + 1))


@pytest.mark.trio
async def test_versions_of_a_deleted_key(s3, versioned, client, moto):
    bucket, key = versioned, "docs/report.txt"
    bodies = [b"one", b"two!", b"three"]
    for body in bodies:
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        await trio.sleep(AFTER_A_SECOND)
    opts = options(bucket)
    path = ".versions/docs/report.txt"
    before = Versions(client, opts)
    current = s3.list_object_versions(Bucket=bucket, Prefix=key)["Versions"][0]
    assert current["IsLatest"]
    link = await before.lookup(path + "/latest")
    assert link is not None and link.info.is_symlink
    assert await before.readlink(path + "/latest") == name_of(current).encode()
    assert (await before.xattrs(path + "/latest"))["s3.is_latest"] == b"1"

    s3.delete_object(Bucket=bucket, Key=key)
    versions = Versions(client, opts)  # the first one keeps the key's history for the directory TTL
    assert await versions.lookup(path + "/latest") is None
    assert await names(versions, ".versions") == ["docs"]
    assert await names(versions, ".versions/docs") == ["report.txt"]
    answer = s3.list_object_versions(Bucket=bucket, Prefix=key)
    (marker,) = answer["DeleteMarkers"]
    olds = sorted(answer["Versions"], key=lambda v: v["LastModified"])
    oldest_first = [name_of(v) for v in olds] + [name_of(marker, deleted=True)]
    listed = await listdir(versions, path)
    assert [name for name, _ in listed] == oldest_first[::-1]  # readdir: S3's order, newest first
    assert sorted(name for name, _ in listed) == oldest_first  # what ls shows

    deleted = listed[0][1]
    assert (deleted.size, stat.S_IMODE(deleted.mode), stat.S_ISREG(deleted.mode)) == (0, 0, True)
    assert deleted.mtime_ns == int(marker["LastModified"].timestamp()) * 10**9
    marker_xattrs = await versions.xattrs(f"{path}/{name_of(marker, deleted=True)}")
    assert marker_xattrs == {
        "s3.version_id": marker["VersionId"].encode(),
        "s3.is_latest": b"1",
        "s3.metadata_only": b"0",
    }
    fresh = Versions(client, opts)  # lookups without a listing before them
    mark = moto.mark()
    for item, body, (name, info) in zip(olds, bodies, listed[:0:-1], strict=True):
        assert name == name_of(item)
        assert (info.size, stat.S_IMODE(info.mode), stat.S_ISREG(info.mode)) == (len(body), 0o444, True)
        assert info.mtime_ns == int(item["LastModified"].timestamp()) * 10**9
        assert await read(versions, f"{path}/{name}") == body
        found = await fresh.lookup(f"{path}/{name}")
        assert found is not None and found.info.size == len(body)
        assert await fresh.xattrs(f"{path}/{name}") == {
            "s3.version_id": item["VersionId"].encode(),
            "s3.etag": item["ETag"].encode(),
            "s3.is_latest": b"0",
            "s3.metadata_only": b"0",
        }
    assert await fresh.lookup(f"{path}/20000101T000000Z_{olds[0]['VersionId']}") is None  # the right id, wrong time
    # The first lookup cached the key's history (one page): the others cost no request.
    assert len([r for r in moto.requests(mark, bucket) if "versions" in r.query]) == 1
    assert await fresh.lookup(".versions/docs/nothing") is None


@pytest.mark.trio
async def test_block_cache_keeps_versions_apart(s3, versioned, client):
    """Two versions read without ETags share key and block index: the version id tells them apart."""
    ids = [s3.put_object(Bucket=versioned, Key="k", Body=body)["VersionId"] for body in (b"first", b"other")]
    blocks = BlockCache(1 << 20)
    async with trio.open_nursery() as nursery:
        for version_id, body in zip(ids, (b"first", b"other"), strict=True):
            reader = ObjectReader(client, blocks, nursery, "k", 5, None, 1 << 16, 0, lambda: None, version_id)
            assert bytes(await reader.read(0, 5)) == body


@pytest.mark.trio
async def test_null_versions(s3, bucket, client):
    s3.put_object(Bucket=bucket, Key="before.txt", Body=b"written before versioning")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=bucket, Key="enabled.txt", Body=b"written while enabled")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    s3.put_object(Bucket=bucket, Key="suspended.txt", Body=b"written while suspended")
    versions = Versions(client, options(bucket))
    for key, null in (("before.txt", True), ("enabled.txt", False), ("suspended.txt", True)):
        (item,) = s3.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
        assert await names(versions, f".versions/{key}") == ["latest", name_of(item)]
        assert name_of(item).endswith("_null") == null, name_of(item)
        assert await read(versions, f".versions/{key}/latest") == s3.get_object(Bucket=bucket, Key=key)["Body"].read()


@pytest.mark.trio
async def test_a_key_with_2500_versions_is_streamed(s3, versioned, client, moto):
    bucket, key = versioned, "busy.log"
    # moto loses versions of one key put concurrently, and a put costs time in proportion to the versions
    # already there; delete markers are cheap, so the key gets 25 versions and 2,475 delete markers.
    first = None
    with ThreadPoolExecutor(8) as pool:
        for i in range(25):
            version_id = s3.put_object(Bucket=bucket, Key=key, Body=b"%04d" % i)["VersionId"]
            first = first or version_id
            list(pool.map(lambda _: s3.delete_object(Bucket=bucket, Key=key), range(99)))
    truth = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key):
        truth.update({v["VersionId"]: name_of(v) for v in page.get("Versions", ())})
        truth.update({m["VersionId"]: name_of(m, deleted=True) for m in page.get("DeleteMarkers", ())})
    assert len(truth) == 2500

    # More versions than one page: never cached whole, so every lookup pages again.
    versions = Versions(client, options(bucket))
    mark = moto.mark()
    oldest = await versions.lookup(f".versions/{key}/{truth[first]}")
    assert oldest is not None and oldest.info.size == 4
    pages = [r for r in moto.requests(mark, bucket) if "versions" in r.query]
    assert [(r.query["prefix"], r.query["max-keys"]) for r in pages] == [([key], ["1000"])] * 3
    assert "key-marker" not in pages[0].query
    assert all(r.query["key-marker"] == [key] and r.query["version-id-marker"] for r in pages[1:])
    assert await read(versions, f".versions/{key}/{truth[first]}") == b"0000"

    newest = s3.list_object_versions(Bucket=bucket, Prefix=key, MaxKeys=1)["DeleteMarkers"][0]
    mark = moto.mark()
    assert await versions.lookup(f".versions/{key}/{name_of(newest, deleted=True)}") is not None
    assert len([r for r in moto.requests(mark, bucket) if "versions" in r.query]) == 1  # on the first page

    mark = moto.mark()
    listed = await names(versions, f".versions/{key}")
    assert sorted(listed) == sorted(truth.values())  # the newest is a delete marker: no 'latest'
    pages = [r for r in moto.requests(mark, bucket) if "versions" in r.query]
    assert [r.query["max-keys"] for r in pages] == [["1000"]] * 4  # 3 pages of versions, 1 of the prefix 'busy.log/'


@pytest.mark.trio
async def test_metadata_only_versions(s3, versioned, client):
    bucket, key = versioned, "photo.jpg"
    s3.put_object(Bucket=bucket, Key=key, Body=b"pixels", Metadata={"mode": "33188"})
    source = {"Bucket": bucket, "Key": key}
    s3.copy_object(Bucket=bucket, Key=key, CopySource=source, MetadataDirective="REPLACE", Metadata={"mode": "33261"})
    after_copy = datetime.datetime.now(UTC)
    await trio.sleep(AFTER_A_SECOND)  # moto lists delete markers apart from versions: only the time orders them
    s3.delete_object(Bucket=bucket, Key=key)
    await trio.sleep(AFTER_A_SECOND)
    s3.put_object(Bucket=bucket, Key=key, Body=b"pixels")  # the same bytes, but after a delete marker
    s3.put_object(Bucket=bucket, Key=key, Body=b"PIXELS")  # the same size, other bytes
    versions = Versions(client, options(bucket))
    listed = [name for name in await names(versions, f".versions/{key}") if name != "latest"]
    flags = [(await versions.xattrs(f".versions/{key}/{name}"))["s3.metadata_only"] for name in listed]
    assert flags == [b"0", b"0", b"0", b"1", b"0"]  # newest first: PIXELS, pixels, deleted, the copy, the original
    # A time view's listing does not compare versions; its xattrs ask for the version before.
    view = f".versions/{instant(after_copy)}"
    assert await names(versions, view) == [key]
    assert (await versions.xattrs(f"{view}/{key}"))["s3.metadata_only"] == b"1"


@pytest.mark.trio
async def test_time_travel(s3, versioned, client):
    bucket = versioned
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"a1")
    s3.put_object(Bucket=bucket, Key="dir", Body=b"a file named like the directory")
    s3.put_object(Bucket=bucket, Key="dir/b.txt", Body=b"b1")
    s3.put_object(Bucket=bucket, Key="gone/c.txt", Body=b"c1")
    t1 = datetime.datetime.now(UTC)
    await trio.sleep(AFTER_A_SECOND)
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"a2")
    s3.delete_object(Bucket=bucket, Key="dir/b.txt")
    s3.delete_object(Bucket=bucket, Key="gone/c.txt")
    s3.put_object(Bucket=bucket, Key="new.txt", Body=b"n")
    t2 = datetime.datetime.now(UTC)
    await trio.sleep(AFTER_A_SECOND)
    s3.put_object(Bucket=bucket, Key="dir/b.txt", Body=b"b3")
    s3.delete_object(Bucket=bucket, Key="a.txt")
    t3 = datetime.datetime.now(UTC)

    versions = Versions(client, options(bucket))
    assert await names(versions, ".versions") == ["a.txt", "dir", "gone", "new.txt"]  # views are not listed
    before = f".versions/{instant(datetime.datetime(2000, 1, 1, tzinfo=UTC))}"
    assert await names(versions, before) == []
    assert await versions.lookup(before + "/a.txt") is None

    at1 = f".versions/{instant(t1)}"
    root = dict(await listdir(versions, at1))
    assert sorted(root) == ["a.txt", "dir", "gone"]
    assert root["dir"].is_dir and not root["a.txt"].is_dir  # a directory hides a file of its name
    assert stat.S_IMODE(root["a.txt"].mode) == 0o444
    assert await read(versions, at1 + "/a.txt") == b"a1"
    assert await names(versions, at1 + "/dir") == ["b.txt"]
    assert await read(versions, at1 + "/dir/b.txt") == b"b1"

    at2 = f".versions/{instant(t2)}"
    assert await names(versions, at2) == ["a.txt", "dir", "new.txt"]
    entry = await versions.lookup(at2 + "/dir")
    assert entry is not None and not entry.info.is_dir  # its directory had no keys then
    assert await read(versions, at2 + "/dir") == b"a file named like the directory"
    assert await versions.lookup(at2 + "/gone") is None
    assert await read(versions, at2 + "/a.txt") == b"a2"

    at3 = f".versions/{instant(t3)}"
    assert await names(versions, at3) == ["dir", "new.txt"]
    assert await versions.lookup(at3 + "/a.txt") is None
    assert await read(versions, at3 + "/dir/b.txt") == b"b3"
    current = await versions.xattrs(at3 + "/dir/b.txt")
    assert (current["s3.is_latest"], current["s3.metadata_only"]) == (b"1", b"0")

    # A whole mount at one instant (--at): the same view with the mount root as its root.
    mount = TimeView(client, options(bucket), t2)
    assert await names(mount, "") == ["a.txt", "dir", "new.txt"]
    assert await read(mount, "a.txt") == b"a2"
    assert await mount.lookup("gone") is None

    for wrong in ("@yesterday", "@2026-13-01T00:00:00Z", "@2026-11-20T10:00:00", "@"):
        assert await versions.lookup(f".versions/{wrong}") is None, wrong


@pytest.mark.trio
async def test_prefix_mount_and_a_key_that_is_also_a_prefix(s3, versioned, client):
    bucket = versioned
    for key in ("team/a", "team/a/b", "team/a/latest", "team/gone/f", "outside/x"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    s3.delete_object(Bucket=bucket, Key="team/gone/f")
    (a,) = s3.list_object_versions(Bucket=bucket, Prefix="team/a", MaxKeys=1)["Versions"]
    versions = Versions(client, options(f"{bucket}:team"))

    assert await names(versions, ".versions") == ["a", "gone"]
    assert await versions.lookup(".versions/outside") is None
    # a/ lists the versions of key a first, then the children of a/; the key owns 'latest'.
    assert await names(versions, ".versions/a") == ["latest", name_of(a), "b"]
    assert await versions.readlink(".versions/a/latest") == name_of(a).encode()
    assert await read(versions, ".versions/a/latest") == b"team/a"
    fresh = Versions(client, options(f"{bucket}:team"))
    entry = await fresh.lookup(".versions/a/latest")
    assert entry is not None and entry.info.is_symlink
    entry = await fresh.lookup(".versions/a/b")
    assert entry is not None and entry.info.is_dir
    # A prefix whose only key is deleted is still there, with the key's history.
    entry = await fresh.lookup(".versions/gone")
    assert entry is not None and entry.info.is_dir
    assert await names(fresh, ".versions/gone") == ["f"]
    history = await names(fresh, ".versions/gone/f")
    assert len(history) == 2 and history[0].endswith(".deleted") and "latest" not in history


def test_order_within_a_second_is_the_answers():
    """S3 interleaves versions and delete markers; botocore's two lists lose that order, record_kinds keeps it."""
    second = datetime.datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)
    item = {"Key": "k", "LastModified": second, "ETag": '"e"', "Size": 1}
    page = {
        "Versions": [{**item, "VersionId": "new", "IsLatest": True}, {**item, "VersionId": "old"}],
        "DeleteMarkers": [{"Key": "k", "VersionId": "marker", "LastModified": second}],
    }
    assert [v.version_id for v in ordered_versions(page)] == ["new", "old", "marker"]
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Name>b</Name><Version><Key>k</Key></Version><DeleteMarker><Key>k</Key></DeleteMarker>"
        b"<Version><Key>k</Key></Version></ListVersionsResult>"
    )
    record_kinds(SimpleNamespace(status_code=200, content=body), page)
    assert [v.version_id for v in ordered_versions(page)] == ["new", "marker", "old"]
    assert [v.deleted for v in ordered_versions(page)] == [False, True, False]


class NotImplementedServer(BaseHTTPRequestHandler):
    """An S3 endpoint without ListObjectVersions, as some S3-compatible servers are."""

    def do_GET(self) -> None:
        body = b"<Error><Code>NotImplemented</Code><Message>not implemented here</Message></Error>"
        self.send_response(501)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def unversioned_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotImplementedServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.trio
async def test_a_server_without_versions(unversioned_server, client_for):
    versions = Versions(client_for(unversioned_server, "bucket"), options("bucket"))
    with pytest.raises(FsError) as failure:
        await versions.lookup(".versions/a")
    assert failure.value.errno == errno.EOPNOTSUPP
    with pytest.raises(FsError) as failure:
        await listdir(versions, ".versions")
    assert failure.value.errno == errno.EOPNOTSUPP
