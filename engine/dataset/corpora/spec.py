"""A corpus layout as data: the YAML spec the generic adapter (engine.dataset.corpora.adapter) reads.

A spec says which files under the corpus root are clips (globs and a regex over the path relative to the root,
whose named groups become variables), which files to count and skip (audio-only folders), an optional label file
joined to the clips by a key, code tables that turn raw codes into names (an unknown code makes the entry
malformed), and templates that build the manifest columns from the variables:

    label: "{emotion}"                   # Python format fields over the variables; a field that is missing or
    speaker: "actor{actor_raw}"          # empty makes the whole value null. `{x_raw}` is x before its code table.
    extras: {intensity: "{intensity}"}   # the corpus's own extras, one JSON column in the manifest

Built-in variables: `path` (relative to the root), `name`, `stem`, `parent` (the folder's name). Keys (media.key,
labels.key, pair.key) are rendered after the code tables, so two spellings of one thing (MELD's folder
`train_splits` and its label file `train_sent_emo.csv`) can meet in one key. Built-in specs live in
engine/dataset/corpora/specs/<name>.yaml; a user adds a corpus by writing one (see specs/README.md).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from engine.core.config_base import ConfigError, ConfigSection, check_regex, load_config

SPEC_DIR = Path(__file__).resolve().parent / "specs"

Layout = Literal["confirmed", "partly_confirmed", "unconfirmed"]


def _check_template(value: str | None) -> str | None:
    if value is not None:
        try:
            list(string.Formatter().parse(value))
        except ValueError as err:
            raise ValueError(f"not a format template: {err}") from None
    return value


class MediaSpec(ConfigSection):
    """The clips: files matching any glob whose relative path matches `pattern` (searched, not anchored)."""

    glob: list[str] = Field(min_length=1)
    pattern: str
    key: str | None = None  # the join key to label rows / paired files; required when the spec has labels

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str) -> str | None:
        return check_regex(value)

    @field_validator("key")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        return _check_template(value)


class SkipFiles(ConfigSection):
    """Files counted under `reason` and never read as clips, e.g. the audio-only .wav folders."""

    glob: str
    reason: str


class SkipWhen(ConfigSection):
    """Clips skipped (counted under `reason`) when the raw value of `var` is one of `values` (or, with
    `invert`, is none of them): RAVDESS's video-only modality code, MEAD's camera views."""

    var: str
    values: list[str] = Field(min_length=1)
    reason: str
    invert: bool = False


class PairSpec(ConfigSection):
    """Separate audio files paired with a clip by key: the paired file's URI goes into the extras under `extra`;
    files of this kind with no clip are skipped as `unpaired_reason`."""

    glob: str
    pattern: str
    key: str
    extra: str = "audio_uri"
    unpaired_reason: str = "audio_only"

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str) -> str | None:
        return check_regex(value)

    @field_validator("key")
    @classmethod
    def _template(cls, value: str) -> str | None:
        return _check_template(value)


class LabelSpec(ConfigSection):
    """Label files joined to the clips by key. `format`: csv (header row), jsonl (one object a line), json
    (`records`: the dotted path to a list of objects) or lines (`line_pattern`'s named groups; lines it does not
    match are not labels and are ignored, e.g. MSP-IMPROV's per-rater lines)."""

    files: list[str] = Field(min_length=1)
    format: Literal["csv", "jsonl", "json", "lines"]
    key: str
    file_pattern: str | None = None  # regex over the label file's relative path; named groups become variables
    line_pattern: str | None = None
    records: str | None = None
    delimiter: str = ","
    # A clip without a label row: malformed (listed in the report), skipped (an unlabeled pool, e.g. MER's
    # 120K unlabeled samples next to its labeled ones) or kept with null labels.
    unlabeled: Literal["malformed", "skip", "keep"] = "malformed"
    # Several label rows with one key: malformed (the first is used, the others listed) or collect (MEmoR: one
    # clip, one annotation per character and moment; see engine.dataset.corpora.adapter).
    duplicates: Literal["malformed", "collect"] = "malformed"

    @field_validator("key")
    @classmethod
    def _template(cls, value: str) -> str | None:
        return _check_template(value)

    @field_validator("file_pattern", "line_pattern")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        return check_regex(value)

    @model_validator(mode="after")
    def _format_options(self) -> LabelSpec:
        if self.format == "lines" and not self.line_pattern:
            raise ValueError("format 'lines' needs a line_pattern")
        return self


class CorpusSpec(ConfigSection):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    dataset: str  # the manifest's `dataset` value
    lang: str  # a template: "en", or "{language}" with a code table
    layout: Layout
    sources: list[str] = Field(min_length=1)  # where the layout was confirmed, or why it could not be
    notes: str = ""
    media: MediaSpec
    labels: LabelSpec | None = None
    skip_files: list[SkipFiles] = []
    skip_when: list[SkipWhen] = []
    pair: PairSpec | None = None
    codes: dict[str, dict[str, str]] = {}
    label: str | None = None
    emotion: str | None = "{label}"  # null: the corpus's labels are not emotions (CH-SIMS v2's sentiment)
    speaker: str | None = None
    source_video: str | None = None  # null: every clip is its own recording
    corpus_split: str | None = None
    extras: dict[str, str] = {}
    unified: dict[str, str | None] = {}  # additions to engine.dataset.corpora.emotions.EMOTION_TABLE for this corpus

    @field_validator("lang", "label", "emotion", "speaker", "source_video", "corpus_split")
    @classmethod
    def _templates(cls, value: str | None) -> str | None:
        return _check_template(value)

    @field_validator("extras")
    @classmethod
    def _extra_templates(cls, value: dict[str, str]) -> dict[str, str]:
        for template in value.values():
            _check_template(template)
        return value

    @model_validator(mode="after")
    def _keys_given(self) -> CorpusSpec:
        if (self.labels or self.pair) and not self.media.key:
            raise ValueError("media.key is required when the spec joins labels or paired files")
        return self


def builtin_specs() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))


def spec_path(corpus: str) -> Path:
    """A built-in corpus name (engine/dataset/corpora/specs/<name>.yaml) or the path of a user's spec file."""
    if corpus.endswith((".yaml", ".yml")):
        return Path(corpus)
    path = SPEC_DIR / f"{corpus}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown corpus {corpus!r}: built-in specs are {', '.join(builtin_specs())}, or give "
                          "the path of a spec .yaml")
    return path


def load_spec(corpus: str, overrides: list[str] | None = None) -> CorpusSpec:
    """A spec by built-in name or path, with `key=value` overrides (e.g. `media.glob=[clips/*.mp4]`); every
    problem is reported at once (ConfigError), naming the field."""
    path = spec_path(corpus)
    if not path.exists():
        raise ConfigError(f"corpus spec {path} does not exist")
    return load_config(CorpusSpec, path, overrides)


def spec_summary(spec: CorpusSpec) -> dict[str, Any]:
    return {"name": spec.name, "dataset": spec.dataset, "layout": spec.layout, "sources": spec.sources,
            "notes": spec.notes}
