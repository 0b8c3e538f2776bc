"""s3fuse: mount S3 buckets as directories (pyfuse3 + trio + boto3)."""

__version__ = "0.1.0"
