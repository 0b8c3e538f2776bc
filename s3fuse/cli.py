"""The ``s3fuse`` command: ``s3fuse BUCKET[:PREFIX] MOUNTPOINT``, ``s3fuse s3:// MOUNTPOINT`` (every
bucket), ``s3fuse demo MOUNTPOINT``, ``s3fuse cleanup BUCKET``, ``s3fuse recover CACHE_DIR`` and
``s3fuse stats MOUNTPOINT``.

Owns only the choice of the command: each one's module is imported when it is the one run.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:
        from .mount import demo

        return demo(argv[1:])
    if argv[:1] == ["cleanup"]:
        from . import cleanup

        return cleanup.main(argv[1:])
    if argv[:1] == ["recover"]:
        from . import recover

        return recover.main(argv[1:])
    if argv[:1] == ["stats"]:
        from . import stats

        return stats.main(argv[1:])
    from .mount import run
    from .options import parse_args

    return run(parse_args(argv))
