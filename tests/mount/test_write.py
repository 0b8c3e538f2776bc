"""Writing through a real mount: durability on close, uploads, tree changes and the tools that rely on them.

Ordinary programs (cp, mv, rm, tar, rsync, dd, sed, vim, git) work on the mount; boto3
is the ground truth of every result. Some tests put a recording HTTP proxy between the
mount and moto, because the werkzeug request log shows neither headers (checksums,
x-amz-copy-source) nor body sizes.
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import ctypes
import errno
import hashlib
import http.client
import os
import random
import shutil
import stat
import subprocess
import tarfile
import threading
import time
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from conftest import keys_of, put_objects, run, wait_until

MIB = 1 << 20
SINGLE_PUT_LIMIT = 8 * MIB  # files up to this size are one PutObject
STAMP = "2020-01-02 03:04:05 UTC"
STAMP_SECONDS = calendar.timegm((2020, 1, 2, 3, 4, 5))  # 1577934245


def randbytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def body_of(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def contents_of(s3, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """key -> bytes of every object under prefix."""
    return {key: body_of(s3, bucket, key) for key in keys_of(s3, bucket, prefix)}


def local_tree(root: Path) -> dict[str, bytes | None]:
    """relative path -> bytes of a file, None for a directory (os.walk, no symlinks)."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames:
            out[os.path.normpath(os.path.join(rel, name))] = None
        for name in filenames:
            out[os.path.normpath(os.path.join(rel, name))] = Path(dirpath, name).read_bytes()
    return out


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def is_part_upload(req) -> bool:
    return req.method == "PUT" and "partNumber" in req.query


def is_multipart_start(req) -> bool:
    """CreateMultipartUpload: POST ?uploads (the moto log's query parsing drops the bare 'uploads')."""
    return req.method == "POST" and "uploadId" not in req.query and req.key is not None


def object_puts(requests, key: str) -> list:
    """PutObject (or CopyObject) requests for key: a PUT without a query."""
    return [r for r in requests if r.method == "PUT" and r.key == key and not r.query]


# ---------------------------------------------------------------- recording proxy

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "te", "upgrade"}


@dataclass(frozen=True)
class Seen:
    """One request that passed the proxy, with what the moto log leaves out."""

    method: str
    key: str | None
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    sent: int  # request body bytes
    md5: str  # base64 MD5 of the request body, as Content-MD5 spells it
    crc32: str  # base64 CRC32 of the request body, as x-amz-checksum-crc32 spells it
    received: int  # response body bytes
    status: int

    @property
    def copy_source(self) -> str | None:
        return self.headers.get("x-amz-copy-source")


class RecordingProxy:
    """HTTP in front of moto; records every request. One request per connection."""

    def __init__(self, upstream: str) -> None:
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        up = urlsplit(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # so botocore's Expect: 100-continue is answered at once

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                assert "chunked" not in (self.headers.get("Transfer-Encoding") or ""), self.headers
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    answer = resp.read() if self.command != "HEAD" else b""
                finally:
                    conn.close()
                split = urlsplit(self.path)
                parts = unquote(split.path).lstrip("/").split("/", 1)
                seen = Seen(
                    self.command,
                    parts[1] if len(parts) == 2 else None,
                    parse_qs(split.query, keep_blank_values=True),
                    {k.lower(): v for k, v in self.headers.items()},
                    len(body),
                    base64.b64encode(hashlib.md5(body).digest()).decode(),
                    base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode(),
                    len(answer),
                    resp.status,
                )
                with proxy.lock:  # before answering: the mount may act on the answer at once
                    proxy.seen.append(seen)
                self.send_response_only(resp.status, resp.reason)
                for name, value in resp.getheaders():
                    if name.lower() not in HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(answer)
                self.close_connection = True

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def mark(self) -> int:
        with self.lock:
            return len(self.seen)

    def since(self, mark: int) -> list[Seen]:
        with self.lock:
            return self.seen[mark:]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(moto):
    p = RecordingProxy(moto.url)
    yield p
    p.close()


def assert_checksum_on_every_upload(seen: list[Seen]) -> None:
    """Every request that carries bytes has a checksum that matches them, for the server to
    check: a PutObject its Content-MD5, a part its CRC32, in an upload created for CRC32."""
    puts = [r for r in seen if r.method == "PUT" and r.copy_source is None and r.key and not r.query]
    parts = [r for r in seen if r.method == "PUT" and r.copy_source is None and "partNumber" in r.query]
    creates = [r for r in seen if r.method == "POST" and "uploads" in r.query]
    assert puts or parts
    for r in puts:
        assert r.headers.get("content-md5") == r.md5, (r.key, r.headers)
    for r in parts:
        assert r.headers.get("x-amz-checksum-crc32") == r.crc32, (r.key, r.query, r.headers)
        assert "content-md5" not in r.headers, "one checksum is enough"
    for r in creates:
        assert r.headers.get("x-amz-checksum-algorithm") == "CRC32", r.headers


# ---------------------------------------------------------------- durability and uploads


def test_close_and_fsync_make_data_durable(s3, bucket, mount, moto):
    """When close() or fsync() returns, S3 has the bytes: no waiting, one PutObject each."""
    mnt = mount(bucket)
    data = randbytes(1, 300_000)
    mark = moto.mark()
    with open(mnt / "small.bin", "wb") as f:
        f.write(data)
    assert body_of(s3, bucket, "small.bin") == data
    requests = moto.requests(mark, bucket)
    assert len(object_puts(requests, "small.bin")) == 1, requests
    assert not [r for r in requests if r.method == "POST" or "uploadId" in r.query], requests

    fd = os.open(mnt / "synced.txt", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"first\n")
        os.fsync(fd)
        assert body_of(s3, bucket, "synced.txt") == b"first\n"
        os.write(fd, b"second\n")
        os.fdatasync(fd)
        assert body_of(s3, bucket, "synced.txt") == b"first\nsecond\n"
        os.write(fd, b"third\n")
    finally:
        os.close(fd)
    assert body_of(s3, bucket, "synced.txt") == b"first\nsecond\nthird\n"


def test_upload_shapes_and_checksums(s3, bucket, mount, proxy):
    """Up to 8 MiB: one PutObject. Bigger, written front to back: a multipart upload.

    Every request carrying bytes has a checksum that matches them.
    """
    mnt = mount(bucket, "--endpoint-url", proxy.url, endpoint=False)
    small = randbytes(2, SINGLE_PUT_LIMIT - 1)
    big = randbytes(3, 2 * SINGLE_PUT_LIMIT + 12_345)

    mark = proxy.mark()
    with open(mnt / "small.bin", "wb") as f:
        f.write(small)
    seen = [r for r in proxy.since(mark) if r.key == "small.bin"]
    assert [(r.method, sorted(r.query)) for r in seen] == [("PUT", [])], seen
    assert body_of(s3, bucket, "small.bin") == small

    mark = proxy.mark()
    with open(mnt / "big.bin", "wb") as f:
        for off in range(0, len(big), 256 * 1024):
            f.write(big[off : off + 256 * 1024])
    seen = [r for r in proxy.since(mark) if r.key == "big.bin"]
    creates = [r for r in seen if r.method == "POST" and "uploads" in r.query]
    parts = [r for r in seen if r.method == "PUT" and "partNumber" in r.query]
    completes = [r for r in seen if r.method == "POST" and "uploadId" in r.query]
    assert len(creates) == 1 and len(completes) == 1, seen
    assert sorted(int(r.query["partNumber"][0]) for r in parts) == [1, 2, 3]
    assert sum(r.sent for r in parts) == len(big)
    assert all(r.copy_source is None for r in parts)
    assert not [r for r in seen if r.method == "PUT" and not r.query], "no PutObject or CopyObject"
    assert body_of(s3, bucket, "big.bin") == big
    assert_checksum_on_every_upload(proxy.since(0))


def test_file_of_exactly_8_mib_is_one_put(s3, bucket, mount, moto):
    """The boundary: up to 8 MiB a file is one PutObject, even when the writer reached a part's end."""
    exact = randbytes(16, SINGLE_PUT_LIMIT)
    mnt = mount(bucket)
    mark = moto.mark()
    with open(mnt / "exact.bin", "wb") as f:
        f.write(exact)
    requests = [r for r in moto.requests(mark, bucket) if r.key == "exact.bin"]
    assert [(r.method, sorted(r.query)) for r in requests] == [("PUT", [])], requests
    assert body_of(s3, bucket, "exact.bin") == exact


def test_parts_go_once_the_writer_reaches_their_end(s3, bucket, mount, proxy):
    """A file that ends on a part boundary has every part sent before close: close only completes.

    The kernel keeps written pages until close or its writeback (a long-running writer);
    POSIX_FADV_DONTNEED starts that writeback now.
    """
    data = randbytes(17, 2 * SINGLE_PUT_LIMIT)
    mnt = mount(bucket, "--endpoint-url", proxy.url, endpoint=False)
    mark = proxy.mark()

    def parts_sent() -> list:
        return [r for r in proxy.since(mark) if r.key == "aligned.bin" and "partNumber" in r.query]

    with open(mnt / "aligned.bin", "wb") as f:
        f.write(data)
        f.flush()
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        wait_until(lambda: len(parts_sent()) >= 2, 30)
        assert len(parts_sent()) == 2, proxy.since(mark)
        closing = proxy.mark()
    after_close = [r for r in proxy.since(closing) if r.key == "aligned.bin"]
    assert [(r.method, sorted(r.query)) for r in after_close] == [("POST", ["uploadId"])], after_close
    assert body_of(s3, bucket, "aligned.bin") == data


def test_read_back_while_and_after_writing(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="existing.txt", Body=b"0123456789")
    mnt = mount(bucket)
    path = mnt / "new.bin"
    data = randbytes(4, 200_000)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, data)
        assert os.pread(fd, 1000, 150_000) == data[150_000:151_000]  # unsaved bytes, before close
        assert os.pread(fd, len(data) + 10, 0) == data
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    assert run(["cat", str(path)]).stdout == data

    fd = os.open(mnt / "existing.txt", os.O_RDWR)
    try:
        os.pwrite(fd, b"abc", 4)
        assert os.pread(fd, 100, 0) == b"0123abc789"  # written bytes amid the object's own
    finally:
        os.close(fd)
    assert (mnt / "existing.txt").read_bytes() == b"0123abc789"
    assert body_of(s3, bucket, "existing.txt") == b"0123abc789"


def test_unlinked_before_close_never_reaches_s3_and_empty_files_do(s3, bucket, mount, moto):
    mnt = mount(bucket)
    mark = moto.mark()
    fd = os.open(mnt / "scratch.tmp", os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.write(fd, b"temporary data" * 1000)
        os.unlink(mnt / "scratch.tmp")
        os.write(fd, b"more")
    finally:
        os.close(fd)
    assert not os.path.exists(mnt / "scratch.tmp")
    assert not [r for r in moto.requests(mark, bucket) if r.key == "scratch.tmp" and r.method in ("PUT", "POST")]
    assert "scratch.tmp" not in keys_of(s3, bucket)

    run(["touch", str(mnt / "empty.txt")])
    with open(mnt / "empty2.txt", "wb"):
        pass
    # Saved at the last close (FUSE release, which the kernel sends just after close() returns).
    assert wait_until(lambda: {"empty.txt", "empty2.txt"} <= keys_of(s3, bucket).keys(), 10)
    keys = keys_of(s3, bucket)
    assert keys["empty.txt"]["Size"] == 0 and keys["empty2.txt"]["Size"] == 0
    assert os.stat(mnt / "empty.txt").st_size == 0


def test_new_files_in_new_directory_cost_one_put_each(s3, bucket, mount, moto, tmp_path):
    """cp of 50 small files into a fresh directory: one PutObject per file, no HEAD or LIST per name."""
    src = tmp_path / "src"
    files = {f"f{i:02d}.txt": f"small file {i}\n".encode() * (i + 1) for i in range(50)}
    write_tree(src, files)
    mnt = mount(bucket)
    mark = moto.mark()
    run(["mkdir", "-p", str(mnt / "d")])
    run(["cp", *sorted(str(src / n) for n in files), str(mnt / "d")])
    requests = moto.requests(mark, bucket)
    puts = [r for r in requests if r.method == "PUT" and r.key and r.key.startswith("d/f")]
    assert sorted(r.key for r in puts) == sorted(f"d/{n}" for n in files), requests
    assert [r for r in requests if r.method == "HEAD"] == []
    assert len(requests) <= len(files) + 5, [(r.method, r.key, r.query) for r in requests if r not in puts]
    assert "d/" in keys_of(s3, bucket)
    assert contents_of(s3, bucket, "d/f") == {f"d/{n}": data for n, data in files.items()}


# ---------------------------------------------------------------- copying trees in


def test_cp_r_tree(s3, bucket, mount, moto, tmp_path):
    src = tmp_path / "tree"
    files = {
        "readme.txt": b"hello\n",
        "empty.dat": b"",
        "a/one.bin": randbytes(5, 70_000),
        "a/b/c/deep.txt": b"deep\n" * 100,
        "big/large.bin": randbytes(6, SINGLE_PUT_LIMIT + 3 * MIB + 7),
        "ünïcødé dir/fïlé with spaces.txt": "wörds\n".encode(),
    }
    write_tree(src, files)
    (src / "empty-dir").mkdir()
    mnt = mount(bucket)
    mark = moto.mark()
    run(["cp", "-r", str(src), str(mnt / "copy")])
    requests = moto.requests(mark, bucket)

    objects = contents_of(s3, bucket)
    assert {k: v for k, v in objects.items() if not k.endswith("/")} == {f"copy/{k}": v for k, v in files.items()}
    assert "copy/empty-dir/" in objects  # mkdir leaves a marker
    assert local_tree(mnt / "copy") == local_tree(src)
    large = [r for r in requests if r.key == "copy/big/large.bin"]
    assert len([r for r in large if is_multipart_start(r)]) == 1, "the large file streams as multipart"
    assert len([r for r in large if is_part_upload(r)]) == 2
    for key in files:
        if key != "big/large.bin":
            assert len(object_puts(requests, f"copy/{key}")) == 1, key


# ---------------------------------------------------------------- renames, links, removal

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4


def renameat2(old: Path, new: Path, flags: int) -> None:
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old))


def test_mv_file_is_copy_and_delete(s3, bucket, mount, moto):
    data = randbytes(7, 3 * MIB)
    s3.put_object(Bucket=bucket, Key="from/file.bin", Body=data, Metadata={"custom": "kept"})
    mnt = mount(bucket)
    mark = moto.mark()
    run(["mv", str(mnt / "from/file.bin"), str(mnt / "to.bin")])
    requests = moto.requests(mark, bucket)
    assert sorted(keys_of(s3, bucket)) == ["to.bin"]
    assert body_of(s3, bucket, "to.bin") == data
    assert s3.head_object(Bucket=bucket, Key="to.bin")["Metadata"].get("custom") == "kept"
    assert len(object_puts(requests, "to.bin")) == 1  # CopyObject; the bytes never pass through the mount
    assert [r.method for r in requests if r.key == "from/file.bin" and r.method != "HEAD"] == ["DELETE"]
    assert not (mnt / "from/file.bin").exists()
    assert os.listdir(mnt) == ["to.bin"]


def test_mv_directory_moves_every_key(s3, bucket, mount):
    files = {f"old/dir/{name}": randbytes(i, 1000 + i) for i, name in enumerate(["a", "b/c", "b/d/e", "z.txt"])}
    for key, data in files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    s3.put_object(Bucket=bucket, Key="old/dir/empty/", Body=b"")
    s3.put_object(Bucket=bucket, Key="old/dir-sibling.txt", Body=b"not moved")
    mnt = mount(bucket)
    run(["mv", str(mnt / "old/dir"), str(mnt / "new")])
    assert keys_of(s3, bucket, "old/dir/") == {}
    moved = contents_of(s3, bucket, "new/")
    expected = {"new/" + k.removeprefix("old/dir/"): v for k, v in files.items()}
    assert {k: v for k, v in moved.items() if not k.endswith("/")} == expected
    assert "new/empty/" in moved
    assert body_of(s3, bucket, "old/dir-sibling.txt") == b"not moved"
    assert os.listdir(mnt / "old") == ["dir-sibling.txt"]
    assert sorted(os.listdir(mnt)) == ["new", "old"]


def test_mv_of_many_keys_logs_its_progress(s3, bucket, mount):
    put_objects(s3, bucket, {f"many/f{i:04d}": b"x" for i in range(1100)})
    mnt = mount(bucket)
    run(["mv", str(mnt / "many"), str(mnt / "moved")])
    assert len(keys_of(s3, bucket, "moved/")) == 1100 and keys_of(s3, bucket, "many/") == {}
    log = mount.log_text(mnt)
    assert "renaming 'many' to 'moved': 1000 objects moved so far" in log  # after the first listing page
    assert "renamed 'many' to 'moved': 1100 objects in" in log


def test_rename_over_existing_file(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="target.txt", Body=b"old target\n")
    mnt = mount(bucket)
    assert (mnt / "target.txt").read_bytes() == b"old target\n"
    (mnt / "source.txt").write_bytes(b"new content\n")
    os.rename(mnt / "source.txt", mnt / "target.txt")
    assert sorted(keys_of(s3, bucket)) == ["target.txt"]
    assert body_of(s3, bucket, "target.txt") == b"new content\n"
    assert (mnt / "target.txt").read_bytes() == b"new content\n"
    assert os.listdir(mnt) == ["target.txt"]
    assert "could not save" not in mount.log_text(mnt)  # nothing is left of the replaced file to save


def test_renamed_entries_are_usable_in_the_same_mount(s3, bucket, mount):
    """After a rename the kernel keeps the inode: it must now stand for the new name."""
    data = randbytes(17, 3 * MIB)
    s3.put_object(Bucket=bucket, Key="from/file.bin", Body=data)
    s3.put_object(Bucket=bucket, Key="old/dir/inner.txt", Body=b"inner\n")
    mnt = mount(bucket)
    assert (mnt / "old/dir/inner.txt").read_bytes() == b"inner\n"

    os.rename(mnt / "from/file.bin", mnt / "to.bin")
    assert (mnt / "to.bin").read_bytes() == data

    os.rename(mnt / "old/dir", mnt / "new")
    assert os.listdir(mnt / "new") == ["inner.txt"]
    assert (mnt / "new/inner.txt").read_bytes() == b"inner\n"

    (mnt / "draft.txt").write_bytes(b"draft\n")
    os.rename(mnt / "draft.txt", mnt / "final.txt")
    with open(mnt / "final.txt", "ab") as f:  # the save pattern of many programs: write, rename, keep writing
        f.write(b"more\n")
    assert contents_of(s3, bucket) == {"to.bin": data, "new/inner.txt": b"inner\n", "final.txt": b"draft\nmore\n"}


def test_rename_flags_and_hard_links_refused(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"a")
    s3.put_object(Bucket=bucket, Key="b.txt", Body=b"b")
    mnt = mount(bucket)
    with pytest.raises(OSError) as err:
        renameat2(mnt / "a.txt", mnt / "b.txt", RENAME_NOREPLACE)
    assert err.value.errno == errno.EEXIST
    with pytest.raises(OSError) as err:
        renameat2(mnt / "a.txt", mnt / "b.txt", RENAME_EXCHANGE)
    assert err.value.errno == errno.EINVAL
    with pytest.raises(OSError) as err:
        renameat2(mnt / "a.txt", mnt / "d.txt", RENAME_WHITEOUT)  # overlayfs's: no whiteouts in S3
    assert err.value.errno == errno.EINVAL
    renameat2(mnt / "a.txt", mnt / "c.txt", RENAME_NOREPLACE)  # no target: allowed
    with pytest.raises(OSError) as err:
        os.link(mnt / "b.txt", mnt / "hard.txt")
    assert err.value.errno == errno.EPERM
    assert contents_of(s3, bucket) == {"b.txt": b"b", "c.txt": b"a"}


def test_rm_r_rmdir_and_mkdir(s3, bucket, mount):
    for key in ("tree/x.txt", "tree/sub/y.txt", "tree/sub/deeper/z.txt", "treehouse.txt"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    s3.put_object(Bucket=bucket, Key="tree/marked/", Body=b"")
    mnt = mount(bucket)

    with pytest.raises(OSError) as err:
        os.rmdir(mnt / "tree/sub")
    assert err.value.errno == errno.ENOTEMPTY
    assert "tree/sub/y.txt" in keys_of(s3, bucket)

    os.mkdir(mnt / "made")
    assert "made/" in keys_of(s3, bucket)
    assert os.listdir(mnt / "made") == []
    os.rmdir(mnt / "made")
    assert "made/" not in keys_of(s3, bucket)

    run(["rm", "-r", str(mnt / "tree")])
    assert keys_of(s3, bucket, "tree/") == {}
    assert sorted(keys_of(s3, bucket)) == ["treehouse.txt"]
    assert os.listdir(mnt) == ["treehouse.txt"]


# ---------------------------------------------------------------- archivers and synchronisers


def make_source_tree(root: Path) -> None:
    write_tree(
        root,
        {
            "docs/readme.txt": b"read me\n",
            "docs/nested/deep.bin": randbytes(8, 100_000),
            "bin/tool.bin": randbytes(9, 3 * MIB + 1),
            "zero": b"",
        },
    )
    (root / "empty-dir").mkdir()
    os.symlink("docs/readme.txt", root / "link-to-file")
    os.symlink("../bin/tool.bin", root / "docs/link-up")
    os.symlink("docs", root / "link-to-dir")
    os.chmod(root / "bin/tool.bin", 0o755)


def members_of(tar_path: Path) -> dict[str, tuple]:
    """name -> (type, link target, bytes, mode, mtime) of every member (mtime for regular files only)."""
    out = {}
    with tarfile.open(tar_path) as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read() if m.isreg() else None
            mtime = int(m.mtime) if m.isreg() else None  # whole seconds, as s3fs-fuse keeps them
            out[m.name.rstrip("/")] = (m.type, m.linkname, data, m.mode, mtime)
    return out


def test_tar_extract_and_create(s3, bucket, mount, tmp_path):
    src = tmp_path / "src"
    make_source_tree(src)
    for path in (src / "docs/readme.txt", src / "bin/tool.bin", src / "zero"):
        os.utime(path, (STAMP_SECONDS, STAMP_SECONDS))
    original = tmp_path / "original.tar"
    with tarfile.open(original, "w") as tar:
        tar.add(src, arcname="src")
    mnt = mount(bucket)

    run(["tar", "-xf", str(original), "-C", str(mnt)])
    assert os.readlink(mnt / "src/link-to-file") == "docs/readme.txt"
    assert os.readlink(mnt / "src/docs/link-up") == "../bin/tool.bin"
    assert os.readlink(mnt / "src/link-to-dir") == "docs"
    assert (mnt / "src/link-to-file").read_bytes() == b"read me\n"  # followed through the mount
    assert sorted(os.listdir(mnt / "src/link-to-dir")) == ["link-up", "nested", "readme.txt"]
    assert (mnt / "src/bin/tool.bin").read_bytes() == (src / "bin/tool.bin").read_bytes()
    assert os.stat(mnt / "src/bin/tool.bin").st_mtime == STAMP_SECONDS
    assert stat.S_IMODE(os.stat(mnt / "src/bin/tool.bin").st_mode) == 0o755
    objects = contents_of(s3, bucket)
    assert objects["src/link-to-file"] == b"docs/readme.txt"  # a symlink object holds its target
    assert objects["src/docs/nested/deep.bin"] == (src / "docs/nested/deep.bin").read_bytes()
    assert objects["src/zero"] == b""
    assert "src/empty-dir/" in objects

    created = tmp_path / "created.tar"
    run(["tar", "-cf", str(created), "-C", str(mnt), "src"])
    assert members_of(created) == members_of(original)


def test_rsync_twice_transfers_nothing_the_second_time(s3, bucket, mount, tmp_path):
    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed")
    src = tmp_path / "src"
    make_source_tree(src)
    mnt = mount(bucket)
    run(["rsync", "-a", f"{src}/", f"{mnt}/dst/"])
    objects = contents_of(s3, bucket, "dst/")
    assert objects["dst/bin/tool.bin"] == (src / "bin/tool.bin").read_bytes()
    assert objects["dst/docs/link-up"] == b"../bin/tool.bin"
    assert not [k for k in objects if "/." in k], "rsync's temporary files are gone"
    assert local_tree(mnt / "dst") == local_tree(src)
    again = run(["rsync", "-a", "--itemize-changes", f"{src}/", f"{mnt}/dst/"], text=True)
    assert again.stdout == "", "a second rsync must find every file up to date"


# ---------------------------------------------------------------- changing existing files


def test_dd_notrunc_copies_unchanged_ranges_in_s3(s3, bucket, mount, proxy, tmp_path):
    """A 1 MiB patch into a 256 MiB object: the unchanged parts are UploadPartCopy, not re-sent."""
    size = 256 * MIB
    original = os.urandom(size)  # (random.randbytes is limited to 2**31 bits)
    s3.put_object(Bucket=bucket, Key="obj", Body=original)
    patch = randbytes(11, MIB)
    (tmp_path / "patch").write_bytes(patch)
    mnt = mount(bucket, "--endpoint-url", proxy.url, endpoint=False)
    mark = proxy.mark()
    run(["dd", f"if={tmp_path / 'patch'}", f"of={mnt / 'obj'}", "bs=1M", "seek=129", "count=1", "conv=notrunc"])
    seen = [r for r in proxy.since(mark) if r.key == "obj"]

    expected = original[: 129 * MIB] + patch + original[130 * MIB :]
    assert body_of(s3, bucket, "obj") == expected
    copies = [r for r in seen if is_part_upload(r) and r.copy_source is not None]
    sends = [r for r in seen if is_part_upload(r) and r.copy_source is None]
    assert copies and sends, seen
    assert len(copies) + len(sends) <= 3
    sent = sum(r.sent for r in seen)  # every byte sent to the server, request bodies included
    assert sent < 20 * MIB and sum(r.sent for r in sends) <= 8 * MIB, "only the part holding the patch is sent"
    copied = 0
    for r in copies:
        first, last = r.headers["x-amz-copy-source-range"].removeprefix("bytes=").split("-")
        copied += int(last) - int(first) + 1
    assert copied + sum(r.sent for r in sends) == size
    assert sum(r.received for r in seen if r.method == "GET") <= 8 * MIB, "nor is the object downloaded"
    assert not [r for r in seen if r.method == "PUT" and not r.query], "no PutObject of the whole file"
    assert_checksum_on_every_upload(seen)


def test_append_and_truncate(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="log.txt", Body=b"line one\n")
    s3.put_object(Bucket=bucket, Key="sized.bin", Body=b"0123456789")
    mnt = mount(bucket)
    run(["sh", "-c", f"echo 'line two' >> '{mnt / 'log.txt'}'"])
    assert body_of(s3, bucket, "log.txt") == b"line one\nline two\n"
    assert (mnt / "log.txt").read_bytes() == b"line one\nline two\n"

    run(["truncate", "-s", "100", str(mnt / "sized.bin")])
    assert body_of(s3, bucket, "sized.bin") == b"0123456789" + bytes(90)
    assert (mnt / "sized.bin").read_bytes() == b"0123456789" + bytes(90)
    run(["truncate", "-s", "4", str(mnt / "sized.bin")])
    assert body_of(s3, bucket, "sized.bin") == b"0123"
    assert os.stat(mnt / "sized.bin").st_size == 4
    assert (mnt / "sized.bin").read_bytes() == b"0123"


def test_sed_in_place(s3, bucket, mount):
    """sed -i writes a temporary file and renames it over the original."""
    s3.put_object(Bucket=bucket, Key="conf/app.ini", Body=b"colour = old\nsize = 3\n")
    mnt = mount(bucket)
    run(["sed", "-i", "s/old/new/", str(mnt / "conf/app.ini")])
    assert contents_of(s3, bucket) == {"conf/app.ini": b"colour = new\nsize = 3\n"}
    assert (mnt / "conf/app.ini").read_bytes() == b"colour = new\nsize = 3\n"
    assert os.listdir(mnt / "conf") == ["app.ini"]


def test_editor_save(s3, bucket, mount, tmp_path):
    """vim's save (swap file, backup by rename, new file, fsync, delete backup), or its Python twin."""
    s3.put_object(Bucket=bucket, Key="notes/todo.txt", Body=b"buy old milk\nold habits\n")
    mnt = mount(bucket)
    path = mnt / "notes/todo.txt"
    vim = next((shutil.which(n) for n in ("vim", "vim.tiny", "vi") if shutil.which(n)), None)
    if vim:
        env = {**os.environ, "HOME": str(tmp_path), "LC_ALL": "C"}
        run([vim, "-u", "NONE", "-es", "-c", "%s/old/new/", "-c", "wq", str(path)], stdin=subprocess.DEVNULL, env=env)
    else:
        temp = path.with_name(".todo.txt.swp")
        with open(temp, "wb") as f:
            f.write(b"buy new milk\nnew habits\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(temp, path)
    assert contents_of(s3, bucket) == {"notes/todo.txt": b"buy new milk\nnew habits\n"}
    assert path.read_bytes() == b"buy new milk\nnew habits\n"
    assert os.listdir(mnt / "notes") == ["todo.txt"]


def test_git_repository_in_the_mount(s3, bucket, mount, tmp_path):
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    mnt = mount(bucket)
    repo = mnt / "repo"
    repo.mkdir()
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "LC_ALL": "C",
    }
    ident = ["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main"]

    def git_(*args: str) -> str:
        return run([git, *ident, *args], cwd=repo, env=env, text=True).stdout

    git_("init", "-q")
    write_tree(repo, {"README.md": b"# repo\n", "src/main.py": b"print('hi')\n", "data.bin": randbytes(12, 50_000)})
    git_("add", "-A")
    git_("commit", "-q", "-m", "first commit")
    (repo / "README.md").write_bytes(b"# repo\n\nmore\n")
    git_("commit", "-q", "-am", "second commit")
    assert [line.split(" ", 1)[1] for line in git_("log", "--oneline").splitlines()] == [
        "second commit",
        "first commit",
    ]
    assert git_("status", "--porcelain") == ""
    git_("fsck", "--full", "--no-progress")
    keys = keys_of(s3, bucket, "repo/")
    assert "repo/src/main.py" in keys and "repo/.git/HEAD" in keys
    assert not [k for k in keys if k.endswith(".lock")], "git's lock files were renamed away"


# ---------------------------------------------------------------- attributes and symlinks


def test_chmod_and_mtime_survive_a_remount(s3, bucket, mount):
    mnt = mount(bucket)
    path = mnt / "file.txt"
    path.write_bytes(b"attributes\n")
    os.chmod(path, 0o600)
    run(["touch", "-d", STAMP, str(path)])
    st = os.stat(path)
    assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o600, STAMP_SECONDS)
    meta = s3.head_object(Bucket=bucket, Key="file.txt")["Metadata"]
    # the headers s3fs-fuse writes: decimal st_mode with the file type, whole seconds
    assert meta["mode"] == str(stat.S_IFREG | 0o600)
    assert meta["mtime"] == str(STAMP_SECONDS)
    assert (meta["uid"], meta["gid"]) == (str(os.getuid()), str(os.getgid()))
    assert body_of(s3, bucket, "file.txt") == b"attributes\n"
    mount.check(mnt)

    mnt = mount(bucket, "--posix-metadata")
    st = os.stat(mnt / "file.txt")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_mtime == STAMP_SECONDS
    assert run(["stat", "-c", "%a %Y", str(mnt / "file.txt")], text=True).stdout.split() == ["600", str(STAMP_SECONDS)]


def test_symlink_survives_a_remount(s3, bucket, mount):
    mnt = mount(bucket)
    os.mkdir(mnt / "dir")
    os.symlink("../some/target.txt", mnt / "dir/link")
    assert os.readlink(mnt / "dir/link") == "../some/target.txt"
    assert body_of(s3, bucket, "dir/link") == b"../some/target.txt"
    assert s3.head_object(Bucket=bucket, Key="dir/link")["Metadata"]["mode"] == str(stat.S_IFLNK | 0o777)
    mount.check(mnt)

    mnt = mount(bucket, "--posix-metadata")
    assert stat.S_ISLNK(os.lstat(mnt / "dir/link").st_mode)
    assert os.readlink(mnt / "dir/link") == "../some/target.txt"
    assert run(["find", str(mnt), "-type", "l", "-printf", "%P -> %l\n"], text=True).stdout == (
        "dir/link -> ../some/target.txt\n"
    )


# ---------------------------------------------------------------- big files and failures


@pytest.mark.slow
def test_1gib_streaming_write_bounded_memory(s3, bucket, mount, daemons_of):
    """A 1 GiB file written front to back streams out; the daemon's peak RSS stays small."""
    mnt = mount(bucket)
    (pid,) = daemons_of(mnt)
    block = bytearray(randbytes(13, MIB))
    digest = hashlib.md5()
    with open(mnt / "huge.bin", "wb", buffering=0) as f:
        for i in range(1024):
            block[:8] = i.to_bytes(8, "little")  # every MiB differs: parts out of order would show
            digest.update(block)
            f.write(block)
    with open(f"/proc/{pid}/status") as status:
        peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(f"daemon peak RSS (VmHWM) after a 1 GiB write: {peak_kib / 1024:.1f} MiB")
    try:
        head = s3.head_object(Bucket=bucket, Key="huge.bin")
        assert head["ContentLength"] == 1024 * MIB
        got = hashlib.md5()
        for chunk in s3.get_object(Bucket=bucket, Key="huge.bin")["Body"].iter_chunks(4 * MIB):
            got.update(chunk)
        assert got.hexdigest() == digest.hexdigest()
    finally:
        s3.delete_object(Bucket=bucket, Key="huge.bin")  # moto keeps objects for the whole session
    assert peak_kib < 300 * 1024, f"peak RSS {peak_kib} KiB"


def test_failed_upload_reports_error_and_keeps_data(s3, bucket, mount, tmp_path):
    """close() fails when S3 refuses the upload, and the bytes land in CACHE_DIR/lost+found."""
    mnt = mount(bucket, "--retries", "1", "--timeout", "5")
    small, big = randbytes(14, 5000), randbytes(15, 2 * SINGLE_PUT_LIMIT + 5)
    kept_dir = tmp_path / "xdg/s3fuse/lost+found"
    fds = [os.open(mnt / name, os.O_CREAT | os.O_WRONLY, 0o644) for name in ("small.txt", "big.bin")]
    errors = []
    try:
        os.write(fds[0], small)
        # empty but for the attribute index the first create in the root made: nothing written has been saved yet
        for key in keys_of(s3, bucket, internal=True):
            s3.delete_object(Bucket=bucket, Key=key)
        s3.delete_bucket(Bucket=bucket)
        for off in range(0, len(big), MIB):  # streamed parts fail in the background
            os.write(fds[1], big[off : off + MIB])
    finally:
        for fd in fds:
            try:
                os.close(fd)  # the descriptor is gone even when close() fails
            except OSError as exc:
                errors.append(exc.errno)
        # The kernel sends RELEASE after close() returns; the last try and the move to
        # lost+found happen then, and must still meet a missing bucket.
        wait_until(lambda: kept_dir.is_dir() and len(os.listdir(kept_dir)) >= 2, 30)
        s3.create_bucket(Bucket=bucket)
    assert len(errors) == 2 and set(errors) <= {errno.EIO, errno.ENOENT}, errors
    kept = {p.name: p.read_bytes() for p in kept_dir.iterdir()}
    assert sorted(data for data in kept.values()) == sorted([small, big])
    assert any(name.endswith("-small.txt") for name in kept) and any(name.endswith("-big.bin") for name in kept)
    log = mount.log_text(mnt)
    for name in ("small.txt", "big.bin"):
        assert f"could not save {name!r} to S3" in log and "its data is kept at" in log
    assert keys_of(s3, bucket) == {}


def test_chmod_keeps_headers_it_did_not_change(s3, bucket, mount):
    """chmod of a file whose headers were never read keeps another tool's mtime, owner and metadata."""
    stored = {"mtime": "1600000000.5", "uid": "1234", "gid": "4321", "custom": "kept"}
    s3.put_object(Bucket=bucket, Key="f.txt", Body=b"data\n", Metadata=stored, ContentType="text/x-custom")
    mnt = mount(bucket)
    os.chmod(mnt / "f.txt", 0o600)
    head = s3.head_object(Bucket=bucket, Key="f.txt")
    assert head["Metadata"] == {**stored, "mode": str(0o100600)}
    assert head["ContentType"] == "text/x-custom"
    st = os.stat(mnt / "f.txt")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 1234, 4321)
    # (st_mtime stays what the kernel first saw: with the writeback cache it keeps its own)


def test_conflict_overwrite_is_the_default_with_a_warning(s3, bucket, mount):
    """The object changed in S3 after open: a save that needs none of its bytes overwrites it."""
    s3.put_object(Bucket=bucket, Key="c.txt", Body=b"version 1\n")
    mnt = mount(bucket)
    with open(mnt / "c.txt", "wb") as f:  # O_TRUNC: the save needs nothing of the old object
        s3.put_object(Bucket=bucket, Key="c.txt", Body=b"changed elsewhere\n")
        f.write(b"mine\n")
    assert body_of(s3, bucket, "c.txt") == b"mine\n"
    assert "'c.txt' changed in S3 since it was opened here; overwriting it" in mount.log_text(mnt)


def test_conflict_fail_keeps_s3_and_the_local_copy(s3, bucket, mount, tmp_path):
    s3.put_object(Bucket=bucket, Key="c.txt", Body=b"version 1\n")
    mnt = mount(bucket, "--on-conflict", "fail")
    fd = os.open(mnt / "c.txt", os.O_WRONLY | os.O_TRUNC)
    s3.put_object(Bucket=bucket, Key="c.txt", Body=b"changed elsewhere\n")
    os.write(fd, b"mine\n")
    with pytest.raises(OSError) as err:
        os.close(fd)
    assert err.value.errno == errno.ESTALE
    assert body_of(s3, bucket, "c.txt") == b"changed elsewhere\n"
    kept_dir = tmp_path / "xdg/s3fuse/lost+found"
    assert wait_until(lambda: kept_dir.is_dir() and any(kept_dir.iterdir()), 30)  # at release
    assert [p.read_bytes() for p in kept_dir.iterdir()] == [b"mine\n"]
    assert "its data is kept at" in mount.log_text(mnt)


def test_conflict_when_unchanged_bytes_are_gone_always_fails(s3, bucket, mount):
    """A partial overwrite needs the rest of the object as it was: if it changed, ESTALE."""
    s3.put_object(Bucket=bucket, Key="p.bin", Body=b"a" * 8192)
    mnt = mount(bucket)  # --on-conflict overwrite
    fd = os.open(mnt / "p.bin", os.O_WRONLY)
    try:
        s3.put_object(Bucket=bucket, Key="p.bin", Body=b"b" * 8192)
        os.pwrite(fd, b"c" * 4096, 0)  # a whole page: the kernel reads nothing first
    finally:
        with pytest.raises(OSError) as err:
            os.close(fd)
    assert err.value.errno == errno.ESTALE
    assert body_of(s3, bucket, "p.bin") == b"b" * 8192


def test_sigterm_saves_files_still_open(s3, bucket, mount):
    """Unmounting by signal first collects the kernel's cached writes and saves them."""
    mnt = mount(bucket)
    daemon = mount.get(mnt)
    data = randbytes(18, 300_000)
    fd = os.open(mnt / "open.bin", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, data)  # still in the kernel's page cache (writeback cache)
    daemon.proc.terminate()
    try:
        assert daemon.proc.wait(30) == 0
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    daemon.checked = True
    assert body_of(s3, bucket, "open.bin") == data


def test_unlinked_open_file_keeps_its_saved_bytes(s3, bucket, mount):
    """A file saved to S3 and then removed while open still reads whole through its handle:
    the bytes only S3 held are copied to the local spill file before DeleteObject."""
    mnt = mount(bucket, "--block-size", "1M")
    data = os.urandom(3 * 1024 * 1024 + 123)
    fd = os.open(mnt / "big.bin", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
        os.pwrite(fd, b"HEAD", 0)  # a change of its own, in the spill file
        os.unlink(mnt / "big.bin")
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # read from the daemon, not the page cache
        assert os.pread(fd, len(data) + 10, 0) == b"HEAD" + data[4:]
        os.ftruncate(fd, 2 * 1024 * 1024)
        assert os.fstat(fd).st_size == 2 * 1024 * 1024
        assert os.pread(fd, 100, 2 * 1024 * 1024 - 50) == data[2 * 1024 * 1024 - 50 : 2 * 1024 * 1024]
    finally:
        os.close(fd)
    assert keys_of(s3, bucket) == {}


def test_unlinked_file_open_for_reading_keeps_its_attributes(s3, bucket, mount):
    """fstat of a file removed while open for reading, past the attribute TTL: the file's
    own attributes, as a local file system keeps them, not ENOENT nor those of a new
    object that took its name."""
    s3.put_object(Bucket=bucket, Key="log.txt", Body=b"old contents\n")
    mnt = mount(bucket, "--attr-ttl", "1")
    with open(mnt / "log.txt", "rb") as f:
        # Read before the unlink: a file open only for reading keeps only the bytes already
        # cached (docs/semantics.md, unlink); this test is about its attributes.
        assert f.read() == b"old contents\n"
        os.unlink(mnt / "log.txt")
        time.sleep(1.2)  # past the TTL: fstat makes the kernel ask the daemon again
        assert os.fstat(f.fileno()).st_size == len(b"old contents\n")
        (mnt / "log.txt").write_bytes(b"a new file under the old name, longer\n")
        time.sleep(1.2)
        assert os.fstat(f.fileno()).st_size == len(b"old contents\n")
        f.seek(0)
        assert f.read() == b"old contents\n"
    assert (mnt / "log.txt").read_bytes() == b"a new file under the old name, longer\n"
    mount.check(mnt)


def test_unlinked_open_file_still_truncates(s3, bucket, mount):
    """An open file keeps working after unlink, truncate included; nothing reaches S3."""
    mnt = mount(bucket)
    fd = os.open(mnt / "tmp.bin", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.write(fd, b"0123456789")
        os.fsync(fd)
        os.unlink(mnt / "tmp.bin")
        os.ftruncate(fd, 4)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # read from the daemon, not the page cache
        assert os.pread(fd, 100, 0) == b"0123"
        assert os.fstat(fd).st_size == 4
    finally:
        os.close(fd)
    assert keys_of(s3, bucket) == {}
