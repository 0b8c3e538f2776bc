"""write/conditions.py against the real moto server: what the probes find out, and what they leave."""

from __future__ import annotations

import threading

import pytest
import trio
from conftest import boto_client, keys_of

from s3fuse.s3client import ClientSettings, S3Client
from s3fuse.write.conditions import COMPLETE, PUT, honoured
from s3fuse.write.upload import UploadRegistry


@pytest.fixture
def client(moto, bucket):
    return S3Client(boto_client(moto.url), bucket, ClientSettings(endpoint_url=moto.url))


def test_the_put_probe_finds_moto_honours_the_conditions_and_leaves_no_key(client, s3, bucket):
    assert trio.run(honoured, client, PUT) is True
    assert client.honours == {PUT: True}
    assert list(keys_of(s3, bucket, internal=True)) == []


def test_the_put_probe_finds_a_server_that_ignores_the_conditions(client, s3, bucket, monkeypatch):
    """A server that drops If-Match and If-None-Match (as the request without them) writes every
    attempt: the probe says so, once, and removes its key. Its two conditional PUTs go side by side."""
    sent = []
    put_object = client.direct.put_object
    together = threading.Barrier(2)

    def ignoring(**params):
        sent.append({name for name in ("IfMatch", "IfNoneMatch") if name in params})
        if sent[-1]:
            together.wait(timeout=10)  # one after the other, the first would wait here in vain
        return put_object(**{k: v for k, v in params.items() if k not in ("IfMatch", "IfNoneMatch")})

    monkeypatch.setattr(client.direct, "put_object", ignoring)
    assert trio.run(honoured, client, PUT) is False
    assert client.honours == {PUT: False}
    assert sorted(map(sorted, sent)) == [[], ["IfMatch"], ["IfNoneMatch"]]
    assert trio.run(honoured, client, PUT) is False and len(sent) == 3  # known: no second probe
    assert list(keys_of(s3, bucket, internal=True)) == []


def test_the_completion_probe_on_moto_ignores_if_match_and_cleans_up(client, s3, bucket, tmp_path):
    """moto ignores If-Match on CompleteMultipartUpload: the probe's upload completes, and the
    probe deletes the object; its registry record and announcement are gone."""
    registry = UploadRegistry(str(tmp_path), bucket)
    assert trio.run(honoured, client, COMPLETE, registry) is False
    assert list(keys_of(s3, bucket, internal=True)) == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert registry.entries() == {} and registry.announced() == {}
