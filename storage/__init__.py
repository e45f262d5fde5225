"""Blob storage behind one small interface: S3 (boto3) and a local directory.

Imports nothing of ours and keeps boto3 out of import time (it is loaded by build_s3_client).
"""

from storage.base import BlobStore, ObjectInfo
from storage.blobs import Blobs, StoredBlob, open_blobs
from storage.errors import (
    AccessDeniedError,
    InputTooLargeError,
    InvalidUriError,
    ObjectNotFoundError,
    SchemeNotAllowedError,
    StorageError,
    TransientStorageError,
)
from storage.local import LocalStore, atomic_file
from storage.s3 import S3Store, build_s3_client
from storage.uri import is_s3_uri, parse_s3_uri, uri_scheme

__all__ = [
    "AccessDeniedError",
    "BlobStore",
    "Blobs",
    "InputTooLargeError",
    "InvalidUriError",
    "LocalStore",
    "ObjectInfo",
    "ObjectNotFoundError",
    "S3Store",
    "SchemeNotAllowedError",
    "StorageError",
    "StoredBlob",
    "TransientStorageError",
    "atomic_file",
    "build_s3_client",
    "is_s3_uri",
    "open_blobs",
    "parse_s3_uri",
    "uri_scheme",
]
