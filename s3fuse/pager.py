"""Every paginated S3 listing, one page at a time.

Owns the paging rules of the listings s3fuse makes (which request parameters carry
the position, which answer fields give the next one, when a listing is over) and
the one loop that follows them: ``Pager`` (a cursor, optionally asking for the next
page ahead), ``pages`` (an async iterator over a ``Pager``) and, for the ``s3fuse
cleanup`` command, which runs without trio, ``pages_sync``.

botocore's paginators are not used, because they do not fit how s3fuse calls S3:

- a paginator's iterator is dead after one failed page, while a ``Pager`` keeps its
  position until a page arrives, so the next call (the next readdir) asks for exactly
  that page again instead of ending the listing early;
- each page must be one call through ``S3Client`` (its thread limiter, deadline and
  request options), abandoned when cancelled: a generator left running in an
  abandoned thread cannot be asked for its next page;
- ListObjectsV2 pages go through ``S3Client.list_page``, which speaks ListObjects
  (v1) in V2's terms with ``--list-version 1``;
- to ask for the next page ahead, the next page's parameters are needed as soon as
  a page arrives, not when the caller wants it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import outcome
import trio

from .s3client import S3Client


@dataclass(frozen=True)
class Paging:
    """How one operation pages."""

    markers: tuple[str, ...]  # the request parameters that say where a page starts
    next_markers: tuple[str, ...]  # the answer's fields that give them for the next page, in the same order


PAGING: dict[str, Paging] = {
    "list_objects_v2": Paging(("ContinuationToken",), ("NextContinuationToken",)),
    "list_object_versions": Paging(("KeyMarker", "VersionIdMarker"), ("NextKeyMarker", "NextVersionIdMarker")),
    "list_multipart_uploads": Paging(("KeyMarker", "UploadIdMarker"), ("NextKeyMarker", "NextUploadIdMarker")),
    "list_parts": Paging(("PartNumberMarker",), ("NextPartNumberMarker",)),
    # ListBuckets has no IsTruncated: a ContinuationToken in the answer means more buckets.
    "list_buckets": Paging(("ContinuationToken",), ("ContinuationToken",)),
}


def next_params(operation: str, params: dict[str, Any], page: dict[str, Any]) -> dict[str, Any] | None:
    """The parameters of the page after ``page`` (which was asked for with ``params``); None after the last.

    A listing is over when the answer is not truncated, or is but names no next position
    (a server that does not know the operation's paging would otherwise loop on one page).
    A secondary marker the answer leaves out (NextVersionIdMarker after a common prefix)
    is left out of the next request too.
    """
    paging = PAGING[operation]
    following = [page.get(name) for name in paging.next_markers]
    if not following[0] or not page.get("IsTruncated", True):
        return None
    params = {name: value for name, value in params.items() if name not in paging.markers}
    params.update({name: value for name, value in zip(paging.markers, following, strict=True) if value})
    return params


async def fetch_page(s3: S3Client, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """One page, as one call through ``s3`` (counted in the stats by its S3 operation)."""
    if operation == "list_objects_v2":
        return await s3.list_page(**params)  # ListObjects with --list-version 1
    if operation == "list_buckets":  # the account's, not the bucket's: no Bucket=
        return await s3.run(functools.partial(s3.client.list_buckets, **params))
    return await s3.call(operation, **params)


class _Fetch:
    """One page being asked for: its outcome, once it arrived."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.asked_at = time.monotonic()
        self.arrived = trio.Event()
        self.result: outcome.Outcome

    async def run(self, s3: S3Client, operation: str) -> None:
        try:
            self.result = outcome.Value(await fetch_page(s3, operation, self.params))
        except Exception as exc:  # raised in the next_page that takes this page, as if it had asked itself
            self.result = outcome.Error(exc)
        self.arrived.set()


class Pager:
    """The pages of one listing, in order, from the position that ``params`` gives (or the start).

    The position moves on only when a page has arrived: a ``next_page`` that fails
    raises, and the next call asks for the same page again. Given a nursery, the next
    page is asked for as soon as one arrives (a task there), so the request overlaps
    the caller's use of the page; the ``next_page`` that takes it waits for it.
    """

    def __init__(
        self, s3: S3Client, operation: str, params: dict[str, Any], nursery: trio.Nursery | None = None
    ) -> None:
        self.s3 = s3
        self.operation = operation
        self.nursery = nursery
        self._params: dict[str, Any] | None = dict(params)  # the next page's; None after the last page
        self._ahead: _Fetch | None = None
        self.asked_at = 0.0  # when the page last returned was asked for (monotonic)

    @property
    def done(self) -> bool:
        """Whether the last page has been returned."""
        return self._params is None

    async def next_page(self) -> dict[str, Any]:
        """The next page (raises once done)."""
        if self._params is None:
            raise RuntimeError(f"{self.operation}: no page after the last")
        fetch, self._ahead = self._ahead, None
        if fetch is None:
            fetch = _Fetch(self._params)
            await fetch.run(self.s3, self.operation)
        else:
            await fetch.arrived.wait()
        page: dict[str, Any] = fetch.result.unwrap()  # a failed page raises here, the position kept
        self.asked_at = fetch.asked_at
        self._params = next_params(self.operation, fetch.params, page)
        if self._params is not None and self.nursery is not None:
            self._ahead = _Fetch(self._params)
            self.nursery.start_soon(self._ahead.run, self.s3, self.operation)
        return page


async def pages(s3: S3Client, operation: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
    """``async for page in pages(s3, "list_object_versions", Prefix=...)``: every page, in order."""
    pager = Pager(s3, operation, params)
    while not pager.done:
        yield await pager.next_page()


def pages_sync(client: Any, operation: str, **params: Any) -> Iterator[dict[str, Any]]:
    """Every page of a listing through a plain boto3 client (``params`` include Bucket=), for code
    without trio; the same paging rules as ``Pager``."""
    following: dict[str, Any] | None = params
    while following is not None:
        page = getattr(client, operation)(**following)
        yield page
        following = next_params(operation, following, page)
