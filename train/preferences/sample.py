"""K responses per query from the SFT checkpoint with transformers (ThinkerGenerator), one actor per model.

The generator encodes exactly the prompt SFT trained on and seeds each clip's draws from (seed, clip_id), so
a query resampled after a crash gets the same K responses. A clip whose media cannot be decoded becomes the
query's `sample_error` (the query is then dropped as `sample_failed`), never a crashed actor.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from engine.core import storage
from engine.core.media import MediaError
from train.core.config import DataConfig
from train.inference.generation import GenerationConfig
from train.preferences.config import SamplerModelConfig
from train.preferences.schema import QUERY_SCHEMA

log = logging.getLogger(__name__)
MODEL_CACHE = Path(os.environ.get("SABER_MODEL_CACHE", Path(tempfile.gettempdir()) / "saber_models"))


def local_model(path: str) -> str:
    """A local folder for a checkpoint: local paths as they are; s3:// (etc.) copied once per node into
    MODEL_CACHE (to a temporary name, then renamed, so a half-copied folder is never loaded)."""
    if not storage.is_remote(path):
        return path
    target = MODEL_CACHE / hashlib.sha256(path.encode()).hexdigest()[:16]
    if not target.exists():
        MODEL_CACHE.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=MODEL_CACHE, prefix="partial-"))
        storage.filesystem(path).get(storage.strip_protocol(path).rstrip("/") + "/", str(staging), recursive=True)
        try:
            staging.rename(target)
        except OSError:  # another actor on this node finished first
            shutil.rmtree(staging, ignore_errors=True)
        log.info("copied %s to %s", path, target)
    return str(target)


def sample_query(generator: Any, query: dict[str, Any], sampling: GenerationConfig, sampler: str) -> None:
    started = time.perf_counter()
    try:
        query["responses"] = generator.generate(query, sampling)
    except MediaError as err:
        query["sample_error"] = f"{err.reason}: {err.detail}"[:500]
        log.warning("sampling %s failed: %s", query["clip_id"], query["sample_error"])
    query["sample_seconds"] = round(time.perf_counter() - started, 4)
    query["sampler"] = sampler


class SampleBatch:
    """Actor-pool callable: query rows -> the same rows with `responses` (K samples) or `sample_error`."""

    def __init__(self, model_path: str, data: DataConfig, sampling: GenerationConfig, model: SamplerModelConfig,
                 torch_threads: int | None = None) -> None:
        import torch

        from train.inference.generation import ThinkerGenerator

        if torch_threads:
            # A CPU actor owns `num_cpus` cores: more intra-op threads only fight over them.
            torch.set_num_threads(torch_threads)
        self.generator = ThinkerGenerator(local_model(model_path), data, device=model.device, dtype=model.dtype,
                                          attn_implementation=model.attn_implementation)
        self.sampling = sampling
        self.sampler = model_path

    def __call__(self, table: pa.Table) -> pa.Table:
        queries = table.to_pylist()
        for query in queries:
            sample_query(self.generator, query, self.sampling, self.sampler)
        return pa.Table.from_pylist(queries, schema=QUERY_SCHEMA)
