"""All-buckets mode (``s3fuse s3:// MOUNTPOINT``): every bucket of the account is a directory of the root.

Owns the mount root's tree and the table of buckets. The root lists ListBuckets (cached
for --dir-ttl); mkdir there is CreateBucket, rmdir DeleteBucket, and files, bucket
renames and moves between buckets are refused. Each bucket is a whole single-bucket
mount's trees, a ``router.BucketRouter`` made when the bucket is first used, with a
client in the bucket's region (GetBucketLocation). Bucket number i owns the inode
numbers [i << 40, (i + 1) << 40), its root directory first, so ``AllBucketsRouter``
finds every inode's bucket by arithmetic; range 0 is the mount root's. Names in the
root (the bucket directories as entries: lookup, mkdir, rmdir) are the root tree's;
the bucket directory itself and everything in it, its xattrs included, the bucket's.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import pyfuse3
import trio

from .attrindex import INDEX_DIR
from .blockcache import BlockCache
from .diskcache import disk_cache_of
from .errors import FsError
from .inodes import KernelPageCache, Node
from .metadata import EntryInfo
from .mutations import refuse
from .names import invalid_reason
from .options import Config
from .pager import pages
from .router import BucketRouter, no_such_inode
from .s3client import ClientSettings, S3Client, boto_session, make_boto_client, region_of
from .tree import AttrChanges, DirEntries, OpenedFile, Tree, refused
from .write.journal import JournalInUse
from .write.upload import delete_keys

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
    # The bucket directory; its info has CreationDate as mtime, and chmod, chown and touch
    # are kept in memory, as for any directory. The bucket's namespace shares it as its root.
    node: Node
    region: str | None = None  # known without asking when created here
    router: BucketRouter | None = None
    lock: trio.Lock = field(default_factory=trio.Lock)  # one GetBucketLocation, one BucketRouter


class BucketTable:
    """The buckets: by name as ListBuckets last said (and as changed here), by number while in use.

    A bucket that leaves the listing keeps its number until the kernel forgets its
    directory; one that comes back later gets a new number, so no inode is reused.
    """

    def __init__(
        self,
        s3: S3Client,
        settings: ClientSettings,
        opts: Config,
        page_cache: KernelPageCache,
        nursery: trio.Nursery,
    ) -> None:
        """page_cache: the kernel's, of the mount's files; nursery: where the buckets' trees work."""
        self.page_cache = page_cache
        self.nursery = nursery
        self.s3 = s3  # in the mount's region, for ListBuckets, CreateBucket and GetBucketLocation
        self.settings = settings
        self.opts = opts
        # shared: --cache-size bounds the whole mount, --disk-cache-size its disk cache
        self.blocks = BlockCache(opts.cache.cache_size, disk_cache_of(opts, nursery))
        self.by_name: dict[str, Bucket] = {}
        self.by_number: dict[int, Bucket] = {}
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
            if time.monotonic() - self._listed_at < self.opts.cache.dir_ttl:
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
        listed: dict[str, int] = {}
        async for page in pages(self.s3, "list_buckets"):
            for entry in page.get("Buckets", ()):
                name = entry["Name"]
                reason = invalid_reason(name) or ("a '/' character" if "/" in name else None)
                if reason is not None:
                    log.warning("skipping bucket %r: %s cannot be a file name", name, reason)
                    continue
                created = entry.get("CreationDate")
                listed[name] = int(created.timestamp()) * 1_000_000_000 if created else time.time_ns()
        return listed

    def named(self, name: str) -> Bucket | None:
        """The bucket of that name in the listing, else one still in use after it left the listing."""
        found = self.by_name.get(name)
        return found or next((bucket for bucket in self.by_number.values() if bucket.name == name), None)

    def _add(self, name: str, info: EntryInfo) -> Bucket:
        number = next(self._numbers)
        bucket = Bucket(name, number, Node(number << RANGE_BITS, "", info))
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
        if self.by_name.get(bucket.name) is not bucket and bucket.node.nlookup <= 0 and not bucket.lock.locked():
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

    async def router(self, bucket: Bucket) -> BucketRouter:
        """The bucket's trees, made on first use with a client in the bucket's region."""
        with self._retired_if_gone(bucket):
            async with bucket.lock:
                if bucket.router is None:
                    bucket.router = await self._make(bucket)
                return bucket.router

    async def _make(self, bucket: Bucket) -> BucketRouter:
        client = await self._client(bucket.region or await self._region(bucket.name))
        # The bucket's own options: WriteBack keeps its upload registry by bucket_name.
        opts = self.opts.for_bucket(bucket.name)
        s3 = self.s3.for_bucket(bucket.name, client)
        try:
            scoped = self.blocks.scoped(bucket.name)
            return await BucketRouter.make(s3, opts, self.page_cache, scoped, self.nursery, root=bucket.node)
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

    def made(self) -> Iterable[BucketRouter]:
        """The buckets' trees made so far."""
        return [bucket.router for bucket in self.by_number.values() if bucket.router is not None]

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
        router = await self.router(bucket)
        if router.bucket is not None and router.bucket.wb.files:
            raise refuse(errno.ENOTEMPTY, "bucket %r has files open for writing", bucket.name)
        with self._retired_if_gone(bucket):
            try:
                await router.s3.call("delete_bucket")
            except FsError as exc:
                if exc.errno != errno.ENOTEMPTY:
                    raise
                await self._delete_own_keys(router)  # else ENOTEMPTY: the bucket holds files
                await router.s3.call("delete_bucket")
        self._retire(bucket)

    @staticmethod
    async def _delete_own_keys(router: BucketRouter) -> None:
        """A bucket that holds nothing but the mount's own keys (``.s3fuse/``: attribute indexes,
        the probe, zero objects) is empty to its user: those go, so that it can be deleted."""
        await router.ns.index.flush_all()  # nothing written after the listing below
        page = await router.s3.list_page(MaxKeys=1000)
        keys = [obj["Key"] for obj in page.get("Contents", ())]
        if (
            page.get("IsTruncated")
            or page.get("CommonPrefixes")
            or any(not key.startswith(INDEX_DIR + "/") for key in keys)
        ):
            raise refuse(errno.ENOTEMPTY, "bucket %r is not empty", router.s3.bucket)
        await delete_keys(router.s3, keys)


class BucketsListing:
    """readdir of the mount root: the buckets, from a listing at most --dir-ttl old when (re)started."""

    path = ""

    def __init__(self, buckets: BucketTable) -> None:
        self.buckets = buckets
        self._listing: list[Bucket] = []

    async def entry(self, index: int) -> tuple[str, EntryInfo] | None:
        if index == 0:  # opened, or rewound
            self._listing = await self.buckets.listing()
        if index >= len(self._listing):
            return None
        bucket = self._listing[index]
        return bucket.name, bucket.node.info

    def removed_since_listed(self) -> Callable[[str], bool] | None:
        return None


class BucketsTree(Tree):
    """The mount root: a directory of buckets, which mkdir and rmdir create and delete."""

    refusal = errno.EPERM  # files, symlinks and renames: the root holds buckets only

    def __init__(self, buckets: BucketTable) -> None:
        self.buckets = buckets
        self.root = Node(pyfuse3.ROOT_INODE, "", EntryInfo(is_dir=True, mtime_ns=time.time_ns()))
        self.root.nlookup = 1  # never forgotten

    def refuse(self, what: str, node: Node) -> FsError:
        log.warning("refusing %s in the mount root: it holds buckets only", what)
        return super().refuse(what, node)

    async def _find(self, name: str) -> Bucket | None:
        return await self.buckets.find(name)

    async def lookup(self, parent: Node, name: str) -> Node | None:
        bucket = await self._find(name)
        if bucket is None:
            return None
        await self.buckets.router(bucket)  # its region now, so a bucket deleted since the listing is ENOENT
        return bucket.node

    async def setattr(self, node: Node, changes: AttrChanges, opened: OpenedFile | None) -> Node:
        """S3 keeps no attributes of the mount root: they live in memory."""
        if changes.size is not None:
            raise FsError(errno.EISDIR, "IsADirectory", "the mount root is a directory")
        node.info = dataclasses.replace(node.info, **changes.attributes())
        return node

    async def opendir(self, node: Node) -> DirEntries:
        return BucketsListing(self.buckets)

    def entry_node(self, path: str, info: EntryInfo) -> Node:
        bucket = self.buckets.named(path)
        if bucket is None:  # retired since the listing, and forgotten by the kernel
            raise FsError(errno.ENOENT, "NoSuchBucket", f"bucket {path!r} is gone")
        return bucket.node

    async def mkdir(self, parent: Node, name: str, info: EntryInfo) -> Node:
        if await self._find(name) is not None:
            raise FsError(errno.EEXIST, "BucketAlreadyExists", f"bucket {name!r} exists")
        return (await self.buckets.create(name, info)).node

    async def rmdir(self, node: Node) -> None:
        bucket = self.buckets.by_number.get(range_of(node.inode))
        if bucket is None:
            raise FsError(errno.ENOENT, "NoSuchBucket", "the bucket is gone")
        await self.buckets.delete(bucket)

    def refuse_rename_into(self, node: Node) -> FsError:
        # As between two buckets: mv then copies, so 'mv dir /mnt/' creates a bucket named dir.
        return refused(errno.EXDEV, "rename", node.path)

    async def setxattr(self, node: Node, name: str, value: bytes) -> None:
        raise FsError(errno.ENOTSUP, "NotSupported", "the mount root has no attributes")

    async def removexattr(self, node: Node, name: str) -> None:
        await self.getxattr(node, name)  # ENODATA: the mount root has none


class AllBucketsRouter:
    """Routes by inode range: the mount root's tree, else the bucket's own router."""

    def __init__(self, buckets: BucketTable) -> None:
        self.buckets = buckets
        self.root = BucketsTree(buckets)

    def _bucket(self, inode: int) -> Bucket:
        bucket = self.buckets.by_number.get(range_of(inode))
        if bucket is None:
            raise no_such_inode(inode)
        return bucket

    async def route(self, inode: int) -> tuple[Tree, Node]:
        if inode == self.root.root.inode:
            return self.root, self.root.root
        router = await self.buckets.router(self._bucket(inode))
        return await router.route(inode)

    async def child_tree(self, parent: Tree, parent_node: Node, name: str) -> Tree:
        if parent is self.root:
            return self.root
        router = await self.buckets.router(self._bucket(parent_node.inode))
        return await router.child_tree(parent, parent_node, name)

    def forget(self, inodes: list[tuple[int, int]]) -> None:
        inside: dict[Bucket, list[tuple[int, int]]] = {}
        for inode, references in inodes:
            bucket = self.buckets.by_number.get(range_of(inode))
            if bucket is None:
                continue  # the mount root, which is never forgotten
            if inode == bucket.node.inode:
                bucket.node.nlookup -= references
                self.buckets.release(bucket)
            else:
                inside.setdefault(bucket, []).append((inode, references))
        for bucket, counts in inside.items():
            if bucket.router is not None:
                bucket.router.forget(counts)

    async def shutdown(self) -> None:
        """Every file still open for writing, in every bucket, is saved or kept locally."""
        for router in self.buckets.made():
            await router.shutdown()
