"""The preference table (the contract the DPO recipes read) and the per-query ledger behind it.

`OUTPUT/preferences/part-*.parquet` holds PREFERENCE_SCHEMA rows: one per kept (chosen, rejected) pair.
`OUTPUT/queries/part-*.parquet` holds one LEDGER_SCHEMA row per finished query (its K responses, every
judge score or failure, its winners/losers and why it was dropped, if it was): the resume checkpoint and
the source of summary.json. A query row travels through the Ray Data plan as a QUERY_SCHEMA row, whose
columns each stage fills in turn.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.compute as pc

from engine.core import storage
from engine.core.schema import ANNOTATION_FIELDS
from engine.dataset.writer import read_parts

PAIRS_DIR = "preferences"  # OUTPUT/preferences/part-*.parquet

PREFERENCE_SCHEMA = pa.schema([
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("source_video", pa.string()),
    pa.field("lang", pa.string()),
    pa.field("av_relation", pa.string()),
    pa.field("system", pa.string()),
    pa.field("prompt", pa.string()),
    pa.field("chosen", pa.string(), nullable=False),
    pa.field("rejected", pa.string(), nullable=False),
    pa.field("chosen_score", pa.float64()),
    pa.field("rejected_score", pa.float64()),
    pa.field("chosen_index", pa.int32()),  # sample index among the query's K responses
    pa.field("rejected_index", pa.int32()),
    pa.field("pairing", pa.string()),  # matched | cross
    pa.field("round", pa.int32()),
    pa.field("sampler", pa.string()),  # the SFT checkpoint that sampled the responses
    pa.field("judge", pa.string()),  # "model_id prompt@version"
    pa.field("pair_id", pa.string(), nullable=False),
    # AVEm-DPO (null unless avem.enabled and the writer succeeded for this chosen response)
    pa.field("rejected_vr", pa.string()),  # a real but emotion-irrelevant cue used as evidence
    pa.field("rejected_er", pa.string()),  # a typical cue of the emotion that the clip does not have
    pa.field("swap_clip_id", pa.string()),  # a clip with a different emotion: the rejected input of PMP
    pa.field("swap_source_uri", pa.string()),
    pa.field("swap_modality", pa.string()),  # video | audio | both
])

_INT_LIST, _FLOAT_LIST, _STR_LIST = pa.list_(pa.int32()), pa.list_(pa.float64()), pa.list_(pa.string())

# Selection fills the first block, each stage of the plan the next ones.
QUERY_SCHEMA = pa.schema([
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("source_video", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("lang", pa.string()),
    pa.field("system", pa.string()),
    pa.field("prompt", pa.string()),
    pa.field("av_relation", pa.string()),
    pa.field("av_intensity", pa.int32()),
    pa.field("emotion", pa.string()),  # see avem_data.emotion_of
    *[pa.field(name, pa.string()) for name in ANNOTATION_FIELDS],
    pa.field("round", pa.int32()),
    pa.field("swap_clip_id", pa.string()),
    pa.field("swap_source_uri", pa.string()),
    pa.field("swap_modality", pa.string()),
    # sample: K responses (null where one sample failed), or a query-level error (media)
    pa.field("responses", _STR_LIST),
    pa.field("sample_error", pa.string()),
    pa.field("sample_seconds", pa.float64()),
    pa.field("sampler", pa.string()),
    # judge: per response, aligned with `responses`; a score is null exactly when judge_fail is set
    pa.field("sed_ok", pa.list_(pa.bool_())),
    pa.field("logic", _INT_LIST),
    pa.field("evidence", _INT_LIST),
    pa.field("scores", _FLOAT_LIST),
    pa.field("judge_reason", _STR_LIST),
    pa.field("judge_fail", _STR_LIST),
    pa.field("judge_fail_detail", _STR_LIST),
    pa.field("judge", pa.string()),
    # rank: winners best first, losers worst first; kept pairs as two aligned index lists
    pa.field("status", pa.string()),  # paired | dropped
    pa.field("drop_reason", pa.string()),
    # engine.core.failures for a dropped query: retryable when judge calls the API failed (a later run samples and
    # judges it again), gave_up after max_attempts such runs, final otherwise (a verdict about the answers)
    pa.field("failure", pa.string()),
    pa.field("winners", _INT_LIST),
    pa.field("losers", _INT_LIST),
    pa.field("pair_chosen", _INT_LIST),
    pa.field("pair_rejected", _INT_LIST),
    pa.field("pairs_below_margin", pa.int32()),
    # avem: aligned with `winners` (null for a winner in no kept pair, or when the writer failed)
    pa.field("avem_vr", _STR_LIST),
    pa.field("avem_er", _STR_LIST),
    pa.field("avem_fail", _STR_LIST),
    pa.field("writer", pa.string()),
])

# The ledger keeps everything but the annotation text (it stays in the engine's clips/ table).
LEDGER_SCHEMA = pa.schema([
    *[f for f in QUERY_SCHEMA if f.name not in ANNOTATION_FIELDS],
    pa.field("run_id", pa.string()),
    pa.field("done_at", pa.timestamp("ms", tz="UTC")),
])


def pair_id(clip_id: str, round_: int, chosen_index: int, rejected_index: int) -> str:
    """Stable id of a pair: the same clip, round and sample indices give the same id in every run."""
    key = f"{clip_id}:{round_}:{chosen_index}:{rejected_index}"
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def empty_query(**values: object) -> dict[str, object]:
    """A query row with every QUERY_SCHEMA column present (nulls until a stage fills them)."""
    row: dict[str, object] = dict.fromkeys(QUERY_SCHEMA.names)
    unknown = set(values) - set(row)
    if unknown:
        raise KeyError(f"unknown query columns: {sorted(unknown)}")
    row.update(values)
    return row


def read_preferences(output: str, round_: int | None = None) -> pa.Table:
    """The preference table under OUTPUT/preferences/ (optionally one round): what the DPO recipes read."""
    table = read_parts(storage.join(output, PAIRS_DIR), PREFERENCE_SCHEMA)
    return table if round_ is None else table.filter(pc.equal(table.column("round"), round_))
