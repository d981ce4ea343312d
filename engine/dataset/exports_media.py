"""Media paths that ms-swift and LLaMA-Factory can open: `s3://` (or other remote) URIs made local for an export.

Two ways, combinable (a mapping wins over the download for the URIs it covers):
- `mappings`: a prefix of the URI replaced by a mounted path (`s3://bucket/raw/` -> `/mnt/raw/`, e.g. a
  mountpoint-s3 or s3fs-fuse mount on the training nodes); every mapped file must exist here.
- `download_dir`: each remote file copied to `DIR/<bucket>/<key>` through engine.core.storage's filesystem.
  Resumable: a file already there with the remote size is skipped; a copy lands under its name only when whole.
Local paths stay as they are (made absolute); a remote URI left with neither way is an error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from engine.core import storage

log = logging.getLogger(__name__)


@dataclass
class LocalisedMedia:
    """URI -> local path for every media file of an export, and what it took to get there."""

    paths: dict[str, str] = field(default_factory=dict)
    downloaded: int = 0
    skipped: int = 0  # already in the download folder with the remote size
    mapped: int = 0

    def __call__(self, uri: str) -> str:
        return self.paths[uri]


def parse_mapping(text: str) -> tuple[str, str]:
    """`s3://bucket/raw/=/mnt/raw/` -> ("s3://bucket/raw/", "/mnt/raw/")."""
    prefix, sep, target = text.partition("=")
    if not (sep and prefix and target):
        raise ValueError(f"media mapping {text!r}: expected PREFIX=PATH, e.g. s3://bucket/raw/=/mnt/raw/")
    return prefix, target


def map_prefix(uri: str, mappings: Mapping[str, str]) -> str | None:
    """The mounted path of `uri` under the longest matching prefix, or None."""
    for prefix in sorted(mappings, key=len, reverse=True):
        if uri.startswith(prefix):
            return os.path.join(mappings[prefix], uri[len(prefix):].lstrip("/"))
    return None


def download_path(uri: str, download_dir: str) -> str:
    return str(Path(download_dir).resolve() / storage.strip_protocol(uri))


def _download(uri: str, target: str) -> bool:
    """Copies `uri` to `target` unless a file of the remote size is there; True when it copied."""
    fs = storage.filesystem(uri)
    size = fs.info(uri)["size"]
    if os.path.exists(target) and os.path.getsize(target) == size:
        return False
    os.makedirs(os.path.dirname(target), exist_ok=True)
    partial = f"{target}.part"
    fs.get_file(uri, partial)
    os.replace(partial, target)
    return True


def localise(uris: Iterable[str], mappings: Mapping[str, str] | None = None, download_dir: str | None = None,
             workers: int = 8) -> LocalisedMedia:
    """Local paths for `uris`; raises ValueError naming the URIs that would not open."""
    out, pending, problems = LocalisedMedia(), {}, []
    for uri in sorted(set(uris)):
        mapped = map_prefix(uri, mappings or {})
        if mapped is not None:
            out.paths[uri], out.mapped = mapped, out.mapped + 1
            if not os.path.exists(mapped):
                problems.append(f"{uri} -> {mapped}: no such file")
        elif not storage.is_remote(uri):
            out.paths[uri] = storage.absolute(uri)
        elif download_dir:
            pending[uri] = out.paths[uri] = download_path(uri, download_dir)
        else:
            problems.append(f"{uri}: remote, and no mapping or download folder covers it")
    if problems:
        raise ValueError(f"{len(problems)} media paths would not open: {problems[:5]}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        copied = list(pool.map(lambda item: _download(*item), pending.items()))
    out.downloaded, out.skipped = sum(copied), len(copied) - sum(copied)
    log.info("[export] media: %d downloaded, %d already there, %d mapped", out.downloaded, out.skipped, out.mapped)
    return out
