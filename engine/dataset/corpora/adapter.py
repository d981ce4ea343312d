"""The generic corpus adapter: a corpus root + a spec (engine.dataset.corpora.spec) -> manifest rows and a report.

Steps, each a small function below: list every file under the root once (local or s3://, through
engine.core.storage); sort them into label files, files to count and skip, paired audio and clips; read each clip's
variables from its path; skip, check codes; read and index the label rows; join; render the manifest columns.
Nothing is dropped silently: every file that was meant to be a clip ends up a row, a counted skip
(`skipped`: audio-only, video-only, unlabeled pool) or a malformed entry that the report lists with the reason.

Malformed reasons: unparsed_name (a clip whose path the pattern does not match), unknown_code (a code outside its
table, e.g. RAVDESS emotion 09), no_key, media_without_label, label_without_media, duplicate_label_row,
bad_label_row / bad_label_file / unparsed_label_file (from engine.dataset.corpora.labels).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import fsspec

from engine.core import storage
from engine.core.config_base import ConfigError
from engine.dataset.corpora.emotions import UnknownEmotionWord, unified_emotion
from engine.dataset.corpora.labels import Entry, LabelRow, read_labels
from engine.dataset.corpora.spec import CorpusSpec, spec_summary

Values = dict[str, str | None]
_FORMATTER = string.Formatter()


class CorpusError(ValueError):
    """The corpus cannot be read at all (root missing or holding no clip)."""


@dataclass
class Clip:
    rel: str
    values: Values  # the path's variables, after the code tables
    key: str | None = None

    @property
    def context(self) -> Values:
        """Built-ins under the path's variables. Label columns go between the two when joined (build_row): a
        label file's `name` column (MER's) is not hidden by the built-in `name`, but is by a path variable."""
        return {**builtin_values(self.rel), **self.values}


@dataclass
class Tally:
    files: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    paired: Counter[str] = field(default_factory=Counter)
    malformed: list[Entry] = field(default_factory=list)
    unmapped: Counter[str] = field(default_factory=Counter)
    label_lines_ignored: int = 0


@dataclass
class CorpusResult:
    rows: list[dict[str, Any]]
    report: dict[str, Any]


# ---- small pieces --------------------------------------------------------------------------------------------
def glob_regex(glob: str) -> re.Pattern[str]:
    """A path glob as a regex over relative paths: `**/` any folders (or none), `*` and `?` within one name."""
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            char = glob[i]
            out.append("[^/]*" if char == "*" else "[^/]" if char == "?" else re.escape(char))
            i += 1
    return re.compile("".join(out) + r"\Z")


def render(template: str | None, values: Values) -> str | None:
    """A template over the variables; None when the template is None or any field it names is missing/empty."""
    if template is None:
        return None
    for _, name, _, _ in _FORMATTER.parse(template):
        if name is not None and values.get(re.split(r"[.\[]", name)[0]) in (None, ""):
            return None
    try:
        text = _FORMATTER.vformat(template, (), values)
    except (ValueError, IndexError, AttributeError) as err:
        raise ConfigError(f"template {template!r}: {err}") from None
    return text.strip() or None


_INT = re.compile(r"-?(?:0|[1-9]\d*)\Z")
_FLOAT = re.compile(r"-?\d+\.\d+(?:[eE]-?\d+)?\Z")


def typed(text: str) -> Any:
    """Extras keep numbers as numbers ("0.6" -> 0.6, "3" -> 3; "01" stays text); NaN becomes null."""
    if text.lower() == "nan":
        return None
    if _INT.match(text):
        return int(text)
    return float(text) if _FLOAT.match(text) else text


def apply_codes(values: Values, codes: dict[str, dict[str, str]]) -> tuple[Values, list[str]]:
    """Raw codes -> names for every variable with a table (the raw value stays as `<var>_raw`); returns the
    variables and the unknown codes as `var='raw'`."""
    out, unknown = dict(values), []
    for var, table in codes.items():
        raw = out.get(var)
        if raw in (None, ""):
            continue
        out[f"{var}_raw"] = raw
        if raw in table:
            out[var] = table[raw]
        else:
            unknown.append(f"{var}={raw!r}")
    return out, unknown


# ---- the steps -----------------------------------------------------------------------------------------------
def list_files(root: str) -> tuple[fsspec.AbstractFileSystem, str, list[str]]:
    fs = storage.filesystem(root)
    root_path = storage.strip_protocol(root).rstrip("/")
    if not fs.exists(root_path):
        raise CorpusError(f"corpus root {root!r} does not exist")
    prefix = root_path + "/"
    return fs, root_path, sorted(p[len(prefix):] for p in fs.find(root_path) if p.startswith(prefix))


def classify(files: list[str], spec: CorpusSpec, tally: Tally) -> dict[str, list[str]]:
    """Label files first, then files to skip, paired audio, clips; anything else is not the corpus's business."""
    label_globs = [glob_regex(g) for g in spec.labels.files] if spec.labels else []
    skip_globs = [(glob_regex(s.glob), s.reason) for s in spec.skip_files]
    pair_glob = glob_regex(spec.pair.glob) if spec.pair else None
    media_globs = [glob_regex(g) for g in spec.media.glob]
    groups: dict[str, list[str]] = {"labels": [], "pair": [], "media": []}
    for rel in files:
        if any(g.match(rel) for g in label_globs):
            groups["labels"].append(rel)
        elif reason := next((r for g, r in skip_globs if g.match(rel)), None):
            tally.skipped[reason] += 1
        elif pair_glob and pair_glob.match(rel):
            groups["pair"].append(rel)
        elif any(g.match(rel) for g in media_globs):
            groups["media"].append(rel)
    return groups


def builtin_values(rel: str) -> Values:
    name = rel.rsplit("/", 1)[-1]
    parent = rel.rsplit("/", 2)[-2] if "/" in rel else ""
    return {"path": rel, "name": name, "stem": name.rsplit(".", 1)[0], "parent": parent}


def parse_clips(media: list[str], spec: CorpusSpec, tally: Tally) -> tuple[list[Clip], set[str]]:
    """Clips with their variables, plus the join keys of clips skipped on purpose (their label rows are not
    `label_without_media`)."""
    pattern = re.compile(spec.media.pattern)
    clips, skipped_keys = [], set()
    for rel in media:
        match = pattern.search(rel)
        if not match:
            tally.malformed.append(Entry("unparsed_name", rel, f"does not match {spec.media.pattern!r}"))
            continue
        raw = {k: v for k, v in match.groupdict().items() if v is not None}
        values, unknown = apply_codes(raw, spec.codes)
        key = render(spec.media.key, {**builtin_values(rel), **values})
        reason = _skip_reason(raw, spec)
        if reason:
            tally.skipped[reason] += 1
            if key:
                skipped_keys.add(key)
        elif unknown:
            tally.malformed.append(Entry("unknown_code", rel, ", ".join(unknown)))
        elif spec.media.key and key is None:
            tally.malformed.append(Entry("no_key", rel, f"media.key {spec.media.key!r} names an empty variable"))
        else:
            clips.append(Clip(rel, values, key))
    return clips, skipped_keys


def _skip_reason(raw: Values, spec: CorpusSpec) -> str | None:
    for rule in spec.skip_when:
        hit = raw.get(rule.var) in rule.values
        if hit != rule.invert:
            return rule.reason
    return None


def index_labels(fs: fsspec.AbstractFileSystem, root_path: str, files: list[str], spec: CorpusSpec,
                 tally: Tally) -> tuple[dict[str, list[LabelRow]], set[str]]:
    """Label rows by join key, and the keys whose row was unusable (their clip is not counted a second time)."""
    assert spec.labels is not None
    read = read_labels(fs, root_path, files, spec.labels)
    tally.malformed += read.malformed
    tally.label_lines_ignored += read.lines_ignored
    by_key: dict[str, list[LabelRow]] = defaultdict(list)
    bad_keys: set[str] = set()
    for row in read.rows:
        values, unknown = apply_codes(row.values, spec.codes)
        key = render(spec.labels.key, values)
        if key is None:
            tally.malformed.append(Entry("no_key", row.where, f"labels.key {spec.labels.key!r} names an empty field"))
        elif unknown:
            tally.malformed.append(Entry("unknown_code", row.where, ", ".join(unknown)))
            bad_keys.add(key)
        elif by_key[key] and spec.labels.duplicates == "malformed":
            first = by_key[key][0].where
            tally.malformed.append(Entry("duplicate_label_row", row.where, f"key {key!r} first at {first}"))
        else:
            by_key[key].append(LabelRow(values, row.where))
    return dict(by_key), bad_keys


def index_pairs(files: list[str], spec: CorpusSpec, tally: Tally) -> dict[str, str]:
    assert spec.pair is not None
    pattern, pairs = re.compile(spec.pair.pattern), {}
    for rel in files:
        match = pattern.search(rel)
        values = apply_codes({**builtin_values(rel), **(match.groupdict() if match else {})}, spec.codes)[0]
        key = render(spec.pair.key, values) if match else None
        if key is None:
            tally.skipped[spec.pair.unpaired_reason] += 1
        else:
            pairs[key] = rel
    return pairs


def join(clips: list[Clip], labels: dict[str, list[LabelRow]] | None, bad_keys: set[str], skipped_keys: set[str],
         spec: CorpusSpec, tally: Tally) -> list[tuple[Clip, list[LabelRow]]]:
    """Each clip with its label rows (none without a label spec); clips and rows left over are reported."""
    if labels is None or spec.labels is None:
        return [(clip, []) for clip in clips]
    joined, used = [], set()
    for clip in clips:
        rows = labels.get(clip.key or "", [])
        if rows:
            used.add(clip.key)
            joined.append((clip, rows))
        elif clip.key in bad_keys:
            used.add(clip.key)  # its label row is already listed as malformed
        elif spec.labels.unlabeled == "skip":
            tally.skipped["unlabeled"] += 1
        elif spec.labels.unlabeled == "keep":
            joined.append((clip, []))
        else:
            tally.malformed.append(Entry("media_without_label", clip.rel, f"no label row with key {clip.key!r}"))
    for key in sorted(set(labels) - used - skipped_keys):
        tally.malformed.append(Entry("label_without_media", labels[key][0].where, f"no clip with key {key!r}"))
    return joined


def build_row(clip: Clip, rows: list[LabelRow], spec: CorpusSpec, root: str, root_path: str,
              pairs: dict[str, str], sidecars: set[str], tally: Tally) -> dict[str, Any]:
    """One manifest row. With several label rows (labels.duplicates: collect), label, emotion and speaker are set
    only when every row agrees, and every row's columns are kept in the extras under `targets`."""
    variants = [_columns({**builtin_values(clip.rel), **row.values, **clip.values}, spec, tally) for row in rows] or [
        _columns(clip.context, spec, tally)]
    first = variants[0]
    agreed = {k: first[k] if all(v[k] == first[k] for v in variants) else None for k in first if k != "extras"}
    extras = dict(first["extras"])
    if len(variants) > 1:
        extras = {"targets": [{k: v[k] for k in ("label", "emotion", "speaker")} | v["extras"] for v in variants]}
    if spec.pair and clip.key in pairs:
        extras[spec.pair.extra] = storage.as_uri(root, f"{root_path}/{pairs[clip.key]}")
        tally.paired[spec.pair.extra] += 1
    sidecar = clip.rel.rsplit(".", 1)[0] + ".json"
    return {
        "uri": storage.as_uri(root, f"{root_path}/{clip.rel}"),
        "dataset": spec.dataset,
        "lang": agreed["lang"],
        "label": agreed["label"],
        "emotion": agreed["emotion"],
        "speaker": _namespaced(spec, agreed["speaker"]),
        "source_video": _namespaced(spec, agreed["source_video"] or clip.rel),
        "corpus_split": agreed["corpus_split"],
        "corpus_extras": json.dumps(extras, ensure_ascii=False, sort_keys=True) if extras else None,
        "annotation_uri": storage.as_uri(root, f"{root_path}/{sidecar}") if sidecar in sidecars else None,
    }


def _columns(values: Values, spec: CorpusSpec, tally: Tally) -> dict[str, Any]:
    label = render(spec.label, values)
    return {
        "lang": render(spec.lang, values),
        "label": label,
        # `{label}` in the emotion template is the rendered corpus label (the default: emotion = unified(label)).
        "emotion": _emotion(render(spec.emotion, {**values, "label": label}), spec, tally),
        "speaker": render(spec.speaker, values),
        "source_video": render(spec.source_video, values),
        "corpus_split": render(spec.corpus_split, values),
        "extras": {k: typed(v) for k, t in spec.extras.items() if (v := render(t, values)) is not None},
    }


def _emotion(word: str | None, spec: CorpusSpec, tally: Tally) -> str | None:
    if word is None:
        return None
    try:
        return unified_emotion(word, spec.unified)
    except UnknownEmotionWord:
        tally.unmapped[word] += 1
        return None


def _namespaced(spec: CorpusSpec, value: str | None) -> str | None:
    """Speakers and recordings carry the corpus name: RAVDESS's actor 01 is not CREMA-D's."""
    return f"{spec.name}/{value}" if value else None


def prepare_corpus(spec: CorpusSpec, root: str, sidecar_annotations: bool = False) -> CorpusResult:
    """Manifest rows (sorted by URI) and the corpus's report section for one corpus root."""
    root = storage.absolute(root)
    fs, root_path, files = list_files(root)
    tally = Tally(files=len(files))
    groups = classify(files, spec, tally)
    clips, skipped_keys = parse_clips(groups["media"], spec, tally)
    labels, bad_keys = index_labels(fs, root_path, groups["labels"], spec, tally) if spec.labels else (None, set())
    pairs = index_pairs(groups["pair"], spec, tally) if spec.pair else {}
    for key in sorted(set(pairs) - {c.key for c in clips}):  # audio of no clip (or of a clip skipped on purpose)
        tally.skipped[spec.pair.unpaired_reason if spec.pair else "unpaired"] += 1
        del pairs[key]
    sidecars = set(files) if sidecar_annotations else set()
    rows = [build_row(clip, label_rows, spec, root, root_path, pairs, sidecars, tally)
            for clip, label_rows in join(clips, labels, bad_keys, skipped_keys, spec, tally)]
    rows.sort(key=lambda r: r["uri"])
    return CorpusResult(rows, corpus_report(spec, root, tally, rows, len(groups["media"]), len(groups["labels"])))


def corpus_report(spec: CorpusSpec, root: str, tally: Tally, rows: list[dict[str, Any]], clip_files: int,
                  label_files: int) -> dict[str, Any]:
    malformed = Counter(e.reason for e in tally.malformed)
    return {
        **spec_summary(spec), "root": root,
        "files": {"seen": tally.files, "clip_files": clip_files, "label_files": label_files},
        "rows": len(rows),
        "skipped": dict(sorted(tally.skipped.items())),
        "paired": dict(tally.paired),
        "malformed": dict(sorted(malformed.items())),
        "malformed_entries": [e.as_dict() for e in tally.malformed],
        "labels": dict(sorted(Counter(r["label"] or "(none)" for r in rows).items())),
        "emotions": dict(sorted(Counter(r["emotion"] or "(none)" for r in rows).items())),
        "unmapped_labels": dict(sorted(tally.unmapped.items())),
        "speakers": len({r["speaker"] for r in rows if r["speaker"]}),
        "rows_without_speaker": sum(r["speaker"] is None for r in rows),
        "recordings": len({r["source_video"] for r in rows}),
        "corpus_splits": dict(sorted(Counter(r["corpus_split"] or "(none)" for r in rows).items())),
        "label_lines_ignored": tally.label_lines_ignored,
    }
