"""The embedded local S3 server behind ``s3fuse demo``.

Owns starting moto's S3 server on 127.0.0.1 inside the daemon and filling a demo
bucket, so a newcomer can mount something without an AWS account.
"""

from __future__ import annotations

import os

import boto3

DEMO_BUCKET = "demo"
DEMO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "demo",
    "AWS_SECRET_ACCESS_KEY": "demo-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def demo_objects() -> dict[str, bytes]:
    """The demo bucket's keys and bytes; made when the demo server starts, not at import:
    every daemon imports this module, and the 4 MiB of random bytes would stay in its memory."""
    return {
        "README.txt": b"This bucket is served by an S3 server embedded in s3fuse (moto).\n"
        b"Try: ls -lR, cat, cp, find, du. Unmount with: fusermount3 -u <mountpoint>\n",
        "hello.txt": b"Hello from S3!\n",
        "docs/guide.md": b"# Guide\n\nDirectories are key prefixes; files are objects.\n",
        "docs/empty-dir/": b"",
        "data/numbers.csv": b"n,square\n" + b"".join(b"%d,%d\n" % (i, i * i) for i in range(1000)),
        "data/random.bin": os.urandom(4 << 20),
    }


def start_demo_server() -> str:
    """Start moto's S3 server on a free 127.0.0.1 port with the demo bucket; its endpoint URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise SystemExit("s3fuse: the embedded S3 server needs moto: pip install 's3fuse[server]'") from None
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint_url = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")
    s3.create_bucket(Bucket=DEMO_BUCKET)
    for key, body in demo_objects().items():
        s3.put_object(Bucket=DEMO_BUCKET, Key=key, Body=body)
    return endpoint_url
