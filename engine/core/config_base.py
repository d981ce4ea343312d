"""Configuration machinery shared by every typed config: strict sections, YAML + key=value loading.

Defaults live on the models only; YAML files override them and `key=value` arguments override the YAML.
Every error is reported at once, each naming the dotted field and the offending value.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """Raised with every problem found in a config, one per line."""


class ConfigSection(BaseModel):
    # Unknown keys are errors: a typo in a YAML file must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


def with_overrides(config: BaseModel, pairs: list[str]) -> Any:
    """A copy of `config` with dotted key=value overrides applied and the whole validated again."""
    try:
        return type(config).model_validate(_merge(config.model_dump(), parse_overrides(pairs)))
    except ValidationError as err:
        raise ConfigError(f"invalid overrides {pairs} ({err.error_count()} errors):\n{_format_errors(err)}") from None


# A value is not echoed for an unknown field (its name is the mistake, and a key typed into the wrong place, e.g.
# annotate.api_key=sk-..., would otherwise land in stderr and the job log) nor for a field named like a credential.
_CREDENTIAL_NAME = re.compile(r"(?i)key|token|secret|password|passwd|auth|bearer|credential")


def check_regex(value: str | None) -> str | None:
    """A field validator's body for an optional regular expression: compiles, or a readable error."""
    if value is not None:
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"not a regular expression: {err}") from None
    return value


def _format_errors(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "<config>"
        value = item.get("input")
        hidden = item["type"] == "extra_forbidden" or _CREDENTIAL_NAME.search(where)
        shown = "" if isinstance(value, dict) else " (value not shown)" if hidden else f" (got {value!r})"
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
