"""Extended attributes: what S3 knows about an object or the bucket, as xattr names.

Owns the xattr namespaces of the mount:

- ``user.<name>`` is the object's user metadata ``x-amz-meta-<name>`` (the POSIX
  attributes s3fuse keeps there, mode/uid/gid/mtime, are left to chmod and friends);
- ``s3.*`` names are object facts and settings: ACL, tags, ETag, version, storage
  class, restore status, a presigned URL and a .torrent; on the mount root, the
  bucket's ACL, tags and location.

Changes to headers (user metadata, content type, storage class) go through the
write-back path, so they are folded into a pending upload or saved as one copy of
the object onto itself. Values are cached for a second: getfattr asks twice (size,
then value), which must not cost two requests.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from cachetools import LRUCache, TTLCache

from .errors import FsError, S3Error
from .inodes import Node
from .metadata import META_GID, META_MODE, META_MTIME, META_UID
from .names import file_key
from .options import Config
from .s3client import S3Client
from .torrent import TorrentBuilder, is_torrent
from .write.upload import HeaderChanges, ObjectHeaders

log = logging.getLogger(__name__)

USER = "user."
POSIX_METADATA = {META_MODE, META_UID, META_GID, META_MTIME}
CANNED_ACLS = {
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
    "log-delivery-write",
}
# Listed for every object; s3.restore only while the object has a restore status.
OBJECT_NAMES = (
    "s3.acl",
    "s3.tags",
    "s3.etag",
    "s3.version_id",
    "s3.last_modified",
    "s3.content_type",
    "s3.storage_class",
    "s3.presigned_url",
    "s3.torrent",
)
BUCKET_NAMES = ("s3.acl", "s3.tags", "s3.location")
# Whether a file's bytes are safe in S3 (clean, dirty, uploading, failed: why): from WriteBack, no request.
UPLOAD_STATE = "s3.upload_state"
TORRENT_CHUNK = 8 << 20
HEAD_CACHE_SECONDS = 1.0

ChangeHeaders = Callable[[Node, HeaderChanges], Awaitable[None]]
PendingHeaders = Callable[[Node], HeaderChanges | None]
UploadState = Callable[[Node], str]


NAMESPACES = (USER.encode(), b"s3.")


def is_s3fuse_name(name: bytes) -> bool:
    """Names s3fuse has values for; others (security.*, trusted.*, system.*) are not
    supported: EOPNOTSUPP, before anything is looked up."""
    return name.startswith(NAMESPACES)


def invalid(name: str, why: str) -> FsError:
    log.warning("xattr %s: %s", name, why)
    return FsError(errno.EINVAL, "InvalidXattrValue", why)


def no_such_attribute(name: str) -> FsError:
    return FsError(errno.ENODATA, "NoSuchXattr", f"no attribute {name}")


def to_json(value: Any) -> bytes:
    return json.dumps(value, indent=2, default=str).encode() + b"\n"


def parse_json(name: str, value: bytes, kind: type) -> Any:
    try:
        parsed = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid(name, f"not JSON: {exc}") from None
    if not isinstance(parsed, kind):
        raise invalid(name, f"expected a JSON {kind.__name__}")
    return parsed


def acl_params(name: str, value: bytes) -> dict[str, Any]:
    """A canned ACL name or an AccessControlPolicy JSON document, as Put*Acl parameters."""
    text = value.decode(errors="replace").strip()
    if text in CANNED_ACLS:
        return {"ACL": text}
    policy = parse_json(name, value, dict)
    if "Grants" not in policy:
        raise invalid(name, f"neither a canned ACL ({', '.join(sorted(CANNED_ACLS))}) nor a policy with Grants")
    return {"AccessControlPolicy": policy}


def tags_params(name: str, value: bytes) -> dict[str, Any]:
    tags = parse_json(name, value, dict)
    if not all(isinstance(v, str) for v in tags.values()):
        raise invalid(name, 'tag values must be strings: {"key": "value", ...}')
    return {"Tagging": {"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]}}


def tags_of(resp: dict[str, Any]) -> bytes:
    return to_json({tag["Key"]: tag["Value"] for tag in resp.get("TagSet", [])})


def text(name: str, value: bytes) -> str:
    try:
        decoded = value.decode().strip()
    except UnicodeDecodeError:
        raise invalid(name, "not UTF-8 text") from None
    if not decoded:
        raise invalid(name, "empty value")
    if not decoded.isascii():  # botocore refuses it: S3 sends metadata as HTTP headers
        raise invalid(name, "S3 keeps only ASCII text here")
    return decoded


class Xattrs:
    """getxattr/setxattr/listxattr/removexattr for files and the mount root."""

    def __init__(
        self,
        s3: S3Client,
        opts: Config,
        change_headers: ChangeHeaders,
        pending: PendingHeaders,
        upload_state: UploadState,
    ) -> None:
        self.s3 = s3
        self.opts = opts
        self.change_headers = change_headers
        self.pending = pending  # headers set on a file open for writing, not uploaded yet
        self.upload_state = upload_state  # local, and changing: never cached
        # by key and ETag: a name renamed onto, or written anew, has another object
        self._heads: TTLCache[tuple[str, str | None], dict[str, Any]] = TTLCache(maxsize=256, ttl=HEAD_CACHE_SECONDS)
        self._values: TTLCache[tuple[str, str | None, str], bytes] = TTLCache(maxsize=256, ttl=HEAD_CACHE_SECONDS)
        self._torrents: LRUCache[tuple[str, str], bytes] = LRUCache(maxsize=32)

    def _key(self, node: Node) -> str:
        return file_key(self.opts.mount.prefix, node.path)

    def _forget(self, key: str) -> None:
        for cache in (self._heads, self._values):
            for cached in [k for k in cache if k[0] == key]:
                cache.pop(cached, None)

    async def _head(self, key: str, etag: str | None) -> dict[str, Any]:
        head = self._heads.get((key, etag))
        if head is None:
            try:
                head = await self.s3.call("head_object", Key=key)
            except FsError as exc:
                if exc.errno == errno.ENOENT:  # not in S3 yet (still being written)
                    raise S3Error(errno.ENODATA, exc.code, f"{key!r} is not in S3 yet") from None
                raise
            self._heads[(key, etag)] = head
        return head

    # ---- listing

    async def names(self, node: Node, is_root: bool) -> list[str]:
        if is_root:
            return list(BUCKET_NAMES)
        if node.info.is_dir:
            return []
        try:
            head = await self._head(self._key(node), node.info.etag)
        except FsError as exc:
            if exc.errno != errno.ENODATA:
                raise
            return [USER + name for name in self._metadata(node, {})] + [UPLOAD_STATE]
        metadata = self._metadata(node, head)
        user = [USER + name for name in metadata if name not in POSIX_METADATA]
        restore = ["s3.restore"] if head.get("Restore") else []
        return user + list(OBJECT_NAMES) + restore + [UPLOAD_STATE]

    def _metadata(self, node: Node, head: dict[str, Any]) -> dict[str, str]:
        """The object's user metadata as its next upload will have it."""
        pending = self.pending(node)
        if pending is None:
            return head.get("Metadata", {})
        return dict(pending.applied_to(ObjectHeaders("", head.get("Metadata", {}))).metadata)

    # ---- reading

    async def get(self, node: Node, name: str, is_root: bool) -> bytes:
        if name == UPLOAD_STATE and not is_root and not node.info.is_dir:
            return self.upload_state(node).encode()
        key = "" if is_root else self._key(node)
        cache_key = (key, node.info.etag, name)  # a new version of the object has new values
        cached = self._values.get(cache_key)
        if cached is None:
            cached = await (self._bucket_get(name) if is_root else self._object_get(node, key, name))
            self._values[cache_key] = cached
        return cached

    async def _bucket_get(self, name: str) -> bytes:
        if name == "s3.acl":
            resp = await self.s3.call("get_bucket_acl")
            return to_json({"Owner": resp.get("Owner"), "Grants": resp.get("Grants", [])})
        if name == "s3.tags":
            try:
                return tags_of(await self.s3.call("get_bucket_tagging"))
            except FsError as exc:
                if exc.code in ("NoSuchTagSet", "NoSuchTagSetError"):
                    return to_json({})
                raise
        if name == "s3.location":
            location = (await self.s3.call("get_bucket_location")).get("LocationConstraint")
            return (location or "us-east-1").encode()
        raise no_such_attribute(name)

    async def _object_get(self, node: Node, key: str, name: str) -> bytes:
        if node.info.is_dir:
            raise no_such_attribute(name)
        if name.startswith(USER):
            meta_name = name[len(USER) :].lower()
            pending = self.pending(node)
            if pending is not None and meta_name in pending.metadata:
                value = pending.metadata[meta_name]
            else:
                value = (await self._head(key, node.info.etag)).get("Metadata", {}).get(meta_name)
            if value is None or meta_name in POSIX_METADATA:
                raise no_such_attribute(name)
            return value.encode()
        if name == "s3.acl":
            resp = await self.s3.call("get_object_acl", Key=key)
            return to_json({"Owner": resp.get("Owner"), "Grants": resp.get("Grants", [])})
        if name == "s3.tags":
            return tags_of(await self.s3.call("get_object_tagging", Key=key))
        if name == "s3.presigned_url":
            url = self.s3.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.s3.bucket, "Key": key},
                ExpiresIn=int(self.opts.mount.presign_expiry),
            )
            return url.encode()
        if name == "s3.torrent":
            return await self._torrent(key, node.info.etag)
        head = await self._head(key, node.info.etag)
        facts = {
            "s3.etag": head.get("ETag"),
            "s3.version_id": head.get("VersionId") or "null",
            "s3.last_modified": head["LastModified"].isoformat() if head.get("LastModified") else None,
            "s3.content_type": head.get("ContentType"),
            "s3.storage_class": head.get("StorageClass") or "STANDARD",
            "s3.restore": head.get("Restore"),
        }
        if facts.get(name) is None:
            raise no_such_attribute(name)
        return str(facts[name]).encode()

    async def _torrent(self, key: str, etag: str | None) -> bytes:
        """The server's .torrent for the object if it is one, else one built here."""
        head = await self._head(key, etag)
        cache_key = (key, head.get("ETag", ""))
        torrent = self._torrents.get(cache_key)
        if torrent is not None:
            return torrent
        try:
            params = self.s3.params("get_object_torrent", Key=key)
            served = await self.s3.run(lambda: self.s3.client.get_object_torrent(**params)["Body"].read())
        except FsError as exc:
            log.debug("GetObjectTorrent of %r failed (%s); building the torrent here", key, exc)
            served = b""
        if is_torrent(served, length=int(head.get("ContentLength", 0))):
            torrent = served
        else:
            if served:
                log.info("the server's GetObjectTorrent answer for %r is no torrent; building one here", key)
            torrent = await self._build_torrent(key, head)
        self._torrents[cache_key] = torrent
        return torrent

    async def _build_torrent(self, key: str, head: dict[str, Any]) -> bytes:
        size = int(head.get("ContentLength", 0))
        url = self.s3.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.s3.bucket, "Key": key}, ExpiresIn=1
        ).partition("?")[0]  # the object's plain URL, as the web seed
        builder = TorrentBuilder(key.rsplit("/", 1)[-1], size, url)
        for start in range(0, size, TORRENT_CHUNK):
            end = min(start + TORRENT_CHUNK, size)
            _, data = await self.s3.get_bytes(key, Range=f"bytes={start}-{end - 1}", IfMatch=head["ETag"])
            builder.feed(data)
        return builder.finish()

    # ---- changing

    async def set(self, node: Node, name: str, value: bytes, is_root: bool) -> None:
        key = "" if is_root else self._key(node)
        try:
            await (self._bucket_set(name, value) if is_root else self._object_set(node, key, name, value))
        finally:
            self._forget(key)

    async def _bucket_set(self, name: str, value: bytes) -> None:
        if name == "s3.acl":
            await self.s3.call("put_bucket_acl", **acl_params(name, value))
        elif name == "s3.tags":
            await self.s3.call("put_bucket_tagging", **tags_params(name, value))
        elif name in BUCKET_NAMES:
            raise FsError(errno.EPERM, "ReadOnlyXattr", f"{name} cannot be changed")
        else:
            raise self._unsettable(name)

    async def _object_set(self, node: Node, key: str, name: str, value: bytes) -> None:
        if node.info.is_dir:
            raise self._unsettable(name)
        if name.startswith(USER):
            meta_name = name[len(USER) :].lower()
            if not meta_name or meta_name in POSIX_METADATA:
                raise invalid(name, "this metadata name is kept by chmod, chown and touch")
            await self.change_headers(node, HeaderChanges(metadata={meta_name: text(name, value)}))
        elif name == "s3.content_type":
            await self.change_headers(node, HeaderChanges(content_type=text(name, value)))
        elif name == "s3.storage_class":
            await self.change_headers(node, HeaderChanges(storage_class=text(name, value).upper()))
        elif name == "s3.acl":
            await self.s3.call("put_object_acl", Key=key, **acl_params(name, value))
        elif name == "s3.tags":
            await self.s3.call("put_object_tagging", Key=key, **tags_params(name, value))
        elif name == "s3.restore":
            days = text(name, value)
            if not days.isascii() or not days.isdigit() or int(days) < 1:
                raise invalid(name, "the value is a number of days, e.g. 7")
            await self.s3.call("restore_object", Key=key, RestoreRequest={"Days": int(days)})
            log.info("restore of %r for %s days requested", key, days)
        elif name in OBJECT_NAMES or name == UPLOAD_STATE:
            raise FsError(errno.EPERM, "ReadOnlyXattr", f"{name} cannot be changed")
        else:
            raise self._unsettable(name)

    @staticmethod
    def _unsettable(name: str) -> FsError:
        if name.startswith(("s3.", USER)):
            return no_such_attribute(name)
        log.debug("xattr %s refused: S3 keeps only user.* and s3.* attributes", name)
        return FsError(errno.EOPNOTSUPP, "UnsupportedXattr", f"{name}: only user.* and s3.* attributes exist here")

    async def remove(self, node: Node, name: str, is_root: bool) -> None:
        key = "" if is_root else self._key(node)
        try:
            if name == "s3.tags":
                await self.s3.call("delete_bucket_tagging" if is_root else "delete_object_tagging", **self._key_of(key))
            elif name.startswith(USER) and not is_root and not node.info.is_dir:
                meta_name = name[len(USER) :].lower()
                if meta_name in POSIX_METADATA or meta_name not in await self._stored_or_pending(node, key):
                    raise no_such_attribute(name)  # as getxattr: chmod, chown and touch keep those
                await self.change_headers(node, HeaderChanges(metadata={meta_name: None}))
            elif name in OBJECT_NAMES or name in BUCKET_NAMES:
                raise FsError(errno.EPERM, "ReadOnlyXattr", f"{name} cannot be removed")
            else:
                raise no_such_attribute(name)
        finally:
            self._forget(key)

    async def _stored_or_pending(self, node: Node, key: str) -> dict[str, str]:
        try:
            head = await self._head(key, node.info.etag)
        except FsError as exc:
            if exc.errno != errno.ENODATA:
                raise
            head = {}
        return self._metadata(node, head)

    @staticmethod
    def _key_of(key: str) -> dict[str, str]:
        return {"Key": key} if key else {}
