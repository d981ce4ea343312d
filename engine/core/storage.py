"""Local and S3 storage through fsspec, with one place that knows how to reach S3.

Credentials and endpoints come only from the environment (AWS_* variables, an instance role, or
AWS_ENDPOINT_URL / SABER_S3_ENDPOINT_URL for an S3-compatible server such as MinIO or moto).
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import fsspec
import pyarrow.fs as pafs


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def s3_endpoint() -> str | None:
    return os.environ.get("SABER_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")


def filesystem(uri: str) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem for a URI; S3 honours a custom endpoint from the environment."""
    protocol = uri.split("://", 1)[0] if is_remote(uri) else "file"
    if protocol in {"s3", "s3a"}:
        endpoint = s3_endpoint()
        kwargs = {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
        # No listing cache: a resume must see the part files a killed run left behind.
        return fsspec.filesystem("s3", use_listings_cache=False, **kwargs)
    return fsspec.filesystem(protocol)


def strip_protocol(uri: str) -> str:
    if uri.startswith("file://"):
        return uri[len("file://"):]
    return uri.split("://", 1)[1] if is_remote(uri) else uri


def absolute(uri: str) -> str:
    """Local paths made absolute (Ray workers may run elsewhere on the same machine); URIs untouched."""
    return uri if is_remote(uri) else str(Path(strip_protocol(uri)).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        protocol, path = base.split("://", 1)
        return f"{protocol}://{posixpath.join(path, *parts)}"
    return str(Path(base, *parts))


def as_uri(protocol_of: str, path: str) -> str:
    """Re-attaches the protocol of `protocol_of` to a bare path returned by an fsspec listing."""
    if is_remote(protocol_of):
        return f"{protocol_of.split('://', 1)[0]}://{path}"
    return path


def arrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem + path for Ray Data readers/writers, sharing the fsspec configuration."""
    fs = filesystem(uri)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), strip_protocol(uri)
