"""Listing the few subdirectories of a directory just read, before anything asks.

Owns the choice of which directories are listed ahead and the tasks that list them.
When a readdir reaches the end of a directory listed whole (small enough for the
``--dir-ttl`` cache), and that directory has at most ``--prefetch-dirs``
subdirectories, each of those without a cached listing is listed in the background,
through the same directory handles as a readdir (so the same naming rules, attribute
index and files of this mount not yet in S3), and cached whole. A path into one of them
(``ls; cat dir/file``, a build tree, a dataset's few splits) then costs no request: the
LIST a lookup would send, 20-50 ms on S3, was sent while the user read the listing.
gcsfuse lists a whole bucket ahead for the same reason (its metadata prefetch on mount);
here it is one level, and only where a guess covers every subdirectory: a directory of
many subdirectories (partitions, one per day) gets none listed ahead. Each listed
directory costs its LIST and its attribute index GET; one listed ahead never leads to
more (no recursion), and one longer than ``PAGE`` entries is left after them (its
second page, asked for as the first arrives, is the most it costs beyond that).

fsbench on its S3-like network (20 ms a request): the cold read of ``ro/big.bin`` after
the mount's ``ls`` of the root began with the lookup's LIST and the index GET, 35-47 ms
(raw boto3 sends none); with ``ro/`` listed ahead it sends 16 requests, not 17, at x0.90-1.0
of raw boto3's time in three runs against x1.0-1.1 before (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

import trio

from .errors import FsError
from .names import join
from .namespace import Namespace
from .tree import DirEntries

log = logging.getLogger(__name__)


class SubdirectoryPrefetch:
    PAGE = 1000  # entries: one LIST page; a directory longer than that is not listed ahead further
    AT_ONCE = 4  # directories listed ahead at a time, for the whole mount
    # Directories waiting or being listed ahead, at most: a script that runs ls in 10,000
    # directories must not queue 80,000 listings (and their tasks' memory); past this, none is added.
    QUEUED = 64

    def __init__(self, ns: Namespace, most: int, open_listing: Callable[[str], DirEntries]) -> None:
        """most: subdirectories a directory may have for them to be listed ahead (0: never);
        open_listing(path): a directory handle on path that lists ahead nothing itself."""
        self.ns = ns
        self.most = most if ns.opts.cache.dir_ttl > 0 else 0  # nothing listed would be kept
        self._open = open_listing
        self._limiter = trio.CapacityLimiter(self.AT_ONCE)
        self._pending: dict[str, trio.Event] = {}  # directory -> set once its listing ahead ended
        self._running: set[str] = set()  # those of them being listed (the others wait for the limiter)

    async def settled(self, path: str) -> None:
        """Wait for the listing ahead of path, if it is on its way: a readdir or lookup there then
        finds it cached, instead of sending the same LIST again (find, ls then cat). One still
        queued is not waited for: the caller's own request is quicker than the queue."""
        if path in self._running:
            await self._pending[path].wait()

    def listed(self, path: str, exclude: Collection[str] = ()) -> None:
        """A readdir reached the end of the directory at path; ``exclude``: names that lead to other trees."""
        listing = self.ns.cached_listing(path)
        if not self.most or listing is None or self.ns.nursery is None:
            return  # not listed whole: too large, or changed here meanwhile
        subdirectories = sorted(name for name, info in listing.items() if info.is_dir and name not in exclude)
        if len(subdirectories) > self.most:
            return
        for name in subdirectories:
            child = join(path, name)
            if len(self._pending) >= self.QUEUED:
                return
            if child not in self._pending and self.ns.cached_listing(child) is None:
                self._pending[child] = trio.Event()
                self.ns.nursery.start_soon(self._list, child)

    async def _list(self, path: str) -> None:
        try:
            async with self._limiter:
                if self.ns.cached_listing(path) is not None:
                    return  # a readdir came first
                self._running.add(path)
                entries = self._open(path)
                index = 0
                while index < self.PAGE and await entries.entry(index) is not None:
                    index += 1
        except FsError as exc:  # nothing is lost: a lookup or readdir asks S3 itself
            log.debug("listing %r ahead: %s", path, exc)
        except Exception:  # a background task: anything uncaught would end the daemon
            log.exception("listing %r ahead", path)
        finally:
            self._running.discard(path)
            self._pending.pop(path).set()
