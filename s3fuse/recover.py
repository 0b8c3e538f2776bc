"""``s3fuse recover CACHE_DIR``: upload what ``--write-back`` mounts journaled and did not upload.

Owns the replay of the write-back journal without a mount: for each bucket journaled
in CACHE_DIR, the connection its mount recorded (endpoint, region, profile; options
given here win), then every record oldest first, uploaded exactly as the mount would
have. What cannot be uploaded stays in the journal for another try (or the next mount
of the bucket with this cache dir); what can never be (a conflict) goes to lost+found.
"""

from __future__ import annotations

import argparse
import os
import sys

import trio

from .blockcache import BlockCache
from .mount import MountError, check_bucket, settings_of, setup_logging
from .options import Config, config_of
from .s3client import S3Client
from .write import WriteBack
from .write.journal import Journal, JournalInUse, journals

CONNECTION_OPTIONS = ("endpoint_url", "region", "profile", "addressing_style")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="s3fuse recover",
        description="Upload the files that --write-back mounts using CACHE_DIR acknowledged (close() "
        "returned) but did not upload before they stopped, oldest first. The next mount of the bucket "
        "with the same cache dir does the same by itself.",
    )
    p.add_argument("cache_dir", metavar="CACHE_DIR", help="the mounts' --cache-dir")
    p.add_argument("--bucket", help="only this bucket's journal")
    p.add_argument("--endpoint-url", help="instead of the endpoint the mount recorded")
    p.add_argument("--profile", help="instead of the profile the mount recorded")
    p.add_argument("--region", help="instead of the region the mount recorded")
    p.add_argument("--addressing-style", choices=["auto", "path", "virtual"])
    return p


def mount_options(journal: Journal, cache_dir: str, args: argparse.Namespace) -> Config:
    """The configuration of a write-back mount of the journal's bucket: what the mount recorded,
    overridden by the command line; the config file and S3FUSE_* apply as to a mount."""
    recorded = journal.connection()
    connection = {name: getattr(args, name) or recorded.get(name) for name in CONNECTION_OPTIONS}
    values = {name: value for name, value in connection.items() if value}
    return config_of(journal.bucket, cache_dir, cache_dir=cache_dir, write_back=True, **values)


def recover(journal: Journal, cache_dir: str, args: argparse.Namespace) -> bool:
    """Upload one bucket's journal; whether nothing is left in it."""
    opts = mount_options(journal, cache_dir, args)
    setup_logging(opts, detached=False)
    try:
        client = check_bucket(opts)
    except MountError as exc:
        print(f"s3fuse recover: {exc}", file=sys.stderr)
        return False
    s3 = S3Client(client, opts.mount.bucket_name, settings_of(opts))
    return trio.run(_replay, s3, opts, journal)


async def _replay(s3: S3Client, opts: Config, journal: Journal) -> bool:
    async with trio.open_nursery() as nursery:
        try:
            wb = await WriteBack.create(s3, BlockCache(opts.cache.cache_size), opts, nursery)
        except JournalInUse as exc:
            print(f"s3fuse recover: {exc}", file=sys.stderr)
            return False
        total = len(wb.adopted)
        await wb.replay()
    left = len(journal.records())
    kept = len(wb.lost.kept)
    print(
        f"s3://{opts.mount.bucket_name}: recovered {total - left - kept} of {total} file(s); "
        f"{left} left in the journal {journal.directory}, {kept} moved to {wb.lost.directory}"
    )
    return left == 0 and kept == 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    cache_dir = os.path.abspath(args.cache_dir)
    pending = [j for j in journals(cache_dir) if j.has_records() and args.bucket in (None, j.bucket)]
    if not pending:
        print(f"nothing to recover: no write-back journal in {cache_dir} holds a file")
        return 0
    results = [recover(journal, cache_dir, args) for journal in pending]
    return 0 if all(results) else 1
