"""The hidden ``.versions/`` directory: every version of every key, and the bucket as it was at an instant.

Owns the history tree (``Versions``), the time views (``TimeView``), the paging of ListObjectVersions
(``VersionPages``) and the facts behind the version xattrs. All of it is read-only: the FUSE layer answers EROFS
to changes. Paths are mount paths, as in ``inodes.Node.path``; keys outside the mount's prefix are never listed.

The history tree:

- ``.versions/<dir>/`` mirrors the prefixes of the mount (the CommonPrefixes of a delimited ListObjectVersions, so
  a prefix whose keys are all deleted is still there), and every key with versions (current, noncurrent or
  deleted) is a directory ``.versions/<key>/``.
- ``.versions/<key>/`` holds one entry per version, ``<LastModified as YYYYmmddTHHMMSSZ>_<VersionId>`` (VersionId
  ``null`` for an object written while versioning was off or suspended): a read-only file with the version's size
  and bytes, dated LastModified. A delete marker is an empty entry of mode 000 named with the suffix ``.deleted``.
  ``latest`` is a symlink to the current version's entry, unless the key is deleted now.
- A key that is also a prefix (key ``a`` and keys ``a/...``): ``.versions/a/`` holds the versions of ``a`` and
  ``latest``, then the children of ``a/``. Those names belong to the key: while ``a`` has versions, a child of
  ``a/`` named ``latest`` or shaped like a version name is hidden (and logged). Without versions of ``a``, the
  directory is the prefix's alone.
- ``ls`` sorts the names, which start with the time, oldest first. ListObjectVersions dates versions to the
  second, so versions written within one second sort among themselves by VersionId; readdir gives S3's order,
  newest first, and ``latest`` and ``s3.is_latest`` tell the current version.

The time views: ``.versions/@<instant>/`` (ISO 8601 with a time zone, e.g. ``@2026-11-20T10:00:00Z``) is the
mount as it was at that instant: each key as its newest version with LastModified <= instant, without the keys
whose version then was a delete marker, and without the directories that then had no keys. Views are reached by
path and never listed; a name that does not parse as an instant is an ordinary name. ``TimeView`` with ``base=""``
is a whole mount at one instant (``--at``). Its objects are regular files: listings carry no headers, so no
symlinks and no POSIX modes.

ListObjectVersions is read a page at a time by KeyMarker and VersionIdMarker (``pager.Pager``), and nothing
holds more than a page and a few entries, whatever the number of keys or versions. The whole histories of keys
with one page of versions at most are cached for the directory TTL, and what lookups and listings find for the
attribute TTL; both caches are bounded like the metadata cache.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import functools
import logging
import re
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

import trio
from cachetools import LRUCache, TTLCache

from .blockcache import BlockCache
from .errors import FsError
from .listing import DirectoryStream
from .metadata import EntryInfo
from .names import at_or_below, dir_prefix, invalid_reason, join, split
from .options import Config, parse_instant
from .pager import Pager
from .reader import ObjectReader
from .s3client import S3Client
from .write.upload import gather

log = logging.getLogger(__name__)

VERSIONS_DIR = ".versions"
LATEST = "latest"
DELETED_SUFFIX = ".deleted"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
VERSION_NAME = re.compile(r"\d{8}T\d{6}Z_.+", re.ASCII | re.DOTALL)
PAGE_SIZE = 1000  # entries per ListObjectVersions page, S3's maximum
LIVE_CHECKS = 8  # directories of one page a time view checks at once
VIEWS = 16  # time views kept inside .versions/, each with its caches
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
# botocore parses <Version> and <DeleteMarker> into two lists; record_kinds keeps their order here.
KINDS_FIELD = "S3fuseDeleteMarkerOrder"


def in_versions_dir(path: str) -> bool:
    return at_or_below(path, VERSIONS_DIR)


def view_instant(name: str) -> datetime.datetime | None:
    """The instant of a time view's name in ``.versions/`` ('@2026-11-20T10:00:00Z'), or None if it is none."""
    return parse_instant(name[1:]) if name.startswith("@") else None


def _owned_by_key(name: str) -> bool:
    """Whether a name in ``.versions/<key>/`` is the key's own (a version entry or ``latest``)."""
    return name == LATEST or VERSION_NAME.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class Version:
    """One version or delete marker of a key, as ListObjectVersions reports it."""

    key: str
    version_id: str  # 'null' for an object written while versioning was off or suspended
    last_modified: datetime.datetime
    size: int = 0
    etag: str | None = None
    is_latest: bool = False
    deleted: bool = False  # a delete marker
    metadata_only: bool | None = None  # same bytes as the next older version; None until that one is known

    @property
    def name(self) -> str:
        """The version's entry name in ``.versions/<key>/``."""
        stamp = self.last_modified.astimezone(datetime.UTC).strftime(STAMP_FORMAT)
        return f"{stamp}_{self.version_id}{DELETED_SUFFIX if self.deleted else ''}"

    def info(self) -> EntryInfo:
        """A read-only regular file of the version's size, dated LastModified; mode 000 for a delete marker."""
        modified = int(self.last_modified.timestamp()) * 1_000_000_000
        mode = stat.S_IFREG | (0 if self.deleted else 0o444)
        return EntryInfo(
            is_dir=False, size=self.size, mtime_ns=modified, etag=self.etag, mode=mode, last_modified_ns=modified
        )

    def same_bytes_as(self, older: Version | None) -> bool:
        """Whether this version changed only metadata (a CopyObject onto itself: chmod, touch, setxattr)."""
        if self.deleted or self.etag is None or older is None or older.deleted:
            return False
        return (self.etag, self.size) == (older.etag, older.size)


@dataclass(frozen=True, slots=True)
class Entry:
    """What is at a path of a version tree: its attributes, and the version it reads (``latest``: points at)."""

    info: EntryInfo
    version: Version | None = None


def _directory() -> Entry:
    return Entry(EntryInfo(is_dir=True, mode=stat.S_IFDIR | 0o555))


def _file(version: Version) -> Entry:
    return Entry(version.info(), version)


def _latest(version: Version) -> Entry:
    link = dataclasses.replace(version.info(), size=len(version.name.encode()), mode=stat.S_IFLNK | 0o777)
    return Entry(link, version)


def version_xattrs(version: Version) -> dict[str, bytes]:
    """The xattrs of a version entry: ``s3.version_id``, ``s3.etag`` (not for a delete marker), ``s3.is_latest``
    and ``s3.metadata_only`` (1 when its bytes are the next older version's, by ETag and size; else 0)."""
    values = {
        "s3.version_id": version.version_id,
        "s3.etag": version.etag,
        "s3.is_latest": str(int(version.is_latest)),
        "s3.metadata_only": str(int(bool(version.metadata_only))),
    }
    return {name: value.encode() for name, value in values.items() if value is not None}


def version_reader(
    s3: S3Client,
    opts: Config,
    version: Version,
    blocks: BlockCache,
    nursery: trio.Nursery,
    on_changed: Callable[[], None] = lambda: None,
) -> ObjectReader:
    """A reader of one version: ranged GetObject with its VersionId, through the block cache."""
    return ObjectReader(
        s3,
        blocks,
        nursery,
        version.key,
        version.size,
        version.etag,
        opts.cache.block_size,
        opts.cache.read_ahead,
        on_changed,
        version_id=version.version_id,
    )


# ---- ListObjectVersions


def record_kinds(http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
    """botocore's after-call handler of ListObjectVersions: keeps which entries of the answer are delete markers.

    botocore parses versions and delete markers into two lists, but S3 interleaves them, newest first within a
    key, and within one second of LastModified that order is all there is to tell which came first.
    """
    if http_response.status_code != 200:
        return
    try:
        root = ElementTree.fromstring(http_response.content)
    except ElementTree.ParseError:
        return
    tags = [child.tag.rpartition("}")[2] for child in root]
    parsed[KINDS_FIELD] = [tag == "DeleteMarker" for tag in tags if tag in ("Version", "DeleteMarker")]


def _version(item: dict[str, Any], deleted: bool) -> Version:
    return Version(
        key=item["Key"],
        version_id=str(item.get("VersionId") or "null"),
        last_modified=item.get("LastModified") or EPOCH,
        size=int(item.get("Size", 0)),
        etag=item.get("ETag"),
        is_latest=bool(item.get("IsLatest")),
        deleted=deleted,
    )


def ordered_versions(page: dict[str, Any]) -> list[Version]:
    """A ListObjectVersions page's versions and delete markers in S3's order: by key, newest first.

    Sorted by LastModified; within one second, the current version first, then the answer's order (moto, for
    one, sends every delete marker after every version, and dates to the second).
    """
    versions, markers = page.get("Versions", []), page.get("DeleteMarkers", [])
    kinds = page.get(KINDS_FIELD)
    if kinds is None or len(kinds) != len(versions) + len(markers) or sum(kinds) != len(markers):
        kinds = [False] * len(versions) + [True] * len(markers)
    sources = {False: iter(versions), True: iter(markers)}
    found = [_version(next(sources[deleted]), deleted) for deleted in kinds]
    found.sort(key=lambda v: (v.key, -v.last_modified.timestamp(), not v.is_latest))  # stable: ties keep order
    return found


class VersionPages:
    """ListObjectVersions under one prefix, a page at a time (by KeyMarker and VersionIdMarker, through a
    ``pager.Pager``): the markers are kept until a page has arrived, so a failed page is asked again by the
    next call instead of ending the listing early.
    """

    def __init__(
        self,
        s3: S3Client,
        prefix: str,
        page_size: int,
        delimiter: str | None = None,
        after: Version | None = None,
    ) -> None:
        params: dict[str, Any] = {"Prefix": prefix, "MaxKeys": page_size}
        if delimiter:
            params["Delimiter"] = delimiter
        if after is not None:
            params.update(KeyMarker=after.key, VersionIdMarker=after.version_id)
        self._pages = Pager(s3, "list_object_versions", params)

    @property
    def done(self) -> bool:
        return self._pages.done

    async def next_page(self) -> tuple[list[Version], list[str]]:
        """The next page's versions, in S3's order, and its common prefixes; nothing once done."""
        if self.done:
            return [], []
        page = await self._pages.next_page()
        return ordered_versions(page), [p["Prefix"] for p in page.get("CommonPrefixes", ())]


async def older_version(s3: S3Client, version: Version) -> Version | None:
    """The version of the same key that came just before ``version``: one ListObjectVersions of one entry."""
    versions, _ = await VersionPages(s3, version.key, 1, after=version).next_page()
    return next((older for older in versions if older.key == version.key), None)


class KeyHistory:
    """The versions of one key, newest first, each knowing whether it changed only metadata.

    Pages through Prefix=key and stops at the first other key (all of them sort after it). The last version of
    a page waits for the next page, which holds the version it is compared with.
    """

    def __init__(self, s3: S3Client, key: str, page_size: int) -> None:
        self.key = key
        self._pages = VersionPages(s3, key, page_size)
        self._held: list[Version] = []
        self.done = False

    async def next_batch(self) -> list[Version]:
        if self.done:
            return []
        versions, _ = await self._pages.next_page()
        mine = self._held + [v for v in versions if v.key == self.key]
        self.done = self._pages.done or any(v.key != self.key for v in versions)
        self._held = [] if self.done else mine[-1:]
        compared = [
            dataclasses.replace(v, metadata_only=v.same_bytes_as(older))
            for v, older in zip(mine, [*mine[1:], None], strict=False)
        ]
        return compared if self.done else compared[:-1]


class ChildNames:
    """The directory names under a prefix of the history tree: each key with versions, and each common prefix.

    A delimited ListObjectVersions names a key once per version, and key 'x' and prefix 'x/' are one directory
    'x': each name is given once. Only the names given since the listing last passed 'name/' are remembered
    (the keys between 'x' and 'x/', like 'x.txt', are few).
    """

    def __init__(self, s3: S3Client, prefix: str, page_size: int) -> None:
        self.prefix = prefix
        self._pages = VersionPages(s3, prefix, page_size, delimiter="/")
        self._recent: set[str] = set()

    @property
    def done(self) -> bool:
        return self._pages.done

    async def next_batch(self) -> list[str]:
        versions, prefixes = await self._pages.next_page()
        out = []
        for full in sorted({v.key for v in versions}.union(prefixes)):
            self._recent = {name for name in self._recent if self.prefix + name + "/" >= full}
            name = full[len(self.prefix) :].removesuffix("/")
            if not name or name in self._recent:
                continue  # the directory's own marker, or a name already given
            reason = invalid_reason(name)
            if reason is not None:
                log.warning("skipping key %r in %s/: %s cannot be a file name", full, VERSIONS_DIR, reason)
                continue
            self._recent.add(name)
            out.append(name)
        return out


class _AtInstant:
    """Picks from versions in S3's order (by key, newest first) each key's version current at an instant."""

    def __init__(self, instant: datetime.datetime) -> None:
        self.instant = instant
        self._key: str | None = None
        self.decided = False  # the current key's version at the instant is known

    def live(self, versions: Sequence[Version]) -> list[Version]:
        """The keys that existed at the instant, as their versions then (a key's versions may span pages)."""
        out = []
        for version in versions:
            if version.key != self._key:
                self._key, self.decided = version.key, False
            if not self.decided and version.last_modified <= self.instant:
                self.decided = True
                if not version.deleted:
                    out.append(version)
        return out


# ---- directories


class VersionListing:
    """One open directory of a version tree: entries by index, produced a batch at a time.

    The entries before the index the kernel asks for were accepted and are dropped, so memory is about one
    batch; seeking back (rewinddir) starts again. Every entry given out is remembered for lookups.
    """

    def __init__(self, tree: _Tree, rel: str, path: str) -> None:
        self.tree = tree
        self.rel = rel  # the path within the tree
        self.path = path  # the mount path, to which the adapter joins the names
        self._start()

    def _start(self) -> None:
        self._window: list[tuple[str, EntryInfo]] = []
        self._base = 0  # the index of _window[0]

    async def _next_batch(self) -> list[tuple[str, Entry]] | None:
        """The next entries (maybe none); None at the end."""
        raise NotImplementedError

    async def entry(self, index: int) -> tuple[str, EntryInfo] | None:
        """Entry number ``index`` of the directory, or None past its end."""
        if index < self._base:
            self._start()
        while True:
            accepted = min(index - self._base, len(self._window))
            del self._window[:accepted]
            self._base += accepted
            if self._window:
                return self._window[0]
            batch = await self._next_batch()
            if batch is None:
                return None
            for name, found in batch:
                self.tree.remember(join(self.rel, name), found)
            self._window.extend((name, found.info) for name, found in batch)

    def removed_since_listed(self) -> Callable[[str], bool] | None:
        return None  # nothing in an old version is removed


class HistoryDir(VersionListing):
    """readdir of ``.versions/<path>/``: the versions of the key (and ``latest``), then the children of the prefix."""

    tree: Versions

    def _start(self) -> None:
        super()._start()
        tree = self.tree
        self._key = tree.root_prefix + self.rel
        cached = tree.history(self._key) if self.rel else None
        self._ready = list(cached or ())
        self._history = KeyHistory(tree.s3, self._key, tree.page_size) if self.rel and cached is None else None
        self._kept: list[Version] | None = []
        self._newest: Version | None = None
        self._children = ChildNames(tree.s3, dir_prefix(tree.root_prefix, self.rel), tree.page_size)

    async def _next_batch(self) -> list[tuple[str, Entry]] | None:
        if self._ready:
            batch, self._ready = self._ready, []
            return self._versions(batch)
        if self._history is not None and not self._history.done:
            batch = await self._history.next_batch()
            self._kept = self.tree.keep_history(self._key, self._kept, batch, self._history.done)
            return self._versions(batch)
        if self._children.done:
            return None
        return [(name, _directory()) for name in await self._children.next_batch() if self._shown(name)]

    def _versions(self, batch: list[Version]) -> list[tuple[str, Entry]]:
        out = []
        for version in batch:
            if self._newest is None:
                self._newest = version
                if not version.deleted:
                    out.append((LATEST, _latest(version)))
            name = version.name
            if "/" in name or invalid_reason(name) is not None:
                log.warning("skipping version %r of %r: it cannot be in a file name", version.version_id, version.key)
                continue
            out.append((name, _file(version)))
        return out

    def _shown(self, name: str) -> bool:
        if self._newest is not None and _owned_by_key(name):
            log.warning("%r is hidden in %s: the versions of key %r use that name", name, self.path, self._key)
            return False
        if not self.rel and view_instant(name) is not None:
            log.warning("%r is hidden in %s: the name opens a time view", name, self.path)
            return False
        return True


class TimeDir(VersionListing):
    """readdir of a directory of a time view: the keys and directories that existed at the instant."""

    tree: TimeView

    def _start(self) -> None:
        super()._start()
        prefix = dir_prefix(self.tree.root_prefix, self.rel)
        self._pages = VersionPages(self.tree.s3, prefix, self.tree.page_size, delimiter="/")
        self._pick = _AtInstant(self.tree.instant)
        self._rules = DirectoryStream(self.tree.s3, prefix)  # only its naming rules: feed() and release_held()
        # The live files given to the rules and not given out yet: held back there, hidden by a directory
        # (dropped when it is given out) or skipped for their names (a few, kept until the handle is closed).
        self._files: dict[str, Version] = {}

    async def _next_batch(self) -> list[tuple[str, Entry]] | None:
        if self._pages.done:
            return None
        versions, prefixes = await self._pages.next_page()
        live = self._pick.live(versions)
        dirs = await self.tree.live_prefixes(prefixes)
        self._files.update((v.key[len(self._rules.prefix) :], v) for v in live)
        page = {"Contents": [{"Key": v.key} for v in live], "CommonPrefixes": [{"Prefix": p} for p in dirs]}
        named = self._rules.feed(page)
        if self._pages.done:
            named += self._rules.release_held()
        out = []
        for name, info in named:
            version = self._files.pop(name, None)
            if info.is_dir:
                out.append((name, _directory()))
            elif version is not None:
                out.append((name, _file(version)))
        return out


# ---- trees


def _bounded(opts: Config, ttl: float, **kwargs: Any) -> TTLCache[Any, Any]:
    """A cache of at most --metadata-cache-entries entries (or sizes), each kept for ``ttl`` seconds."""
    return TTLCache(
        maxsize=max(1, opts.cache.metadata_cache_entries), ttl=max(ttl, 1e-3), timer=time.monotonic, **kwargs
    )


class _Tree:
    """A read-only tree of version entries, found by mount path; what lookups and listings find is cached."""

    def __init__(self, s3: S3Client, opts: Config, base: str, page_size: int) -> None:
        self.s3 = s3
        self.opts = opts
        self.base = base  # the mount path of the tree's root
        self.root_prefix: str = opts.mount.prefix
        self.page_size = page_size
        self._entries: TTLCache[str, Entry] = _bounded(opts, opts.cache.attr_ttl)
        s3.client.meta.events.register("after-call.s3.ListObjectVersions", record_kinds, unique_id=KINDS_FIELD)

    def _relative(self, path: str) -> str:
        if path == self.base:
            return ""
        return path[len(self.base) + 1 :] if self.base else path

    def _locate(self, path: str) -> tuple[_Tree, str]:
        """The tree that serves a mount path, and the path within it."""
        return self, self._relative(path)

    async def _find(self, rel: str) -> Entry | None:
        raise NotImplementedError

    def _open(self, rel: str, path: str) -> VersionListing:
        raise NotImplementedError

    def remember(self, rel: str, entry: Entry) -> None:
        self._entries[rel] = entry

    async def lookup(self, path: str) -> Entry | None:
        """What is at a mount path of this tree (a directory, file or symlink), or None: ENOENT."""
        tree, rel = self._locate(path)
        if rel and invalid_reason(rel.rpartition("/")[2]) is not None:
            return None  # as namespace.Namespace.lookup: listings skip such names, so lookups must too
        entry = tree._entries.get(rel)
        if entry is None:
            entry = await tree._find(rel)
            if entry is not None:
                tree.remember(rel, entry)
        return entry

    def open_dir(self, path: str) -> VersionListing:
        """A readdir handle on a directory of this tree: ``entry(index)``, as namespace.DirHandle."""
        tree, rel = self._locate(path)
        return tree._open(rel, path)

    async def version(self, path: str) -> Version:
        """The version a file entry reads (give it to ``version_reader``); for ``latest``, the one it names."""
        entry = await self.lookup(path)
        if entry is None or entry.version is None:
            raise FsError(errno.ENOENT, "NoSuchVersion", f"{path!r} is no version of a key")
        return entry.version

    async def readlink(self, path: str) -> bytes:
        """The target of a ``latest`` symlink: the name of the current version's entry beside it."""
        entry = await self.lookup(path)
        if entry is None or entry.version is None or not entry.info.is_symlink:
            raise FsError(errno.EINVAL, "NotASymlink", f"{path!r} is no symlink")
        return entry.version.name.encode()

    async def xattrs(self, path: str) -> dict[str, bytes]:
        """The xattrs of an entry, names to values (``version_xattrs``); none for a directory."""
        entry = await self.lookup(path)
        if entry is None:
            raise FsError(errno.ENOENT, "NoSuchVersion", f"nothing is at {path!r}")
        version = entry.version
        if version is None:
            return {}
        if version.metadata_only is None:  # found by a listing that did not reach the next older version
            version = dataclasses.replace(
                version, metadata_only=version.same_bytes_as(await older_version(self.s3, version))
            )
            tree, rel = self._locate(path)
            tree.remember(rel, dataclasses.replace(entry, version=version))
        return version_xattrs(version)


class Versions(_Tree):
    """The history tree ``.versions/`` of a mount, and the time views in it."""

    def __init__(self, s3: S3Client, opts: Config, page_size: int = PAGE_SIZE) -> None:
        super().__init__(s3, opts, VERSIONS_DIR, page_size)
        # key -> its whole history, newest first: those of one page at most, bounded in versions held
        self._histories: TTLCache[str, list[Version]] = _bounded(
            opts, opts.cache.dir_ttl, getsizeof=lambda history: max(1, len(history))
        )
        self._views: LRUCache[str, TimeView] = LRUCache(maxsize=VIEWS)

    def info(self) -> EntryInfo:
        """The ``.versions`` directory itself."""
        return _directory().info

    def _locate(self, path: str) -> tuple[_Tree, str]:
        rel = self._relative(path)
        name, _, rest = rel.partition("/")
        instant = view_instant(name)
        if instant is None:
            return self, rel
        view = self._views.get(name)
        if view is None:
            view = self._views[name] = TimeView(self.s3, self.opts, instant, join(self.base, name), self.page_size)
        return view, rest

    def _open(self, rel: str, path: str) -> HistoryDir:
        return HistoryDir(self, rel, path)

    def history(self, key: str) -> list[Version] | None:
        """The key's cached whole history, newest first, if it is cached."""
        return self._histories.get(key)

    def keep_history(
        self, key: str, kept: list[Version] | None, batch: list[Version], done: bool
    ) -> list[Version] | None:
        """Collect a key's history while it is small enough to cache (else None), and cache it once complete."""
        if kept is None:
            return None
        kept.extend(batch)
        if len(kept) > min(self.page_size, self._histories.maxsize // 4):
            return None
        if done:
            self._histories[key] = kept
        return kept

    async def _find(self, rel: str) -> Entry | None:
        if not rel:
            return _directory()
        parent, name = split(rel)
        if parent and _owned_by_key(name):
            newest, match = await self._scan(self.root_prefix + parent, None if name == LATEST else name)
            if newest is not None:  # the key has versions, whose entries these names are
                if name == LATEST:
                    return None if newest.deleted else _latest(newest)
                return None if match is None else _file(match)
        key = self.root_prefix + rel
        newest, _ = await self._scan(key)
        if newest is not None:
            return _directory()
        versions, _ = await VersionPages(self.s3, key + "/", 1).next_page()
        return _directory() if versions else None

    async def _scan(self, key: str, name: str | None = None) -> tuple[Version | None, Version | None]:
        """The key's newest version, and its version called ``name``: from a cached history, else paging through
        the versions of that key only as far as needed (the first page for the newest one)."""
        cached = self.history(key)
        if cached is not None:
            return next(iter(cached), None), _named(cached, name)
        history = KeyHistory(self.s3, key, self.page_size)
        kept: list[Version] | None = []
        newest = match = None
        while not history.done and (newest is None or (name is not None and match is None)):
            batch = await history.next_batch()
            kept = self.keep_history(key, kept, batch, history.done)
            newest = newest or next(iter(batch), None)
            match = _named(batch, name)
        return newest, match


def _named(versions: list[Version], name: str | None) -> Version | None:
    return next((v for v in versions if v.name == name), None) if name is not None else None


class TimeView(_Tree):
    """The mount's tree as it was at an instant.

    ``base`` is the mount path of its root: "" for a whole mount at one instant (``--at``), or
    ``.versions/@<instant>`` in the history tree. Files are read with ``version(path)`` and ``version_reader``.
    Its root is always there; another directory is there when a key under it was (found by paging its keys'
    versions until one was: for a large directory created after the instant, that is all of them).
    """

    def __init__(
        self,
        s3: S3Client,
        opts: Config,
        instant: datetime.datetime,
        base: str = "",
        page_size: int = PAGE_SIZE,
    ) -> None:
        super().__init__(s3, opts, base, page_size)
        self.instant = instant
        # prefix -> whether a key under it existed at the instant
        self._live: TTLCache[str, bool] = _bounded(opts, opts.cache.dir_ttl)

    def _open(self, rel: str, path: str) -> TimeDir:
        return TimeDir(self, rel, path)

    async def _find(self, rel: str) -> Entry | None:
        if not rel:
            return _directory()
        key = self.root_prefix + rel
        if await self._has_live_key(key + "/"):
            return _directory()  # as in listing.py, a directory hides a file of the same name
        history, pick = KeyHistory(self.s3, key, self.page_size), _AtInstant(self.instant)
        while not history.done and not pick.decided:
            live = pick.live(await history.next_batch())
            if live:
                return _file(live[0])
        return None

    async def live_prefixes(self, prefixes: list[str]) -> list[str]:
        """The prefixes under which a key existed at the instant (the directories then), checked in parallel."""
        live: set[str] = set()

        async def check(prefix: str) -> None:
            if await self._has_live_key(prefix):
                live.add(prefix)

        await gather([functools.partial(check, prefix) for prefix in prefixes], LIVE_CHECKS)
        return [prefix for prefix in prefixes if prefix in live]

    async def _has_live_key(self, prefix: str) -> bool:
        known = self._live.get(prefix)
        if known is None:
            pages, pick = VersionPages(self.s3, prefix, self.page_size), _AtInstant(self.instant)
            known = False
            while not known and not pages.done:
                versions, _ = await pages.next_page()
                known = bool(pick.live(versions))
            self._live[prefix] = known
        return known
