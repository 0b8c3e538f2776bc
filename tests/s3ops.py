"""The classic S3 API's 54 operations, and which of them an HTTP request is.

The server's view: a request is classified by its method, whether it names the
service, a bucket or an object, its sub-resource (``?acl``, ``?uploads``, ...) and the
``x-amz-copy-source`` header. Two pairs of operations are one and the same request on
the wire, told apart only by the client's parser: GetBucketNotification and
GetBucketNotificationConfiguration (``GET ?notification``), PutBucketNotification and
PutBucketNotificationConfiguration (``PUT ?notification``); such a request counts for both.
"""

from __future__ import annotations

from conftest import Request

# The 54 operations of the S3 API of 2006-03-01 as botocore names them (its model of 2015).
CLASSIC_OPERATIONS = frozenset(
    [
        "AbortMultipartUpload",
        "CompleteMultipartUpload",
        "CopyObject",
        "CreateBucket",
        "CreateMultipartUpload",
        "DeleteBucket",
        "DeleteBucketCors",
        "DeleteBucketLifecycle",
        "DeleteBucketPolicy",
        "DeleteBucketReplication",
        "DeleteBucketTagging",
        "DeleteBucketWebsite",
        "DeleteObject",
        "DeleteObjects",
        "GetBucketAcl",
        "GetBucketCors",
        "GetBucketLifecycle",
        "GetBucketLocation",
        "GetBucketLogging",
        "GetBucketNotification",
        "GetBucketNotificationConfiguration",
        "GetBucketPolicy",
        "GetBucketReplication",
        "GetBucketRequestPayment",
        "GetBucketTagging",
        "GetBucketVersioning",
        "GetBucketWebsite",
        "GetObject",
        "GetObjectAcl",
        "GetObjectTorrent",
        "HeadBucket",
        "HeadObject",
        "ListBuckets",
        "ListMultipartUploads",
        "ListObjectVersions",
        "ListObjects",
        "ListParts",
        "PutBucketAcl",
        "PutBucketCors",
        "PutBucketLifecycle",
        "PutBucketLogging",
        "PutBucketNotification",
        "PutBucketNotificationConfiguration",
        "PutBucketPolicy",
        "PutBucketReplication",
        "PutBucketRequestPayment",
        "PutBucketTagging",
        "PutBucketVersioning",
        "PutBucketWebsite",
        "PutObject",
        "PutObjectAcl",
        "RestoreObject",
        "UploadPart",
        "UploadPartCopy",
    ]
)

# Bucket sub-resources and the operation of each method on them.
_BUCKET = {
    "acl": ("GetBucketAcl", "PutBucketAcl", None),
    "cors": ("GetBucketCors", "PutBucketCors", "DeleteBucketCors"),
    "lifecycle": ("GetBucketLifecycle", "PutBucketLifecycle", "DeleteBucketLifecycle"),
    "location": ("GetBucketLocation", None, None),
    "logging": ("GetBucketLogging", "PutBucketLogging", None),
    "notification": (
        "GetBucketNotification GetBucketNotificationConfiguration",
        "PutBucketNotification PutBucketNotificationConfiguration",
        None,
    ),
    "policy": ("GetBucketPolicy", "PutBucketPolicy", "DeleteBucketPolicy"),
    "replication": ("GetBucketReplication", "PutBucketReplication", "DeleteBucketReplication"),
    "requestPayment": ("GetBucketRequestPayment", "PutBucketRequestPayment", None),
    "tagging": ("GetBucketTagging", "PutBucketTagging", "DeleteBucketTagging"),
    "versioning": ("GetBucketVersioning", "PutBucketVersioning", None),
    "website": ("GetBucketWebsite", "PutBucketWebsite", "DeleteBucketWebsite"),
    "versions": ("ListObjectVersions", None, None),
    "uploads": ("ListMultipartUploads", None, None),
}
_OBJECT = {
    "acl": ("GetObjectAcl", "PutObjectAcl", None, None),
    "tagging": ("GetObjectTagging", "PutObjectTagging", "DeleteObjectTagging", None),
    "torrent": ("GetObjectTorrent", None, None, None),
    "restore": (None, None, None, "RestoreObject"),
    "uploads": (None, None, None, "CreateMultipartUpload"),
}
_METHODS = ("GET", "PUT", "DELETE", "POST")


def operations_of(req: Request) -> set[str]:
    """The operation(s) a request to the S3 server is (an empty set for anything else)."""
    q = req.query.keys()
    if req.path in ("", "/"):
        return {"ListBuckets"} if req.method == "GET" else set()
    if req.key in (None, ""):
        return _bucket_operation(req.method, q)
    copy = "x-amz-copy-source" in req.headers
    if "uploadId" in q:
        by_method = {
            "GET": "ListParts",
            "PUT": "UploadPartCopy" if copy else "UploadPart",
            "POST": "CompleteMultipartUpload",
            "DELETE": "AbortMultipartUpload",
        }
        return {by_method[req.method]} if req.method in by_method else set()
    for sub, names in _OBJECT.items():
        if sub in q and req.method in _METHODS:
            name = names[_METHODS.index(req.method)]
            return {name} if name else set()
    plain = {
        "GET": "GetObject",
        "HEAD": "HeadObject",
        "PUT": "CopyObject" if copy else "PutObject",
        "DELETE": "DeleteObject",
    }
    return {plain[req.method]} if req.method in plain else set()


def _bucket_operation(method: str, q) -> set[str]:
    if method == "POST" and "delete" in q:
        return {"DeleteObjects"}
    for sub, names in _BUCKET.items():
        if sub in q:
            if method not in ("GET", "PUT", "DELETE"):
                return set()
            name = names[("GET", "PUT", "DELETE").index(method)]
            return set(name.split()) if name else set()
    plain = {"HEAD": "HeadBucket", "PUT": "CreateBucket", "DELETE": "DeleteBucket"}
    if method == "GET":
        return {"ListObjectsV2" if q and "list-type" in q else "ListObjects"}
    return {plain[method]} if method in plain else set()
