"""All 54 operations of the classic S3 API, each invoked by its Unix action in one shell session.

The session runs against the moto server through real mounts (one of the bucket, one of
the whole account with ``s3://``, and ``s3fuse cleanup``), exactly as docs/s3-operations.md
lists the actions. moto's recorder is the server's view: every request it saw is
classified (tests/s3ops.py), and each of the 54 operations must have reached it. boto3
then checks the effects.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import base_env, run
from s3ops import CLASSIC_OPERATIONS, operations_of

QUEUE = "arn:aws:sqs:us-east-1:123456789012:events"


def configs(bucket: str, log_bucket: str) -> dict[str, dict]:
    """A valid document for every writable file of .s3/ (moto checks ARNs, grants and shapes)."""
    return {
        "cors": {"CORSRules": [{"AllowedOrigins": ["*"], "AllowedMethods": ["GET"]}]},
        # the classic shape (a rule-level Prefix): PutBucketLifecycle
        "lifecycle": {"Rules": [{"ID": "logs", "Prefix": "logs/", "Status": "Enabled", "Expiration": {"Days": 7}}]},
        "policy": {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"}
            ],
        },
        "website": {"IndexDocument": {"Suffix": "index.html"}},
        "logging": {"LoggingEnabled": {"TargetBucket": log_bucket, "TargetPrefix": "access/"}},
        "notification": {"QueueConfigurations": [{"QueueArn": QUEUE, "Events": ["s3:ObjectCreated:*"]}]},
        "notification-legacy": {"QueueConfiguration": {"Queue": QUEUE, "Events": ["s3:ObjectRemoved:*"]}},
        "versioning": {"Status": "Enabled"},
        "replication": {
            "Role": "arn:aws:iam::123456789012:role/replication",
            "Rules": [{"ID": "all", "Prefix": "", "Status": "Enabled", "Destination": {"Bucket": "arn:aws:s3:::r"}}],
        },
        "request-payment": {"Payer": "Requester"},
        "tagging": {"TagSet": [{"Key": "team", "Value": "storage"}]},
    }


SESSION = """
    B=$MNT/$BUCKET                                   # the bucket in the mount of the whole account
    ls $MNT > /dev/null                              # ListBuckets
    mkdir $MNT/$NEWBUCKET                            # CreateBucket
    rmdir $MNT/$NEWBUCKET                            # DeleteBucket
    # $ONE is a mount of the bucket alone, with --list-version 1: HeadBucket and GetBucketLocation at start
    ls -l $ONE > /dev/null                           # ListObjects
    echo hello > $B/hello.txt                        # PutObject
    cat $B/hello.txt > /dev/null                     # GetObject
    getfattr -n user.nothing $B/hello.txt 2>/dev/null || true    # HeadObject
    mv $B/hello.txt $B/moved.txt                     # CopyObject + DeleteObject
    mkdir $B/dir && touch $B/dir/a $B/dir/b
    mv $B/dir $B/dir2                                # DeleteObjects
    head -c 20M /dev/urandom > $B/big.bin            # CreateMultipartUpload, UploadPart, CompleteMultipartUpload
    printf changed | dd of=$B/big.bin bs=1 seek=1000 conv=notrunc status=none    # UploadPartCopy
    exec 3> $B/abandoned.bin; head -c 20M /dev/zero >&3; rm $B/abandoned.bin; exec 3>&-  # AbortMultipartUpload
    getfattr -n s3.acl $B/moved.txt > /dev/null      # GetObjectAcl
    setfattr -n s3.acl -v public-read $B/moved.txt   # PutObjectAcl
    getfattr -n s3.torrent $B/moved.txt > /dev/null  # GetObjectTorrent
    echo cold > $B/cold.txt
    setfattr -n s3.storage_class -v GLACIER $B/cold.txt
    setfattr -n s3.restore -v 1 $B/cold.txt          # RestoreObject
    getfattr -n s3.acl $B > /dev/null                # GetBucketAcl
    setfattr -n s3.acl -v private $B                 # PutBucketAcl
    for doc in cors lifecycle policy website logging notification notification-legacy versioning \\
               replication request-payment tagging; do
        cp $CONFIGS/$doc $B/.s3/$doc                 # PutBucket*
        cat $B/.s3/$doc > /dev/null                  # GetBucket*
    done
    cat $B/.s3/location > /dev/null                  # GetBucketLocation
    echo v2 > $B/moved.txt
    ls $B/.versions/moved.txt > /dev/null            # ListObjectVersions
    for doc in cors lifecycle policy website replication tagging; do
        rm $B/.s3/$doc                               # DeleteBucket*
    done
    # an upload left behind by a daemon that died: ListMultipartUploads, ListParts, AbortMultipartUpload
    $S3FUSE cleanup $BUCKET --older-than 0 --endpoint-url $ENDPOINT --cache-dir $CACHE > /dev/null
"""


def test_every_classic_operation_is_reachable_from_a_shell(s3, moto, new_bucket, mount, tmp_path):
    bucket, newbucket, log_bucket = new_bucket("ops"), f"{new_bucket('new')}-made", new_bucket("logs")
    s3.delete_bucket(Bucket=newbucket.removesuffix("-made"))
    s3.put_bucket_acl(Bucket=log_bucket, ACL="log-delivery-write")  # S3 logs only to a bucket that allows it
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    for name, document in configs(bucket, log_bucket).items():
        (config_dir / name).write_text(json.dumps(document))
    cache = tmp_path / "cache"
    orphan_upload(s3, bucket, cache, moto)

    moto.start_recording()
    one = mount(bucket, "--list-version", "1", "--cache-dir", str(cache))
    everything = mount("s3://", "--cache-dir", str(cache))
    env = {
        **base_env(),
        "MNT": str(everything),
        "ONE": str(one),
        "BUCKET": bucket,
        "NEWBUCKET": newbucket,
        "CONFIGS": str(config_dir),
        "CACHE": str(cache),
        "ENDPOINT": moto.url,
        "S3FUSE": f"{sys.executable} -m s3fuse",
    }
    run(["bash", "-euo", "pipefail", "-c", textwrap.dedent(SESSION)], env=env, timeout=300)
    seen = set().union(*(operations_of(r) for r in moto.stop_recording()))

    missing = CLASSIC_OPERATIONS - seen
    assert not missing, f"never reached the server: {sorted(missing)}"
    # The effects, as boto3 sees them.
    assert s3.get_object(Bucket=bucket, Key="moved.txt")["Body"].read() == b"v2\n"
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    assert s3.get_bucket_request_payment(Bucket=bucket) is not None
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert "abandoned.bin" not in {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert newbucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}


def orphan_upload(s3, bucket: str, cache: Path, moto) -> None:
    """A multipart upload recorded by a daemon that no longer runs, as a crash leaves it."""
    upload = s3.create_multipart_upload(Bucket=bucket, Key="orphan.bin")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="orphan.bin", UploadId=upload, PartNumber=1, Body=b"x" * 1024)
    record = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from s3fuse.write.upload import UploadRegistry; "
            "UploadRegistry(sys.argv[1], sys.argv[2]).record(sys.argv[3], sys.argv[4])",
            str(cache),
            bucket,
            upload,
            "orphan.bin",
        ],
        capture_output=True,
        text=True,
    )
    assert record.returncode == 0, record.stderr
