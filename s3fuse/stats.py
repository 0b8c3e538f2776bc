"""``s3fuse stats MOUNTPOINT``, and the ``--metrics`` HTTP endpoint of a running daemon.

Both show ``METRICS.exposition()`` (metrics.py): the command reads it from the mount
root's extended attribute ``s3fuse.stats`` (no S3 request, no socket to find) and
prints it as a table; the endpoint serves it to Prometheus.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import socket
import sys

import trio

from .metrics import METRICS, STATS_XATTR, parse_exposition

HTTP_REQUEST_LIMIT = 8192  # bytes of request head read before answering
HTTP_TIMEOUT = 5.0  # seconds a scraper may take to send its request


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="s3fuse stats",
        description="Show what a running s3fuse mount has done: S3 requests by operation, errors, "
        "bytes, cache hit rates and unsaved writes, counted since it was mounted.",
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print the numbers as JSON")
    form.add_argument("--prometheus", action="store_true", help="print the Prometheus text exposition")
    return p


def read_exposition(mountpoint: str) -> str:
    """The stats text of the mount at mountpoint; OSError with a readable message if there is none."""
    try:
        return os.getxattr(mountpoint, STATS_XATTR).decode()
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            raise OSError(exc.errno, f"{mountpoint} is not an s3fuse mount, or was mounted with --no-xattr "
                          "(then use --metrics)") from exc  # fmt: skip
        raise


def summarize(text: str) -> dict:
    """The exposition as nested numbers: requests and errors by operation, totals, caches, uploads."""
    summary: dict = {"requests": {}, "errors": {}, "caches": {}, "totals": {}}
    for name, labels, value in parse_exposition(text):
        short = name.removeprefix("s3fuse_").removesuffix("_total")
        if name == "s3fuse_requests_total":
            summary["requests"][labels["operation"]] = int(value)
        elif name == "s3fuse_request_errors_total":
            summary["errors"].setdefault(labels["operation"], {})[labels["code"]] = int(value)
        elif "cache" in labels:
            summary["caches"].setdefault(labels["cache"], {})[short.removeprefix("cache_")] = int(value)
        else:
            summary["totals"][short] = value
    return summary


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def render(summary: dict, mountpoint: str) -> str:
    g = summary["totals"]
    uptime = int(g.get("uptime_seconds", 0))
    lines = [f"s3fuse mount at {mountpoint}, up {uptime // 3600}h{uptime // 60 % 60:02d}m{uptime % 60:02d}s", ""]
    lines.append(f"{'S3 requests':<28}{'sent':>10}{'failed':>10}  error codes")
    operations = sorted(set(summary["requests"]) | set(summary["errors"]))
    for op in operations:
        codes = summary["errors"].get(op, {})
        detail = ", ".join(f"{code} {n}" for code, n in sorted(codes.items()))
        lines.append(f"  {op:<26}{summary['requests'].get(op, 0):>10}{sum(codes.values()):>10}  {detail}".rstrip())
    total_errors = sum(sum(codes.values()) for codes in summary["errors"].values())
    lines.append(f"  {'total':<26}{sum(summary['requests'].values()):>10}{total_errors:>10}")
    lines += ["", f"bytes sent {_size(g.get('bytes_sent', 0))}, received {_size(g.get('bytes_received', 0))}", ""]
    for cache, numbers in sorted(summary["caches"].items()):
        hits, misses = numbers.get("hits", 0), numbers.get("misses", 0)
        rate = f"{100 * hits / (hits + misses):.0f}%" if hits + misses else "-"
        lines.append(f"{cache + ' cache':<16} hit rate {rate:>4} ({hits} hits, {misses} misses)")
    lines.append(
        f"{'':<16} holds {_size(g.get('block_cache_bytes', 0))} of blocks "
        f"({_size(g.get('disk_cache_bytes', 0))} on disk), "
        f"{int(g.get('metadata_cache_entries', 0))} metadata entries; the kernel holds {int(g.get('inodes', 0))} inodes"
    )
    lines.append(f"{'transfers':<16} {_size(g.get('transfer_bytes', 0))} in flight (read ahead, parts being sent)")
    lines += [
        "",
        f"uploads in progress {int(g.get('uploads_in_progress', 0))}; files open for writing "
        f"{int(g.get('files_open_for_writing', 0))}, with unsaved writes {int(g.get('dirty_files', 0))}; "
        f"kept in lost+found {int(g.get('files_kept', 0))}",
        f"write-back: files waiting for upload {int(g.get('files_waiting_for_upload', 0))} "
        f"({_size(g.get('journal_bytes', 0))} in the journal)",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        text = read_exposition(args.mountpoint)
    except OSError as exc:
        print(f"s3fuse stats: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if args.prometheus:
        print(text, end="")
    elif args.json:
        print(json.dumps(summarize(text), indent=2, sort_keys=True))
    else:
        print(render(summarize(text), os.path.abspath(args.mountpoint)))
    return 0


# ---- the --metrics endpoint


def metrics_listener(address: str) -> socket.socket:
    """A listening socket for HOST:PORT (or PORT, on 127.0.0.1), bound before the mount reports success."""
    host, _, port = address.rpartition(":")
    sock = socket.create_server((host.strip("[]") or "127.0.0.1", int(port)), reuse_port=False)
    sock.setblocking(False)
    return sock


async def serve_metrics(sock: socket.socket) -> None:
    """Answer GET /metrics with the exposition, anything else with 404, until cancelled."""
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    await trio.serve_listeners(_answer, [listener])


async def _answer(stream: trio.SocketStream) -> None:
    async with stream:
        head = b""
        with trio.move_on_after(HTTP_TIMEOUT):
            while b"\r\n\r\n" not in head and len(head) < HTTP_REQUEST_LIMIT:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                head += chunk
        method, _, rest = head.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if method in (b"GET", b"HEAD") and path in (b"/metrics", b"/"):
            body, status = METRICS.exposition().encode(), b"200 OK"
        else:
            body, status = b"not found: try /metrics\n", b"404 Not Found"
        header = (
            b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(trio.BrokenResourceError):  # the scraper went away
            await stream.send_all(header + (b"" if method == b"HEAD" else body))
