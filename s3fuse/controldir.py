"""The ``.s3/`` directory: the bucket's configuration as files.

Owns the control directory's entries (one file per configuration the bucket has,
see ``bucketconfig.DOCUMENTS``), their cached contents (for the directory TTL, so
``ls -l`` and ``cat`` cost one Get each), and the open files: a configuration is read
whole when opened, edited in memory, and put whole when the file is closed. A bucket
key under ``.s3/`` is hidden by it; the name is reserved.
"""

from __future__ import annotations

import errno
import logging
import stat
import time

import trio
from cachetools import TTLCache

from .bucketconfig import DOCUMENTS, ConfigDocument
from .errors import FsError
from .metadata import EntryInfo, directory
from .names import at_or_below
from .options import Config
from .s3client import S3Client

log = logging.getLogger(__name__)

CONTROL_DIR = ".s3"


def in_control_dir(path: str) -> bool:
    return at_or_below(path, CONTROL_DIR)


def document_name(path: str) -> str:
    """'.s3/cors' -> 'cors'."""
    return path.removeprefix(CONTROL_DIR + "/")


class ControlFile:
    """One open configuration file: its whole content, and whether it was changed."""

    def __init__(self, document: ConfigDocument, content: bytes) -> None:
        self.document = document
        self.content = bytearray(content)
        self.dirty = False

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.content[offset : offset + size])

    def write(self, offset: int, data: bytes) -> None:
        if offset > len(self.content):
            self.content.extend(bytes(offset - len(self.content)))
        self.content[offset : offset + len(data)] = data
        self.dirty = True

    def truncate(self, size: int) -> None:
        # Not a change by itself: '> file' truncates, then closes a duplicate descriptor
        # before it writes; putting the empty document then would fail.
        del self.content[size:]
        self.content.extend(bytes(size - len(self.content)))


class ControlDir:
    """The configuration documents of the mounted bucket, as directory entries and files."""

    def __init__(self, s3: S3Client, opts: Config) -> None:
        self.s3 = s3
        self.opts = opts
        self._contents: TTLCache[str, bytes | None] = TTLCache(
            maxsize=len(DOCUMENTS), ttl=max(opts.cache.dir_ttl, 1e-3), timer=time.monotonic
        )
        self.mtime_ns = time.time_ns()

    def info(self) -> EntryInfo:
        """The directory itself."""
        info = directory()
        info.mode = stat.S_IFDIR | 0o755
        return info

    def knows(self, name: str) -> bool:
        return name in DOCUMENTS

    def document(self, name: str) -> ConfigDocument:
        document = DOCUMENTS.get(name)
        if document is None:
            raise FsError(errno.ENOENT, "NoSuchConfiguration", f"no bucket configuration is called {name!r}")
        return document

    def file_info(self, name: str, content: bytes) -> EntryInfo:
        mode = 0o644 if self.document(name).writable else 0o444
        return EntryInfo(is_dir=False, size=len(content), mode=stat.S_IFREG | mode, mtime_ns=self.mtime_ns)

    async def content(self, name: str, fresh: bool = False) -> bytes | None:
        """The document's current text; None when the bucket has no such configuration."""
        document = self.document(name)
        if not fresh and name in self._contents:
            return self._contents[name]
        content = await document.read(self.s3)
        self._contents[name] = content
        return content

    async def lookup(self, name: str) -> EntryInfo | None:
        content = await self.content(name)
        return None if content is None else self.file_info(name, content)

    async def entries(self) -> list[tuple[str, EntryInfo]]:
        """Every configuration the bucket has, read in parallel."""
        found: dict[str, bytes] = {}

        async def read(name: str) -> None:
            try:
                content = await self.content(name)
            except FsError as exc:  # a server without that API: leave the file out
                log.info("bucket configuration %r could not be read: %s", name, exc)
                return
            if content is not None:
                found[name] = content

        async with trio.open_nursery() as nursery:
            for name in DOCUMENTS:
                nursery.start_soon(read, name)
        return [(name, self.file_info(name, found[name])) for name in DOCUMENTS if name in found]

    async def open(self, name: str, truncate: bool, create: bool = False) -> ControlFile:
        document = self.document(name)
        content = b"" if truncate else await self.content(name, fresh=True)
        if content is None and not create:
            raise FsError(errno.ENOENT, "NoSuchConfiguration", f"the bucket has no {name} configuration")
        return ControlFile(document, content or b"")

    async def save(self, opened: ControlFile) -> None:
        """Put a changed document; the old configuration stays if S3 refuses it."""
        if not opened.dirty:
            return
        name = opened.document.name
        self._contents.pop(name, None)
        try:
            await opened.document.write(self.s3, bytes(opened.content))
        except FsError as exc:
            log.warning("bucket configuration %s not changed: %s", name, exc)
            raise
        opened.dirty = False
        log.info("bucket configuration %s changed", name)

    async def delete(self, name: str) -> None:
        document = self.document(name)
        if not document.deletable:
            raise FsError(errno.EPERM, "NotDeletable", f"S3 cannot delete a bucket's {name} configuration")
        self._contents.pop(name, None)
        await document.delete(self.s3)
        log.info("bucket configuration %s deleted", name)


class ControlDirHandle:
    """readdir of ``.s3/``: the documents the bucket has, read when the directory is opened."""

    def __init__(self, control: ControlDir) -> None:
        self.control = control
        self.path = CONTROL_DIR
        self._entries: list[tuple[str, EntryInfo]] | None = None

    async def entry(self, index: int) -> tuple[str, EntryInfo] | None:
        if self._entries is None or index == 0:
            self._entries = await self.control.entries()
        return self._entries[index] if index < len(self._entries) else None
