"""An on-disk cache of model responses, so a rerun never pays twice for the same question.

One small JSON file per key under a two-character fan-out folder (`ab/abcdef....json`), local or on S3.
Local writes go to a temporary file in the same folder and are renamed into place, so a killed run
leaves either the whole entry or nothing; on S3 a single PUT is already all-or-nothing.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from engine.core import storage

log = logging.getLogger(__name__)


class ResponseCache:
    def __init__(self, uri: str) -> None:
        self.uri = storage.absolute(uri)
        self._remote = storage.is_remote(self.uri)
        self._fs = storage.filesystem(self.uri)

    def path(self, key: str) -> str:
        if len(key) < 3 or not key.isalnum():
            # Keys become file names: anything else is a caller bug (and a path-traversal risk).
            raise ValueError(f"cache key must be an alphanumeric hash, got {key!r}")
        return storage.join(self.uri, key[:2], f"{key}.json")

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        try:
            raw = self._fs.cat_file(storage.strip_protocol(path))
        except FileNotFoundError:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            # Only a foreign or hand-edited file can get here (writes are atomic): treat it as a miss,
            # the next successful answer overwrites it.
            log.warning("ignoring unreadable cache entry %s", path)
            return None
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self.path(key)
        data = json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8")
        if self._remote:
            self._fs.pipe_file(storage.strip_protocol(path), data)
        else:
            _write_atomically(Path(path), data)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
