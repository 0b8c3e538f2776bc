"""All-buckets mode (``s3fuse s3:// MOUNTPOINT``): every bucket of the account is a directory of the root.

Owns the mount root and the table of buckets. The root lists ListBuckets (cached for
--dir-ttl); mkdir there is CreateBucket, rmdir DeleteBucket, and files, bucket renames
and moves between buckets are refused. Each bucket is a whole single-bucket tree, an
``S3Operations`` made when the bucket is first used, with a client in the bucket's
region (GetBucketLocation). Bucket number i owns the inode and handle numbers
[i << 40, (i + 1) << 40), its root directory first, so every request reaches its bucket
by arithmetic; range 0 is the mount root's. The router answers for the root and for the
bucket directories themselves (their attributes and the kernel's references to them);
everything inside a bucket, its xattrs included, is that bucket's ``S3Operations``.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import logging
import stat
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from typing import Any, NoReturn

import pyfuse3
import trio

from .blockcache import BlockCache
from .errors import FsError
from .metadata import EntryInfo
from .metrics import METRICS, STATS_XATTR
from .mutations import new_entry, refuse
from .names import NAME_MAX, decode_name, invalid_reason
from .operations import PREFERRED_IO_SIZE, S3Operations, errno_of, guard_handlers
from .options import ALL_BUCKETS
from .s3client import ClientSettings, S3Client, boto_session, make_boto_client, region_of
from .write.journal import JournalInUse
from .xattrs import is_s3fuse_name

log = logging.getLogger(__name__)

# 2**40 inodes per bucket (each new object version seen takes one) and 2**24 buckets per mount.
RANGE_BITS = 40
ROOT_RANGE = 0


def range_of(number: int) -> int:
    """The bucket number an inode or handle belongs to (0: the mount root)."""
    return number >> RANGE_BITS


@dataclass(eq=False)
class Bucket:
    """One bucket directory: its attributes, the kernel's references to it, and its tree once used."""

    name: str
    number: int
    info: EntryInfo  # CreationDate as mtime; chmod, chown and touch are kept in memory, as for any directory
    region: str | None = None  # known without asking when created here
    nlookup: int = 0  # the kernel's references to the bucket directory
    ops: S3Operations | None = None
    lock: trio.Lock = field(default_factory=trio.Lock)  # one GetBucketLocation, one S3Operations

    @property
    def root_inode(self) -> int:
        return self.number << RANGE_BITS


class BucketTable:
    """The buckets: by name as ListBuckets last said (and as changed here), by number while in use.

    A bucket that leaves the listing keeps its number until the kernel forgets its
    directory; one that comes back later gets a new number, so no inode is reused.
    """

    def __init__(self, s3: S3Client, settings: ClientSettings, opts: argparse.Namespace) -> None:
        self.s3 = s3  # in the mount's region, for ListBuckets, CreateBucket and GetBucketLocation
        self.settings = settings
        self.opts = opts
        self.blocks = BlockCache(opts.cache_size)  # shared: --cache-size bounds the whole mount
        self.by_name: dict[str, Bucket] = {}
        self.by_number: dict[int, Bucket] = {}
        self.nursery: trio.Nursery | None = None
        self._numbers = count(ROOT_RANGE + 1)
        self._listed_at = float("-inf")
        self._listing_lock = trio.Lock()  # one ListBuckets at a time; waiters use its answer
        self._clients: dict[str, Any] = {s3.client.meta.region_name: s3.client}
        self._clients_lock = trio.Lock()
        self._session: Any = None  # for the other regions' clients, made one at a time under the lock

    # ---- the listing

    async def listing(self) -> list[Bucket]:
        """Every bucket, by name, from a listing at most --dir-ttl old."""
        await self._refresh()
        return sorted(self.by_name.values(), key=lambda bucket: bucket.name)

    async def find(self, name: str) -> Bucket | None:
        await self._refresh()
        return self.by_name.get(name)

    async def _refresh(self) -> None:
        async with self._listing_lock:
            if time.monotonic() - self._listed_at < self.opts.dir_ttl:
                return
            started = time.monotonic()
            listed = await self._list_buckets()
            self._listed_at = started
            for name in [name for name in self.by_name if name not in listed]:
                self._retire(self.by_name[name])
            for name, created_ns in listed.items():
                if name not in self.by_name:
                    self._add(name, EntryInfo(is_dir=True, mtime_ns=created_ns))

    async def _list_buckets(self) -> dict[str, int]:
        """Bucket name -> creation time (ns), for the names that can be file names."""
        client = self.s3.client
        listed: dict[str, int] = {}
        params: dict[str, str] = {}
        while True:
            page = await self.s3.run(functools.partial(client.list_buckets, **params))
            for entry in page.get("Buckets", ()):
                name = entry["Name"]
                reason = invalid_reason(name) or ("a '/' character" if "/" in name else None)
                if reason is not None:
                    log.warning("skipping bucket %r: %s cannot be a file name", name, reason)
                    continue
                created = entry.get("CreationDate")
                listed[name] = int(created.timestamp()) * 1_000_000_000 if created else time.time_ns()
            if not page.get("ContinuationToken"):
                return listed
            params = {"ContinuationToken": page["ContinuationToken"]}

    def _add(self, name: str, info: EntryInfo) -> Bucket:
        bucket = Bucket(name, next(self._numbers), info)
        self.by_name[name] = bucket
        self.by_number[bucket.number] = bucket
        return bucket

    def _retire(self, bucket: Bucket) -> None:
        """The bucket is gone (deleted here or elsewhere)."""
        if self.by_name.get(bucket.name) is bucket:
            del self.by_name[bucket.name]
        self.release(bucket)

    def release(self, bucket: Bucket) -> None:
        """Free the number of a retired bucket once nothing uses it.

        The kernel holds no inode of a bucket whose directory it forgot, and an
        in-flight first use holds the lock.
        """
        if self.by_name.get(bucket.name) is not bucket and bucket.nlookup <= 0 and not bucket.lock.locked():
            self.by_number.pop(bucket.number, None)

    # ---- each bucket's tree

    @contextmanager
    def _retired_if_gone(self, bucket: Bucket) -> Iterator[None]:
        """S3 says the bucket does not exist (deleted elsewhere): the table learns it too."""
        try:
            yield
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                self._retire(bucket)
            raise

    async def ops(self, bucket: Bucket) -> S3Operations:
        """The bucket's tree, made on first use with a client in the bucket's region."""
        with self._retired_if_gone(bucket):
            async with bucket.lock:
                if bucket.ops is None:
                    bucket.ops = await self._make(bucket)
                return bucket.ops

    async def _make(self, bucket: Bucket) -> S3Operations:
        client = await self._client(bucket.region or await self._region(bucket.name))
        # The bucket's own options: WriteBack keeps its upload registry by bucket_name.
        opts = argparse.Namespace(**{**vars(self.opts), "bucket_name": bucket.name, "prefix": ""})
        s3 = self.s3.for_bucket(bucket.name, client)
        assert self.nursery is not None  # set by the mount loop before requests arrive
        try:
            return await S3Operations.make(s3, opts, self.nursery, bucket.root_inode, self.blocks.scoped(bucket.name))
        except JournalInUse as exc:
            raise FsError(errno.EBUSY, "JournalInUse", str(exc)) from None

    async def _region(self, name: str) -> str | None:
        """GetBucketLocation; None (the mount's region) when S3 will not say."""
        client = self.s3.client
        try:
            answer = await self.s3.run(lambda: client.get_bucket_location(Bucket=name))
        except FsError as exc:
            if exc.errno in (errno.ENOENT, errno.EIO):  # gone, or S3 unreachable: the lookup fails
                raise
            log.info("no region for bucket %r (%s); using %s", name, exc, client.meta.region_name)
            return None
        region = region_of(answer.get("LocationConstraint"))
        log.log(
            logging.DEBUG if region == client.meta.region_name else logging.INFO, "bucket %r is in %s", name, region
        )
        return region

    async def _client(self, region: str | None) -> Any:
        if region is None:
            return self.s3.client
        async with self._clients_lock:
            if region not in self._clients:
                if self._session is None:
                    self._session = await trio.to_thread.run_sync(boto_session, self.settings)
                client = await trio.to_thread.run_sync(make_boto_client, self.settings, region, self._session)
                self._clients[region] = client
            return self._clients[region]

    def made(self) -> Iterable[S3Operations]:
        """The trees made so far."""
        return [bucket.ops for bucket in self.by_number.values() if bucket.ops is not None]

    # ---- creating and deleting buckets

    async def create(self, name: str, info: EntryInfo) -> Bucket:
        """CreateBucket in the mount's region (--region, else the default one)."""
        client = self.s3.client
        region = client.meta.region_name
        # us-east-1 takes no LocationConstraint; every other region requires its own.
        config = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        await self.s3.run(lambda: client.create_bucket(Bucket=name, **config))
        bucket = self._add(name, info)
        bucket.region = region
        return bucket

    async def delete(self, bucket: Bucket) -> None:
        """DeleteBucket; ENOTEMPTY when it holds objects, or files open for writing not yet saved."""
        ops = await self.ops(bucket)
        if ops.wb.files:
            raise refuse(errno.ENOTEMPTY, "bucket %r has files open for writing", bucket.name)
        with self._retired_if_gone(bucket):
            await ops.s3.call("delete_bucket")
        self._retire(bucket)


@guard_handlers
class AllBucketsOperations(pyfuse3.Operations):
    """Routes each request to the mount root, a bucket directory, or the bucket's own S3Operations."""

    supports_dot_lookup = S3Operations.supports_dot_lookup
    enable_writeback_cache = S3Operations.enable_writeback_cache
    # A fixed answer that describes no bucket: the same as a single-bucket mount's.
    statfs = S3Operations.statfs
    init = S3Operations.init

    def __init__(self, s3: S3Client, settings: ClientSettings, opts: argparse.Namespace) -> None:
        super().__init__()
        self.opts = opts
        self.buckets = BucketTable(s3, settings, opts)
        self.mount_time_ns = time.time_ns()
        self.root = EntryInfo(is_dir=True, mtime_ns=self.mount_time_ns)
        self._handles = count(pyfuse3.ROOT_INODE)  # the root's directory handles, in range 0
        self._listings: dict[int, list[Bucket]] = {}
        self.initialized = trio.Event()

    @property
    def nursery(self) -> trio.Nursery | None:
        return self.buckets.nursery

    @nursery.setter
    def nursery(self, nursery: trio.Nursery) -> None:
        """Set by the mount loop before requests arrive; each bucket's tree is made with it."""
        self.buckets.nursery = nursery

    async def shutdown(self) -> None:
        """Before exit: every file still open for writing, in every bucket, is saved or kept locally."""
        for ops in self.buckets.made():
            await ops.shutdown()

    # ---- routing

    def _bucket(self, number: int) -> Bucket:
        bucket = self.buckets.by_number.get(range_of(number))
        if bucket is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return bucket

    async def _ops(self, inode: int) -> S3Operations:
        return await self._tree(self._bucket(inode))

    async def _tree(self, bucket: Bucket) -> S3Operations:
        with errno_of("open bucket", bucket.name):
            return await self.buckets.ops(bucket)

    def _handle_ops(self, fh: int) -> S3Operations:
        """A file or directory handle's tree, which made the handle."""
        bucket = self.buckets.by_number.get(range_of(fh))
        ops = bucket.ops if bucket is not None else None
        if ops is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return ops

    def _attributes(self, inode: int, info: EntryInfo) -> pyfuse3.EntryAttributes:
        """The mount root or a bucket directory, with the mount's defaults for what is not set."""
        opts = self.opts
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.entry_timeout = attr.attr_timeout = opts.attr_ttl
        attr.st_mode = stat.S_IFDIR | stat.S_IMODE(info.mode if info.mode is not None else opts.dir_mode)
        attr.st_nlink = 2
        attr.st_uid = info.uid if info.uid is not None else opts.uid
        attr.st_gid = info.gid if info.gid is not None else opts.gid
        attr.st_blksize = PREFERRED_IO_SIZE
        mtime = info.mtime_ns if info.mtime_ns is not None else self.mount_time_ns
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = mtime
        return attr

    async def _find(self, name: bytes) -> Bucket | None:
        text = decode_name(name)
        if text is None:
            return None
        with errno_of("list buckets", ALL_BUCKETS):
            return await self.buckets.find(text)

    async def _existing(self, name: bytes) -> Bucket:
        bucket = await self._find(name)
        if bucket is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return bucket

    @staticmethod
    def _refuse_file(name: bytes) -> NoReturn:
        log.warning("refusing to create %r in the mount root: it holds buckets only", name)
        raise pyfuse3.FUSEError(errno.EPERM)

    # ---- names and attributes

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE:
            return await (await self._ops(parent_inode)).lookup(parent_inode, name, ctx)
        bucket = await self._find(name)
        if bucket is None:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0  # a negative entry the kernel caches for entry_timeout
            negative.entry_timeout = self.opts.negative_ttl
            return negative
        await self._tree(bucket)  # its region now, so a bucket deleted since the listing is ENOENT
        bucket.nlookup += 1
        return self._attributes(bucket.root_inode, bucket.info)

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        inside: dict[Bucket, list[tuple[int, int]]] = {}
        for inode, nlookup in inode_list:
            bucket = self.buckets.by_number.get(range_of(inode))
            if bucket is None:
                continue  # the mount root, which is never forgotten
            if inode == bucket.root_inode:
                bucket.nlookup -= nlookup
                self.buckets.release(bucket)
            else:
                inside.setdefault(bucket, []).append((inode, nlookup))
        for bucket, inodes in inside.items():
            if bucket.ops is not None:
                await bucket.ops.forget(inodes)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode == pyfuse3.ROOT_INODE:
            return self._attributes(inode, self.root)
        bucket = self._bucket(inode)
        if inode == bucket.root_inode:
            return self._attributes(inode, bucket.info)
        return await (await self._ops(inode)).getattr(inode, ctx)

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        if inode == pyfuse3.ROOT_INODE:
            self.root = self._changed(self.root, attr, fields)
            return self._attributes(inode, self.root)
        bucket = self._bucket(inode)
        if inode == bucket.root_inode:
            bucket.info = self._changed(bucket.info, attr, fields)
            return self._attributes(inode, bucket.info)
        return await (await self._ops(inode)).setattr(inode, attr, fields, fh, ctx)

    @staticmethod
    def _changed(info: EntryInfo, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields) -> EntryInfo:
        """A directory's attributes after a setattr; S3 keeps none of them, so they live in memory."""
        if fields.update_size:
            raise pyfuse3.FUSEError(errno.EISDIR)
        wanted = (
            (fields.update_mode, "mode", stat.S_IMODE(attr.st_mode)),
            (fields.update_uid, "uid", attr.st_uid),
            (fields.update_gid, "gid", attr.st_gid),
            (fields.update_mtime, "mtime_ns", attr.st_mtime_ns),
        )
        return dataclasses.replace(info, **{name: value for update, name, value in wanted if update})

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return True  # default_permissions: the kernel checks modes itself

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        if inode == pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return await (await self._ops(inode)).readlink(inode, ctx)

    # ---- directories

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != pyfuse3.ROOT_INODE:
            return await (await self._ops(inode)).opendir(inode, ctx)
        fh = next(self._handles)
        self._listings[fh] = []
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if range_of(fh) != ROOT_RANGE:
            return await self._handle_ops(fh).readdir(fh, start_id, token)
        if start_id == 0:  # opened, or rewound: a listing at most --dir-ttl old
            with errno_of("list buckets", ALL_BUCKETS):
                self._listings[fh] = await self.buckets.listing()
        listing = self._listings[fh]
        for index in range(start_id, len(listing)):
            bucket = listing[index]
            if not pyfuse3.readdir_reply(
                token, bucket.name.encode(), self._attributes(bucket.root_inode, bucket.info), index + 1
            ):
                return
            bucket.nlookup += 1  # readdirplus: the kernel now holds a reference

    async def releasedir(self, fh: int) -> None:
        if range_of(fh) != ROOT_RANGE:
            return await self._handle_ops(fh).releasedir(fh)
        self._listings.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        if range_of(fh) != ROOT_RANGE:
            await self._handle_ops(fh).fsyncdir(fh, datasync)

    # ---- buckets

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE:
            return await (await self._ops(parent_inode)).mkdir(parent_inode, name, mode, ctx)
        if len(name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        text = decode_name(name)
        if text is None:
            log.warning("refusing bucket name %r: not UTF-8", name)
            raise pyfuse3.FUSEError(errno.EINVAL)
        with errno_of("create bucket", text):
            if await self.buckets.find(text) is not None:
                raise pyfuse3.FUSEError(errno.EEXIST)
            bucket = await self.buckets.create(text, new_entry(stat.S_IFDIR, mode, ctx.uid, ctx.gid))
        bucket.nlookup += 1
        return self._attributes(bucket.root_inode, bucket.info)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if parent_inode != pyfuse3.ROOT_INODE:
            return await (await self._ops(parent_inode)).rmdir(parent_inode, name, ctx)
        bucket = await self._existing(name)
        with errno_of("delete bucket", bucket.name):
            await self.buckets.delete(bucket)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if parent_inode != pyfuse3.ROOT_INODE:
            return await (await self._ops(parent_inode)).unlink(parent_inode, name, ctx)
        await self._existing(name)
        raise pyfuse3.FUSEError(errno.EISDIR)  # the root holds buckets only

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if parent_inode_old == pyfuse3.ROOT_INODE:
            log.warning("rename of bucket %r refused: S3 cannot rename buckets", name_old)
            raise pyfuse3.FUSEError(errno.EPERM)
        if range_of(parent_inode_old) != range_of(parent_inode_new):
            # Another bucket (or the root) is another file system: mv copies, then deletes.
            raise pyfuse3.FUSEError(errno.EXDEV)
        ops = await self._ops(parent_inode_old)
        await ops.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx)

    # ---- files: none in the root

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if parent_inode == pyfuse3.ROOT_INODE:
            self._refuse_file(name)
        return await (await self._ops(parent_inode)).create(parent_inode, name, mode, flags, ctx)

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == pyfuse3.ROOT_INODE:
            self._refuse_file(name)
        return await (await self._ops(parent_inode)).symlink(parent_inode, name, target, ctx)

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == pyfuse3.ROOT_INODE:
            self._refuse_file(name)
        return await (await self._ops(parent_inode)).mknod(parent_inode, name, mode, rdev, ctx)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return await (await self._ops(inode)).link(inode, new_parent_inode, new_name, ctx)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode == pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return await (await self._ops(inode)).open(inode, flags, ctx)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        return await self._handle_ops(fh).read(fh, off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self._handle_ops(fh).write(fh, off, buf)

    async def flush(self, fh: int) -> None:
        await self._handle_ops(fh).flush(fh)

    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._handle_ops(fh).fsync(fh, datasync)

    async def release(self, fh: int) -> None:
        await self._handle_ops(fh).release(fh)

    async def poll(self, inode: int, fh: int, poll_handle: Any, ctx: pyfuse3.RequestContext) -> int:
        return await self._handle_ops(fh).poll(inode, fh, poll_handle, ctx)

    # ---- extended attributes: a bucket's are its tree's (bucket ACL, tags, location on its
    # directory); the mount root has none.

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        # ls -l asks every bucket directory for security.* names: answered here, they do not
        # cost a GetBucketLocation per bucket.
        if self.opts.no_xattr:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # the kernel stops asking, for the whole mount
        if inode == pyfuse3.ROOT_INODE and name == STATS_XATTR:
            return METRICS.snapshot(ctx.pid).encode()
        if inode == pyfuse3.ROOT_INODE or not is_s3fuse_name(name):
            raise pyfuse3.FUSEError(errno.ENODATA)
        return await (await self._ops(inode)).getxattr(inode, name, ctx)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        if inode == pyfuse3.ROOT_INODE:
            return []
        return await (await self._ops(inode)).listxattr(inode, ctx)

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        if inode == pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        await (await self._ops(inode)).setxattr(inode, name, value, ctx)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if inode == pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENODATA)
        await (await self._ops(inode)).removexattr(inode, name, ctx)
