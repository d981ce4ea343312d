"""The build: list inputs, skip finished clips, stream the plan into clips/, write the report.

Called by jobs/build_saber.py inside a Ray driver (local Ray or `ray job submit`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine.core import storage
from engine.core.config import EngineConfig, dump_config
from engine.core.failures import RETRYABLE
from engine.core.parts import iter_parts
from engine.core.schema import CLIP_SCHEMA
from engine.dataset import curation, holdout, neardup, relation_stream, split_plan
from engine.dataset.card import write_card
from engine.dataset.ledger import AttemptLedger
from engine.dataset.pipeline import build_plan, funnel_stages, judges_in_stream, minimum_resources, relation_plan
from engine.dataset.report import build_report, write_report
from engine.dataset.sources import list_source
from engine.dataset.writer import ClipTableWriter, read_clip_table
from engine.ops import launch, monitoring

log = logging.getLogger(__name__)

# What the step after the stream holds of every finished clip (with `annotated`, read from video_desc part by part):
# the verdicts, what the report and the card count, and what the split groups by. No annotation text, transcript or
# fingerprint: those are read part by part where a judge prompt or a record needs them.
LIGHT_COLUMNS = ("clip_id", "source_uri", "source_video", "speaker", "dataset", "lang", "label", "status",
                 "reject_stage", "reject_reason", "failure", "duration_s", "snr_db", "asr_wer", "duplicate_of")
# The columns a curator's mark changes (engine.dataset.curation.apply_curation).
CURATED_COLUMNS = ("status", "reject_stage", "reject_reason", "reject_detail", "failure", "provenance")


@dataclass
class Progress:
    """A one-line summary every `every` seconds, beside Ray Data's own progress bars."""

    total: int
    every: float
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    kept: int = 0
    retry: int = 0  # failed for a reason of the world (engine.core.failures): the next run does them again
    media_seconds: float = 0.0
    _last: float = 0.0

    def update(self, batch: pa.Table) -> None:
        self.done += batch.num_rows
        self.kept += pc.sum(pc.equal(batch.column("status"), "kept")).as_py() or 0
        self.retry += pc.sum(pc.equal(batch.column("failure"), RETRYABLE)).as_py() or 0
        self.media_seconds += pc.sum(batch.column("duration_s")).as_py() or 0.0
        if time.monotonic() - self._last >= self.every:
            self._last = time.monotonic()
            log.info("%s", self.line())

    @property
    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    def line(self) -> str:
        rejected = self.done - self.kept - self.retry
        return (f"[build_saber] {self.done}/{self.total} clips, kept {self.kept}, rejected {rejected}, "
                f"to retry {self.retry}, "
                f"{self.done / self.elapsed:.2f} clips/s, {self.media_seconds / self.elapsed:.1f} media-s/s")


def save_config(config: EngineConfig) -> None:
    fs = storage.filesystem(config.output)
    base = storage.strip_protocol(config.output)
    fs.makedirs(base, exist_ok=True)
    fs.pipe_file(f"{base}/config.yaml", dump_config(config).encode())


def pending_sources(config: EngineConfig, writer: ClipTableWriter) -> tuple[pa.Table, int, int]:
    """(sources still to process, number of inputs, number already finished by earlier runs)."""
    source = list_source(config.input, config.dataset, config.lang, config.source_video_pattern)
    if config.limit:
        source = source.slice(0, config.limit)
    finished = writer.finished_ids()
    mask = pc.invert(pc.is_in(source.column("clip_id"), value_set=pa.array(sorted(finished), pa.string())))
    return source.filter(mask), source.num_rows, source.num_rows - int(pc.sum(mask).as_py() or 0)


def warn_if_pools_do_not_fit(config: EngineConfig) -> None:
    """A plan whose minimum actor pools exceed the cluster waits until the autoscaler adds nodes, and forever
    on a fixed cluster: say so up front, naming the numbers, instead of hanging silently."""
    import ray

    need, have = minimum_resources(config), ray.cluster_resources()
    for resource, amount in need.items():
        if amount > have.get(resource, 0.0) + 1e-9:
            log.warning("[build_saber] the plan's minimum pools need %.2f %s but the cluster has %.2f now: it "
                        "will wait for the autoscaler (on a fixed cluster, lower resources.* / *.pool.num_cpus "
                        "or concurrency)", amount, resource, have.get(resource, 0.0))


def hint_if_ray_overhead_dominates(clips: int) -> None:
    """Say so when a small build runs on a local Ray of at most 2 CPUs and no GPU (engine.ops.launch.in_process_hint):
    only a log line, the build runs as it is."""
    import ray

    have = ray.cluster_resources()
    hint = launch.in_process_hint(True, have.get("CPU", 0.0), have.get("GPU", 0.0), clips, launch.engine_speedups())
    if hint:
        log.info("[build_saber] %s", hint)


def relation_sink(config: EngineConfig, run_id: str) -> relation_stream.RelationSink:
    """Where the stream's relation verdicts go; earlier builds' retryable failures count toward max_attempts."""
    earlier = Counter[str]()
    if judges_in_stream(config):
        earlier = holdout.retry_counts(holdout.read_relations(config.output))
    return relation_stream.RelationSink(config.output, run_id, config.max_attempts, earlier)


def run_build(config: EngineConfig, *, local_ray: bool = False) -> dict[str, Any]:
    """`local_ray`: the caller started the Ray this runs on (engine.ops.launch.starts_local_cluster), which allows
    the hint of a small build on a small machine."""
    config = config.model_copy(update={"input": storage.absolute(config.input),
                                       "output": storage.absolute(config.output)})
    save_config(config)
    writer = ClipTableWriter(config.output, config.flush_rows, config.flush_seconds, max_attempts=config.max_attempts)
    todo, total, skipped = pending_sources(config, writer)
    log.info("[build_saber] %d inputs, %d finished by earlier runs, %d to process (run %s)",
             total, skipped, todo.num_rows, writer.run_id)
    monitoring.record_build_start(todo.num_rows, skipped)  # Prometheus/dashboard; a no-op without Ray
    progress = Progress(total=todo.num_rows, every=config.summary_seconds)
    relations = relation_sink(config, writer.run_id)
    if todo.num_rows:
        warn_if_pools_do_not_fit(config)
        if local_ray:
            hint_if_ray_overhead_dominates(todo.num_rows)
        for batch in build_plan(todo, config).iter_batches(batch_format="pyarrow", batch_size=None):
            batch, verdicts = relation_stream.split_batch(batch)
            committed = writer.parts_written
            writer.add(batch)
            relations.add(verdicts, clip_part_committed=writer.parts_written > committed)
            progress.update(batch)
            monitoring.record_clip_batch(batch)
    writer.close()
    relations.flush()  # after the last clip part: a verdict is never saved ahead of its clip's part
    log.info("%s", progress.line())
    unprocessed = todo.num_rows - progress.done
    if unprocessed:  # blocks Ray Data dropped under media.max_errored_blocks: not finished, the next run does them
        log.warning("[build_saber] %d clips came back from no block (errored blocks, see Ray's log): they are not "
                    "finished; run the same command again to process them", unprocessed)
    run = {
        "run_id": writer.run_id,
        "processed": progress.done,
        "skipped_already_done": skipped,
        "duplicates_dropped": writer.duplicates_dropped,
        "retryable_failures": writer.retries_recorded,
        "relation_verdicts_in_stream": relations.saved,
        "unprocessed": unprocessed,
        "seconds": round(progress.elapsed, 3),
        "clips_per_s": round(progress.done / progress.elapsed, 4),
        "media_seconds_per_s": round(progress.media_seconds / progress.elapsed, 4),
    }
    return finish_build(config, run, writer.ledger)


def finish_build(config: EngineConfig, run: dict[str, Any], ledger: AttemptLedger) -> dict[str, Any]:
    """The global step after the stream, over every finished clip of the output (all runs): near-duplicates,
    curation, report.json, the splits (sed/, saber_test/, exports/) and the dataset card. `run`: this run's figures
    for the report. engine.devkit.scale_sim runs it alone on a simulated clip table."""
    near_duplicates = mark_near_duplicates(config)
    table, curated = curate(config, read_light_table(config.output))
    pending = ledger.pending(table.column("clip_id"))
    if pending:
        log.warning("[build_saber] %d clips failed for a reason of the world (API, storage, memory: see report.json "
                    "`retry`) and are not finished: run the same command again to retry them", len(pending))
    report = build_report(table, funnel_stages(config), run, pending)
    if near_duplicates is not None:
        report["near_duplicates"] = near_duplicates
    if curated is not None:
        report["curation"] = curated
    report["splits"] = write_training_splits(config, table, run["run_id"])
    write_report(config.output, report)
    write_card(config.output, table, report)
    return report


def mark_near_duplicates(config: EngineConfig) -> dict[str, Any] | None:
    """The global step before the splits (engine.dataset.neardup): groups over every finished clip of the output, all
    runs, their verdicts written into clips/. Turned off, it only undoes the verdicts of earlier builds, if there are
    any."""
    started = time.monotonic()
    if config.neardup.enabled:
        found = neardup.find_duplicates(read_clip_table(config.output, neardup.FINGERPRINT_COLUMNS), config.neardup)
    elif pc.any(pc.equal(read_clip_table(config.output, ["reject_stage"]).column(0), neardup.STAGE)).as_py():
        found = neardup.Duplicates()
    else:
        return None
    changed = neardup.apply_verdicts(config.output, found)
    stats = {**found.stats, "rows_changed": changed, "seconds": round(time.monotonic() - started, 3)}
    log.info("[build_saber] near-duplicates: %s", stats)
    return stats


def curate(config: EngineConfig, table: pa.Table) -> tuple[pa.Table, dict[str, Any] | None]:
    """The finished clips with a curator's keep/drop marks applied (config.curation, written by jobs/browse.py), and
    what they changed; the table as it is without a curation file. Only the marked rows are handled row by row; the
    table may hold any of the clip columns (the verdict columns it has are updated)."""
    if not config.curation:
        return table, None
    decisions = curation.read_curation(config.curation)
    ids = table.column("clip_id")
    marked = table.filter(pc.is_in(ids, value_set=pa.array(sorted(decisions), pa.string())))
    changed = curation.apply_curation(marked, decisions)
    at = pc.index_in(ids, value_set=marked.column("clip_id"))
    curated = table
    for name in set(CURATED_COLUMNS) & set(table.column_names):
        column = pc.if_else(pc.is_valid(at), changed.column(name).combine_chunks().take(at), table.column(name))
        curated = curated.set_column(table.schema.get_field_index(name), table.schema.field(name), column)
    before, after = marked.column("status").to_pylist(), changed.column("status").to_pylist()
    known = pc.is_in(pa.array(sorted(decisions), pa.string()), value_set=ids)
    stats = {"file": config.curation, "marked": len(decisions),
             "dropped": sum(b == "kept" and a == "rejected" for b, a in zip(before, after, strict=True)),
             "kept_over_rejection": sum(b == "rejected" and a == "kept" for b, a in zip(before, after, strict=True)),
             "unknown_clips": [c for c, k in zip(sorted(decisions), known.to_pylist(), strict=True) if not k][:20]}
    log.info("[build_saber] curation: %s", stats)
    return curated, stats


def judge_relations(config: EngineConfig, pending: pa.Table, run_id: str) -> None:
    """Verdicts saved every `flush_rows`, so a run killed while judging keeps what it paid for. A judge call the
    API failed is saved as retryable (judged again by the next build) or, on its last attempt, gave_up."""
    earlier = holdout.retry_counts(holdout.read_relations(config.output))
    sink = relation_stream.RelationSink(config.output, run_id, config.max_attempts, earlier, stem="")
    for batch in relation_plan(pending, config).iter_batches(batch_format="pyarrow", batch_size=None):
        sink.add(batch, clip_part_committed=sink.buffered_rows + batch.num_rows >= config.flush_rows)
    sink.flush()


def write_training_splits(config: EngineConfig, table: pa.Table, run_id: str) -> dict[str, Any]:
    """The global step after the stream: relation verdicts for clips without one, the SABER-Test split,
    sed/ without the test recordings, and the exports. `table`: read_light_table's (curated) columns; the texts are
    read part by part from clips/ where a judge prompt or a record needs them."""
    candidates = table.filter(pc.and_(pc.equal(table.column("status"), "kept"), table.column("annotated")))
    verdicts = None
    if config.saber_test.enabled:
        verdicts = split_plan.verdict_table(holdout.read_relations(config.output))
        todo = pc.invert(pc.is_in(candidates.column("clip_id"), value_set=split_plan.finished_ids(verdicts)))
        pending = candidates.column("clip_id").filter(todo)
        log.info("[build_saber] relation judge after the stream: %d clips to judge, %d judged already (in the stream "
                 "or by earlier runs)",
                 len(pending), candidates.num_rows - len(pending))
        if len(pending):
            judge_relations(config, read_clip_rows(config.output, pending, holdout.JUDGE_COLUMNS), run_id)
            verdicts = split_plan.verdict_table(holdout.read_relations(config.output))
    merged = (neardup.recording_groups(table) if pc.any(pc.is_valid(table.column("duplicate_of"))).as_py()
              else {})  # no clip is anybody's near-duplicate: no recordings to join
    plan = split_plan.plan_splits(candidates.select(list(split_plan.PLAN_COLUMNS)), verdicts,
                                  config.saber_test.per_subset, hold_out_speakers=config.saber_test.hold_out_speakers,
                                  merged_recordings=merged)
    holdout.write_split_records(config.output, iter_parts(storage.join(config.output, "clips"), CLIP_SCHEMA,
                                                          holdout.RECORD_COLUMNS), plan, config.saber_test.enabled)
    log.info("[build_saber] splits: %s", plan.stats)
    return plan.stats


def read_light_table(output: str) -> pa.Table:
    """LIGHT_COLUMNS of every finished clip, and `annotated` (whether it has an annotation), read in parallel part by
    part: the annotation texts, transcripts and fingerprints stay on disk."""
    def light(part: pa.Table) -> pa.Table:
        return part.drop_columns(["video_desc"]).append_column("annotated", pc.is_valid(part.column("video_desc")))

    tables = [light(part) for part in iter_parts(storage.join(output, "clips"), CLIP_SCHEMA,
                                                 [*LIGHT_COLUMNS, "video_desc"])]
    return pa.concat_tables(tables) if tables else light(CLIP_SCHEMA.empty_table().select([*LIGHT_COLUMNS,
                                                                                           "video_desc"]))


def read_clip_rows(output: str, clip_ids: pa.Array | pa.ChunkedArray, columns: Iterable[str]) -> pa.Table:
    """`columns` of the clips whose ids are given, in the clip table's order, read part by part (memory: those rows)."""
    wanted = set(clip_ids.to_pylist())  # hashed once: an Arrow is_in would hash all of them again for each part
    cols = list(dict.fromkeys(["clip_id", *columns]))
    tables = [part.filter(pa.array([cid in wanted for cid in part.column("clip_id").to_pylist()], pa.bool_()))
              .select(list(columns)) for part in iter_parts(storage.join(output, "clips"), CLIP_SCHEMA, cols)]
    return pa.concat_tables(tables) if tables else CLIP_SCHEMA.empty_table().select(list(columns))
