"""The ``s3fuse`` command: ``s3fuse BUCKET[:PREFIX] MOUNTPOINT``, ``s3fuse s3:// MOUNTPOINT`` (every
bucket), ``s3fuse demo MOUNTPOINT``, ``s3fuse cleanup BUCKET``, ``s3fuse recover CACHE_DIR`` and
``s3fuse stats MOUNTPOINT``."""

from __future__ import annotations

import os
import sys

from . import cleanup, mount, recover, stats
from .localserver import DEMO_BUCKET, DEMO_CREDENTIALS
from .options import parse_args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:
        return demo(argv[1:])
    if argv[:1] == ["cleanup"]:
        return cleanup.main(argv[1:])
    if argv[:1] == ["recover"]:
        return recover.main(argv[1:])
    if argv[:1] == ["stats"]:
        return stats.main(argv[1:])
    return mount.run(parse_args(argv))


def demo(argv: list[str]) -> int:
    """Mount a demo bucket served by an S3 server embedded in the daemon itself."""
    if not argv or argv[0].startswith("-"):
        print("usage: s3fuse demo MOUNTPOINT [mount options]", file=sys.stderr)
        return 2
    os.environ.update(DEMO_CREDENTIALS)
    opts = parse_args([DEMO_BUCKET, *argv, "--region", "us-east-1", "--addressing-style", "path"])
    opts.embedded_s3 = True
    return mount.run(opts)
