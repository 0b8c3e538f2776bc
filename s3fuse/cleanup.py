"""``s3fuse cleanup BUCKET``: abort the multipart uploads s3fuse started and never finished;
``--disk-cache SIZE``: trim the disk cache of blocks (diskcache.py) to SIZE.

An upload is s3fuse's when this machine's upload registry (in the cache dir) recorded
it, or when a daemon that died announced an upload of its key and never recorded the
id (killed while CreateMultipartUpload was on its way): the announcement claims one
upload of that key. S3 cannot tell whose an upload is, so any other upload in the
bucket is listed and left alone. Uploads of a daemon that is still running are left
alone too. The disk cache may be trimmed while mounts use it: they take a deleted
block for a miss.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import botocore.exceptions

from .diskcache import blocks_dir, trim_dir
from .options import default_cache_dir, parse_duration, parse_size
from .pager import pages_sync
from .progress import Progress
from .s3client import ClientSettings, make_boto_client
from .write.parts import MiB
from .write.upload import UploadRegistry, process_alive


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="s3fuse cleanup",
        description="Abort the multipart uploads that s3fuse started in BUCKET and never finished "
        "(after a crash or a lost connection). Uploads started by other programs are never touched.",
    )
    p.add_argument("bucket", metavar="BUCKET", nargs="?", help="the bucket whose uploads to abort")
    p.add_argument(
        "--disk-cache",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="also trim the disk cache of blocks (--disk-cache-size) in the cache dir to SIZE bytes, the least "
        "recently used first; 0 empties it. Without BUCKET, only this",
    )
    p.add_argument(
        "--older-than",
        type=parse_duration,
        default=parse_duration("1d"),
        metavar="AGE",
        help="only uploads started at least this long ago, e.g. 0, 30m, 12h, 1d (default: 1d)",
    )
    p.add_argument("--dry-run", action="store_true", help="report what would be aborted, abort nothing")
    p.add_argument(
        "--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )
    p.add_argument("--profile", default=None)
    p.add_argument("--region", default=None)
    p.add_argument("--addressing-style", choices=["auto", "path", "virtual"], default=None)
    p.add_argument(
        "--cache-dir", default=default_cache_dir(), help="the cache dir the mounts used (default: %(default)s)"
    )
    return p


def cleanup(client: Any, bucket: str, registry: UploadRegistry, older_than: float, dry_run: bool) -> int:
    """Abort s3fuse's orphaned uploads in bucket; prints one line per upload and a summary,
    with progress on stderr (a bar on a terminal)."""
    ours = registry.entries()
    announced = registry.announced()
    claimed: dict[str, str] = {}  # announcement -> the upload of its key it claims
    seen: set[str] = set()
    # The registry's start time, not S3's 'Initiated': some servers (moto) report a fixed date.
    cutoff = time.time() - older_than
    others = kept = 0
    orphans = []
    listing = Progress("listing multipart uploads")
    for page in pages_sync(client, "list_multipart_uploads", Bucket=bucket):
        for upload in page.get("Uploads", []):
            upload_id = upload["UploadId"]
            entry = ours.get(upload_id)
            if entry is None:
                # Created by a daemon that died before recording its id: the announcement of its key.
                name = next((n for n, e in announced.items() if e["key"] == upload["Key"] and n not in claimed), None)
                if name is None:
                    others += 1
                    continue
                claimed[name], entry = upload_id, announced[name]
            seen.add(upload_id)
            in_progress = process_alive(entry.get("pid")) and entry.get("pid") != os.getpid()
            started = float(entry.get("started", 0))
            if started > cutoff or in_progress:
                kept += 1
            else:
                orphans.append((upload["Key"], upload_id, started))
        listing.advance(len(page.get("Uploads", [])))
    listing.finish()
    verb = "would abort" if dry_run else "aborted"
    freed = 0
    aborting = Progress("checking uploads" if dry_run else "aborting uploads", total=len(orphans))
    for key, upload_id, started in orphans:
        size = sum(
            part["Size"]
            for parts_page in pages_sync(client, "list_parts", Bucket=bucket, Key=key, UploadId=upload_id)
            for part in parts_page.get("Parts", [])
        )
        if not dry_run:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            registry.forget(upload_id)
        aborting.print(
            f"{verb} upload of {key!r} started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}: "
            f"{size / MiB:.1f} MiB"
        )
        aborting.advance()
        freed += size
    aborting.finish()
    if not dry_run:
        aborted = {upload_id for _, upload_id, _ in orphans}
        for upload_id in ours.keys() - seen:  # finished or aborted meanwhile
            registry.forget(upload_id)
        for name, entry in announced.items():  # recorded, never created, or claimed and aborted
            if not process_alive(entry.get("pid")) and (name not in claimed or claimed[name] in aborted):
                registry.withdraw(name)
    print(
        f"{verb} {len(orphans)} upload(s) ({freed / MiB:.1f} MiB); left {kept} newer or still in progress, "
        f"and {others} that s3fuse did not start"
    )
    return 0


def trim_disk_cache(cache_dir: str, size: int) -> None:
    """Trim the disk cache in cache_dir to size bytes; prints what it held and holds."""
    directory = blocks_dir(cache_dir)
    before, after = trim_dir(directory, size, size)
    print(f"disk cache {directory}: held {before / MiB:.1f} MiB, holds {after / MiB:.1f} MiB")


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bucket is None and args.disk_cache is None:
        parser.error("give BUCKET (uploads to abort), --disk-cache SIZE, or both")
    if args.disk_cache is not None:
        trim_disk_cache(os.path.abspath(args.cache_dir), args.disk_cache)
    if args.bucket is None:
        return 0
    style = args.addressing_style or ("path" if args.endpoint_url else "auto")
    settings = ClientSettings(
        endpoint_url=args.endpoint_url, region=args.region, profile=args.profile, addressing_style=style
    )
    registry = UploadRegistry(os.path.abspath(args.cache_dir), args.bucket)
    try:
        client = make_boto_client(settings)
        return cleanup(client, args.bucket, registry, args.older_than, args.dry_run)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        print(f"s3fuse cleanup: {exc}", file=sys.stderr)
        return 1
