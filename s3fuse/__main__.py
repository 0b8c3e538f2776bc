"""``python -m s3fuse`` is the ``s3fuse`` command."""

from .cli import main

raise SystemExit(main())
