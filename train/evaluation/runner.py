"""The evaluation run: manifest -> answers (actor pool) -> judgments (actor pool, when the benchmark has a judge)
-> per-item table, summary, markdown and chart in `results/<benchmark>/<model>/`.

Both pools are one Ray Data dataset, so the judge works while the model still answers. Answers and judgments
are saved as they stream in, as part files written whole (`answers/`, `judgments/`), and are the resume
checkpoint: a rerun answers only items without an answer and judges only answers without a verdict from the
same judge model and prompt version; of the failures, only transient ones (a rate-limited or unreachable
backend) are tried again. A folder holds one generation setup: answers made under another generation config
hash are an error, not silently mixed. HTTP backends cache their answers under the folder's cache/.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa

from engine.core import storage
from engine.core.config import dump_config
from engine.core.failures import RETRYABLE, backend_failure
from engine.core.media import MediaError
from engine.dataset.writer import read_parts, write_parquet_whole
from train.evaluation import report
from train.evaluation.benchmarks import ITEM_SCHEMA, Benchmark, Item, get_benchmark
from train.evaluation.config import ANSWER_SCHEMA, ITEMS_SCHEMA, EvalConfig, generation_hash, judge_model_id, with_cache
from train.evaluation.judging import JUDGE_STAGES, JUDGMENT_SCHEMA, AnswerJudgeStage, JudgeBatch
from train.evaluation.manifests import load_items
from train.evaluation.parsers import AnswerError
from train.evaluation.prompts import TaskPrompt

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- answering (actor-pool callables)


def _ok(text: str) -> dict[str, Any]:
    return {"answer": text, "answer_status": "ok", "answer_fail_reason": None, "answer_fail_detail": None}


def _failed(reason: str, detail: str) -> dict[str, Any]:
    return {"answer": None, "answer_status": "failed", "answer_fail_reason": reason,
            "answer_fail_detail": detail[:500] or None}


class CheckpointAnswerer:
    """A thinker checkpoint through ThinkerGenerator: the SED recipe's own prompt encoding, MoSE experts when
    the folder has them, attention reallocation by the generation flag."""

    def __init__(self, config: EvalConfig, model_path: str) -> None:
        from train.core.modeling import resolve_model_path  # tiny:DIR is built (once, cached) here
        from train.inference.generation import ThinkerGenerator

        m = config.model
        self.generator = ThinkerGenerator(resolve_model_path(model_path), config.media, m.device, m.dtype,
                                          m.attn_implementation)
        self.generation = config.generation

    def answer(self, items: list[Item], tasks: list[TaskPrompt]) -> list[dict[str, Any]]:
        out = []
        for item, task in zip(items, tasks, strict=True):
            record = {"clip_id": item["item_id"], "source_uri": item["source_uri"], "lang": item["lang"],
                      "system": task.system, "prompt": task.prompt}
            started = time.perf_counter()
            try:
                result = _ok(self.generator.generate(record, self.generation)[0])
            except MediaError as err:
                result = _failed(err.reason, err.detail)
            except FileNotFoundError as err:  # a remote clip that is not there (local ones are MediaErrors)
                result = _failed("missing_media", str(err))
            out.append(result | {"answer_seconds": time.perf_counter() - started})
        return out


class ApiAnswerer:
    """A chat backend (OpenAI-compatible API): frames as JPEG image parts, the audio track as one input_audio
    part, then the question; one batched chat call per batch of items."""

    def __init__(self, config: EvalConfig, cache_dir: str) -> None:
        from engine.models.backends.factory import make_backend

        self.backend = make_backend(with_cache(config.model.backend, cache_dir))
        self.media, self.generation = config.media, config.generation

    def request(self, item: Item, task: TaskPrompt) -> Any:
        from engine.core.media import encode_jpeg
        from engine.models.backends.base import ChatRequest
        from engine.models.backends.media_parts import audio_part, frame_parts, media_key
        from train.data.sed_data import load_media

        frames, audio = load_media(item["source_uri"], self.media)
        jpegs, pcm = [encode_jpeg(frame, 90) for frame in frames], audio.astype("<f4").tobytes()
        content = [*frame_parts(jpegs), audio_part(pcm), {"type": "text", "text": task.prompt}]
        return ChatRequest([{"role": "system", "content": task.system}, {"role": "user", "content": content}],
                           max_tokens=self.generation.max_new_tokens, temperature=self.generation.temperature,
                           media_key=media_key(jpegs, pcm), tag="answer")

    def answer(self, items: list[Item], tasks: list[TaskPrompt]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{} for _ in items]
        asked = []
        for index, (item, task) in enumerate(zip(items, tasks, strict=True)):
            try:
                asked.append((index, self.request(item, task)))
            except MediaError as err:
                out[index] = _failed(err.reason, err.detail)
            except FileNotFoundError as err:
                out[index] = _failed("missing_media", str(err))
        started = time.perf_counter()
        results = self.backend.chat([request for _, request in asked])
        seconds = (time.perf_counter() - started) / max(len(asked), 1)
        for (index, _), result in zip(asked, results, strict=True):
            out[index] = _ok(result.text or "") if result.ok else _failed("model_error", str(result.error))
        return [o | {"answer_seconds": seconds if o["answer_status"] == "ok" else None} for o in out]


class AnswerBatch:
    """Actor-pool callable: item rows -> ANSWER_SCHEMA rows (the model loads once per actor)."""

    def __init__(self, config: EvalConfig, model_path: str | None) -> None:
        if config.model.torch_threads:
            import torch

            torch.set_num_threads(config.model.torch_threads)
        self.benchmark = get_benchmark(config.benchmark)
        self.answerer = CheckpointAnswerer(config, model_path) if config.model.kind == "checkpoint" \
            else ApiAnswerer(config, storage.join(config.folder, "cache", "answer"))
        self.stamp = {"answer_model": config.model.model_id, "generation_hash": generation_hash(config)}

    def __call__(self, table: pa.Table) -> pa.Table:
        items = table.to_pylist()
        tasks = [self.benchmark.task(item) for item in items]
        outcomes = self.answerer.answer(items, tasks)
        now = datetime.now(timezone.utc)
        rows = [{**item, "prompt_version": task.version, **outcome, **self.stamp, "answered_at": now}
                for item, task, outcome in zip(items, tasks, outcomes, strict=True)]
        return pa.Table.from_pylist(rows, schema=ANSWER_SCHEMA)


def judge_stage(config: EvalConfig, folder: str) -> AnswerJudgeStage:
    from engine.models.backends.factory import make_backend

    backend = make_backend(with_cache(config.judge.backend, storage.join(folder, "cache", "judge")))
    return JUDGE_STAGES[get_benchmark(config.benchmark).judge](backend, max_tokens=config.judge.max_tokens)


# ---------------------------------------------------------------- the Ray Data plan

def is_transient(reason: str | None, detail: str | None) -> bool:
    """Worth another try on a rerun (engine.core.failures, the policy of every loop): a backend that gave up on a busy
    or unreachable service. A clip that does not decode, a request the service refuses for its content, or a
    judge answer that does not parse (deterministic at temperature 0, and cached) stays failed."""
    error = (detail or "").rsplit(": ", 1)[-1]  # judge details read "<model>: <error>"
    return reason == "model_error" and backend_failure(error) == RETRYABLE


def evaluation_plan(config: EvalConfig, to_answer: list[Item], to_judge: list[dict[str, Any]]) -> Any:
    """Items -> answer actor pool -> judge actor pool (judged benchmarks; answers of earlier runs that still
    need a verdict join the stream before it), one dataset so both pools work at once."""
    from engine.dataset.pipeline import pool_map, table_blocks  # Ray only where a plan is built

    ds = None
    if to_answer:
        ds = pool_map(table_blocks(pa.Table.from_pylist(to_answer, schema=ITEM_SCHEMA), config.block_rows),
                       AnswerBatch, {"config": config, "model_path": _model_path(config)}, config.answer_pool)
    if get_benchmark(config.benchmark).judge and (to_answer or to_judge):
        if to_judge:
            earlier = table_blocks(pa.Table.from_pylist(to_judge, schema=ANSWER_SCHEMA), config.block_rows)
            ds = earlier if ds is None else ds.union(earlier)
        ds = pool_map(ds, JudgeBatch, {"factory": partial(judge_stage, config, config.folder)}, config.judge.pool)
    return ds


def _model_path(config: EvalConfig) -> str | None:
    """The checkpoint path with local folders made absolute (actors may run in another working directory)."""
    if config.model.kind != "checkpoint":
        return None
    path = config.model.path
    prefix = "tiny:" if path.startswith("tiny:") else ""
    path = path[len(prefix):]
    return prefix + (str(Path(path).resolve()) if prefix or Path(path).exists() else path)


def save_stream(ds: Any, config: EvalConfig, run_id: str, known_answers: set[str]) -> tuple[int, int]:
    """Writes the plan's rows as they arrive: new answers to answers/, verdicts to judgments/, a part every
    `flush_rows` rows. Returns (answers written, judgments written)."""
    folder, judged = config.folder, bool(get_benchmark(config.benchmark).judge)
    buffered: list[pa.Table] = []
    counts, part = [0, 0], 0
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        buffered.append(batch)
        if sum(t.num_rows for t in buffered) >= config.flush_rows:
            _write_parts(pa.concat_tables(buffered), folder, f"{run_id}-{part:05d}", judged, known_answers, counts)
            buffered, part = [], part + 1
    if buffered:
        _write_parts(pa.concat_tables(buffered), folder, f"{run_id}-{part:05d}", judged, known_answers, counts)
    return counts[0], counts[1]


def _write_parts(table: pa.Table, folder: str, name: str, judged: bool, known: set[str], counts: list[int]) -> None:
    ids = table.column("item_id").to_pylist()
    answers = table.take([i for i, item_id in enumerate(ids) if item_id not in known]).select(ANSWER_SCHEMA.names)
    if answers.num_rows:
        write_parquet_whole(storage.join(folder, "answers"), f"part-{name}.parquet", answers)
        counts[0] += answers.num_rows
    if judged:
        ok = [i for i, status in enumerate(table.column("answer_status").to_pylist()) if status == "ok"]
        verdicts = table.take(ok).select(JUDGMENT_SCHEMA.names)
        if verdicts.num_rows:
            write_parquet_whole(storage.join(folder, "judgments"), f"part-{name}.parquet", verdicts)
            counts[1] += verdicts.num_rows


def latest(table: pa.Table, status: str, stamp: str, keep: Callable[[dict[str, Any]], bool] = bool
           ) -> dict[str, dict[str, Any]]:
    """One row per item: an ok one if any (never redone), else the latest failure; `transient_failures` counts the
    item's transient failures over all runs (the attempts of engine.dataset.ledger's rule)."""
    best: dict[str, dict[str, Any]] = {}
    kind = status.removesuffix("_status")
    failures: Counter[str] = Counter()
    rows = [r for r in table.to_pylist() if keep(r)]
    for row in sorted(rows, key=lambda r: (r[status] == "ok", r[stamp] or datetime.min.replace(tzinfo=timezone.utc))):
        best[row["item_id"]] = row
        failures[row["item_id"]] += row[status] != "ok" and is_transient(row[f"{kind}_fail_reason"],
                                                                        row[f"{kind}_fail_detail"])
    return {item: {**row, "transient_failures": failures[item]} for item, row in best.items()}


def needs_work(done: dict[str, Any] | None, kind: str, max_attempts: int) -> bool:
    """No answer/judgment yet, or only transient failures, fewer than max_attempts (then it gave up; kind:
    "answer" or "judge")."""
    return done is None or (done[f"{kind}_status"] != "ok"
                            and is_transient(done[f"{kind}_fail_reason"], done[f"{kind}_fail_detail"])
                            and done.get("transient_failures", 0) < max_attempts)


def read_answers(folder: str, current_hash: str) -> dict[str, dict[str, Any]]:
    answers = read_parts(storage.join(folder, "answers"), ANSWER_SCHEMA)
    other = sorted(set(answers.column("generation_hash").to_pylist()) - {current_hash})
    if other:
        raise ValueError(f"{folder} holds answers made under generation config hash {other}, this run's is "
                         f"{current_hash}: evaluate into another folder (model.name=... or --out) or remove "
                         f"{storage.join(folder, 'answers')}")
    return latest(answers, "answer_status", "answered_at")


def read_judgments(folder: str, judge_id: str | None) -> dict[str, dict[str, Any]]:
    table = read_parts(storage.join(folder, "judgments"), JUDGMENT_SCHEMA)
    return latest(table, "judge_status", "judged_at", keep=lambda r: r["judge_id"] == judge_id)


def pending(config: EvalConfig, items: list[Item], judge_id: str | None) -> tuple[list[Item], list[dict[str, Any]]]:
    """(items to answer, earlier answers to judge)."""
    answers = read_answers(config.folder, generation_hash(config))
    to_answer = [i for i in items if needs_work(answers.get(i["item_id"]), "answer", config.max_attempts)]
    to_judge = []
    if judge_id is not None:
        judgments = read_judgments(config.folder, judge_id)
        to_judge = [answers[i["item_id"]] for i in items if i["item_id"] in answers
                    and answers[i["item_id"]]["answer_status"] == "ok"
                    and needs_work(judgments.get(i["item_id"]), "judge", config.max_attempts)]
    log.info("[evaluate] %d items: %d to answer, %d earlier answers to judge", len(items), len(to_answer),
             len(to_judge))
    return to_answer, to_judge


# ---------------------------------------------------------------- the per-item table and the run


def parse_prediction(benchmark: Benchmark, row: dict[str, Any]) -> tuple[str | None, str | None]:
    """(prediction, parse error) of an answered item; (None, None) when it did not answer."""
    if row.get("answer_status") != "ok":
        return None, None
    try:
        return benchmark.parse(row, row["answer"] or ""), None
    except AnswerError as err:
        return None, str(err)


def items_table(benchmark: Benchmark, items: list[Item], answers: dict[str, dict[str, Any]],
                judgments: dict[str, dict[str, Any]]) -> pa.Table:
    empty_judgment = dict.fromkeys(f.name for f in JUDGMENT_SCHEMA if f.name != "item_id")
    rows = []
    for item in items:
        answer = answers.get(item["item_id"]) or {**item, "answer_status": "failed",
                                                  "answer_fail_reason": "not_answered"}
        prediction, parse_error = parse_prediction(benchmark, answer)
        judgment = {k: v for k, v in judgments.get(item["item_id"], empty_judgment).items() if k != "item_id"}
        rows.append({**answer, **item, "prediction": prediction, "parse_error": parse_error, **judgment})
    return pa.Table.from_pylist(rows, schema=ITEMS_SCHEMA)


def run(config: EvalConfig) -> dict[str, Any]:
    """Evaluates `config.model` on `config.benchmark`; returns the summary (also written to the folder)."""
    config = config.model_copy(update={"data": storage.absolute(config.data)})
    folder, started, run_id = config.folder, time.monotonic(), uuid.uuid4().hex[:12]
    benchmark = get_benchmark(config.benchmark)
    items = load_items(config.data, benchmark, config.limit)
    fs = storage.filesystem(folder)
    fs.makedirs(storage.strip_protocol(folder), exist_ok=True)
    fs.pipe_file(f"{storage.strip_protocol(folder)}/config.yaml", dump_config(config).encode())
    judge_id = JUDGE_STAGES[benchmark.judge].judge_id(judge_model_id(config)) if benchmark.judge else None
    to_answer, to_judge = pending(config, items, judge_id)
    answered_now = judged_now = 0
    if to_answer or to_judge:
        known = {row["item_id"] for row in to_judge}
        answered_now, judged_now = save_stream(evaluation_plan(config, to_answer, to_judge), config, run_id, known)
    answers = read_answers(folder, generation_hash(config))
    judgments = read_judgments(folder, judge_id) if judge_id else {}
    table = items_table(benchmark, items, answers, judgments)
    write_parquet_whole(folder, "items.parquet", table)
    meta = {"model": {"name": config.model_name, "id": config.model.model_id, "kind": config.model.kind},
            "data": config.data, "generation_hash": generation_hash(config),
            "judge": _judge_meta(benchmark, judge_model_id(config), judge_id),
            "config": json.loads(config.model_dump_json()),
            "run": {"run_id": run_id, "answered": answered_now, "judged": judged_now,
                    "seconds": round(time.monotonic() - started, 3)}}
    summary = report.summarize(table, benchmark, meta)
    report.write_outputs(folder, summary)
    log.info("[evaluate] %s on %s: %s -> %s", config.model_name, benchmark.name, summary["counts"], folder)
    return summary


def _judge_meta(benchmark: Benchmark, model: str | None, judge_id: str | None) -> dict[str, Any] | None:
    if not benchmark.judge:
        return None
    prompt = JUDGE_STAGES[benchmark.judge].prompt
    return {"model": model, "prompt": prompt.name, "prompt_version": prompt.version,
            "prompt_hash": prompt.version.split("@", 1)[1], "id": judge_id}
