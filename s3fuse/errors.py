"""The errors of the file system, each with the errno a call that fails with it returns.

``FsError`` is the file system's own answer: a name too long, a conflict found by
s3fuse's own HEAD, the local disk, an invalid xattr value. ``S3Error``, its subtype,
is a failed S3 request, mapped to an errno by ``s3client.translate``. Modules raise
these; only the pyfuse3 adapter (``operations.py``, and ``allbuckets.py`` for the
root of an all-buckets mount) turns them into ``pyfuse3.FUSEError``.
"""

from __future__ import annotations


class FsError(Exception):
    """A call fails: ``errno`` is what it returns, ``code`` names the cause in the log."""

    def __init__(self, errno_: int, code: str, message: str, logged: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.errno = errno_
        self.code = code
        self.logged = logged  # the raiser has logged it, with more context than the adapter has


class S3Error(FsError):
    """An S3 request failed (after botocore's retries)."""

    # The HTTP status of the server's answer; None when no answer came (a timeout, no connection,
    # botocore's own checks before sending): then the request may or may not have been carried out.
    status: int | None = None
