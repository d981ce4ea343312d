"""The preference build end to end on a local Ray: an engine-like output written by hand (16 real clips, hand-set
relation verdicts), K=4 samples per query from the tiny Omni thinker in an actor pool, a scripted judge and
AVEm writer behind a loopback OpenAI-compatible server. The table is checked against pairs worked out here
from the scripted scores; a rerun samples, judges and writes nothing and leaves the same table. (A run killed
between a pairs part and its ledger part: tests/train/test_preferences.py, on the writer alone.)"""

import hashlib
import json
import re
import subprocess
import sys
import threading
from collections import Counter
from functools import partial

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from engine.core.config_base import load_config
from engine.core.schema import CLIP_SCHEMA, new_row
from engine.core.sed import SedSections, render_sections
from engine.dataset.holdout import RELATION_SCHEMA
from engine.dataset.writer import write_parquet_whole
from engine.devkit.fake_openai import FakeOpenAI
from engine.models.annotation import parse_annotation
from engine.models.prompts import FENCE_CLOSE, FENCE_OPEN
from tests.jobs.helpers import REPO, job_env
from train.preferences.avem_data import emotion_of
from train.preferences.build import add_vllm_sampler, read_ledger, run
from train.preferences.config import PreferenceConfig
from train.preferences.schema import QUERY_SCHEMA, empty_query, read_preferences
from train.preferences.vllm_sampling import ERROR_COLUMN, sample_request

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
MARGIN = 2.0


def fenced(text):
    return re.findall(f"{re.escape(FENCE_OPEN)}\\n(.*?)\\n{re.escape(FENCE_CLOSE)}", text, re.DOTALL)


def hash_scores(response):
    digest = hashlib.sha256(response.encode()).hexdigest()
    return int(digest[:8], 16) % 11, int(digest[8:16], 16) % 11


def rejections(chosen):
    tag = hashlib.sha256(chosen.encode()).hexdigest()[:8]
    return (render_sections(SedSections(f"Grey background {tag}.", "A steady hiss.", "The hiss shows anger.")),
            render_sections(SedSections(f"Tears {tag}.", "A trembling voice.", "Tears show sadness.")))


class Scripted:
    """Judge: scores from a hash of the response text, except per role (found by the clip's speech content):
    `rate_limit` answers 429 to its first request; `repair` answers its first distinct response malformed once
    (then repaired) and its second malformed for good; `ties` scores every response 5 + 5. Writer: two SED
    rejections per chosen response, except the first chosen response it sees, answered without headings."""

    def __init__(self, roles):
        self.roles, self.lock = roles, threading.Lock()
        self.seen, self.failed_judge, self.failed_writer = {}, set(), set()
        self.calls, self.saw_429 = Counter(), False

    def __call__(self, body, _prompt):
        messages = body["messages"]
        first, repair = messages[0]["content"], len(messages) > 1
        blocks = fenced(first)
        role = next((r for speech, r in self.roles.items() if f"Speech content: {speech}\n" in blocks[0]), None)
        with self.lock:
            if first.startswith("You grade"):
                return self._judge(blocks[1], role, repair)
            return self._writer(blocks[1], repair)

    def _judge(self, response, role, repair):
        self.calls["judge_repair" if repair else "judge"] += 1
        seen = self.seen.setdefault(role, [])
        if response not in seen:
            seen.append(response)
        if role == "rate_limit" and not self.saw_429:
            self.saw_429 = True
            return {"status": 429}
        if role == "repair" and seen.index(response) == 1 or response in self.failed_judge:
            self.failed_judge.add(response)
            return {"content": "logical consistency: high"}
        if role == "repair" and seen.index(response) == 0 and not repair:
            return {"content": '{"logical_consistency": 7}'}
        logic, evidence = (5, 5) if role == "ties" else hash_scores(response)
        return {"content": json.dumps({"logical_consistency": logic, "evidence_alignment": evidence, "reason": "x"})}

    def _writer(self, chosen, repair):
        self.calls["writer_repair" if repair else "writer"] += 1
        if not self.failed_writer or chosen in self.failed_writer:
            self.failed_writer.add(chosen)
            return {"content": json.dumps({"irrelevant_cue": "no headings", "hallucinated_cue": "none either"})}
        vr, er = rejections(chosen)
        return {"content": json.dumps({"irrelevant_cue": vr, "hallucinated_cue": er})}


def engine_output(sed_records, tmp_path):
    """sed/ as the fixture wrote it; relations: clips 0-11 ok (even consistent, odd inconsistent), 12 failed,
    13-15 none; clips/ with each clip's annotation, labels on clips 0 and 1 only (the rest by sentiment)."""
    out = tmp_path / "engine"
    records = pq.read_table(sed_records).to_pylist()
    write_parquet_whole(str(out / "sed"), "part-00000.parquet", pq.read_table(sed_records))
    clips, verdicts = [], []
    for i, record in enumerate(records):
        with open(record["source_uri"].rsplit(".", 1)[0] + ".json") as handle:
            fields = parse_annotation(handle.read())
        row = new_row(record["source_uri"], lang="en", label="Neutral" if i < 2 else None, **fields)
        clips.append({k: row[k] for k in CLIP_SCHEMA.names})
        if i <= 12:
            ok = i < 12
            verdicts.append({"clip_id": record["clip_id"], "source_video": record["source_video"],
                             "verdict": "ok" if ok else "failed",
                             "av_relation": ("consistent" if i % 2 == 0 else "inconsistent") if ok else None,
                             "av_intensity": i if ok else None, "fail_reason": None if ok else "judge_unparseable"})
    write_parquet_whole(str(out / "clips"), "part-00000.parquet", pa.Table.from_pylist(clips, schema=CLIP_SCHEMA))
    write_parquet_whole(str(out / "relations"), "part-r-00000.parquet",
                        pa.Table.from_pylist(verdicts, schema=RELATION_SCHEMA))
    return out, records, {c["clip_id"]: c for c in clips}


def expected_selection(records):
    """Two per relation, in sha256(f"0:{clip_id}") order (selection.seed 0)."""
    def ranked(parity):
        ids = [r["clip_id"] for i, r in enumerate(records) if i < 12 and i % 2 == parity]
        return sorted(ids, key=lambda c: hashlib.sha256(f"0:{c}".encode()).hexdigest())[:2]
    return ranked(0) + ranked(1)


def config_for(tiny_omni, engine, out, url):
    http = (f"{{kind: http, http: {{base_url: '{url}', model: fake-gpt, api_key_env: '', timeout_s: 10, "
            "max_retries: 3, backoff_base_s: 0.01, backoff_max_s: 0.05, max_concurrency: 4}}")
    return load_config(PreferenceConfig, REPO / "jobs" / "configs" / "prefs_demo.yaml", [
        f"engine_output={engine}", f"sft_model={tiny_omni}", f"output={out}", "selection.per_relation=2",
        "batch_queries=2", "sampling.num_samples=4", "sampling.max_new_tokens=24", "data.max_frames=4",
        "data.max_pixels=3136", "sampler.num_cpus=1", "sampler_model.attn_implementation=eager",
        f"judge.backend={http}", "judge.pool={concurrency: [1, 1], num_cpus: 0.5, batch_size: 2}",
        f"ranking.margin={MARGIN}", "avem.enabled=true", "avem.writer.enabled=true", f"avem.writer.backend={http}",
        "avem.writer.pool={concurrency: [1, 1], num_cpus: 0.25, batch_size: 2}"])


def expected_pairs(ledger, script):
    """The pairs worked out from the scripted scores, independently of train.preferences.rank: judged
    responses sorted by (score desc, index asc), w1 w2 the first two, l1 l2 the last two (worst first),
    w1-l1 and w2-l2 kept when they differ by >= MARGIN."""
    pairs, outcome = {}, {}
    for query in ledger:
        role = script.roles_by_clip.get(query["clip_id"])
        scores = []
        for response in query["responses"]:
            if response in script.failed_judge or not response.strip():
                scores.append(None)
            else:
                scores.append(10.0 if role == "ties" else float(sum(hash_scores(response))))
        assert query["scores"] == scores, query["clip_id"]
        ranked = sorted((-s, i) for i, s in enumerate(scores) if s is not None)
        if len(ranked) < 4:
            outcome[query["clip_id"]] = "too_few_judged"
            continue
        winners, losers = [i for _, i in ranked[:2]], [i for _, i in ranked[::-1][:2]]
        kept = [(w, loser) for w, loser in zip(winners, losers, strict=True) if scores[w] - scores[loser] >= MARGIN]
        outcome[query["clip_id"]] = "paired" if kept else "below_margin"
        for w, loser in kept:
            pairs[(query["clip_id"], w, loser)] = (query["responses"][w], query["responses"][loser], scores[w],
                                                   scores[loser])
    return pairs, outcome


def test_preferences_by_hand_and_a_rerun_costs_nothing(local_ray, tiny_omni, sed_records, tmp_path):
    engine, records, clips = engine_output(sed_records, tmp_path)
    selected = expected_selection(records)
    speech = {c["clip_id"]: c["speech_content"] for c in clips.values()}
    roles = dict(zip(selected, ["rate_limit", "repair", "ties", "plain"], strict=True))
    script = Scripted({speech[c]: role for c, role in roles.items()})
    script.roles_by_clip = roles
    out = tmp_path / "prefs"
    with FakeOpenAI(responder=script) as server:
        config = config_for(tiny_omni, engine, out, server.url)
        first = run(config)
        calls_first = dict(script.calls)
        table = read_preferences(str(out)).to_pylist()
        ledger = read_ledger(str(out)).to_pylist()

        # Rerun: every query is in the ledger, so nothing is sampled, judged or written.
        script.calls.clear()
        server_calls = server.total_calls
        again = run(config)
        assert script.calls == Counter() and server.total_calls == server_calls
        assert again["run"]["skipped_already_done"] == 4 and again["run"]["queries_processed"] == 0
        assert read_preferences(str(out)).to_pylist() == table

    # Selection: two per relation; 12 and 13-15 skipped (failed verdict, no verdict).
    assert sorted(q["clip_id"] for q in ledger) == sorted(selected)
    assert first["selection"]["selected"] == {"consistent": 2, "inconsistent": 2}
    assert first["selection"]["skipped"] == {"failed_verdict": 1, "no_verdict": 3}

    # Pairs against the scripted scores.
    pairs, outcome = expected_pairs(ledger, script)
    assert {(r["clip_id"], r["chosen_index"], r["rejected_index"]): (r["chosen"], r["rejected"], r["chosen_score"],
                                                                     r["rejected_score"]) for r in table} == pairs
    assert {q["clip_id"]: q["drop_reason"] or "paired" for q in ledger} == outcome
    assert outcome[selected[1]] == "too_few_judged"  # the repair role: one response fails for good
    # The ties role: every judged response scores 10, so no pair reaches the margin. Clip ids (and so the
    # per-clip sampling seeds) follow the checkout's path, and the tiny sampler now and then writes only
    # special tokens, i.e. a blank response that is never judged: with fewer than 4 left the query is
    # too_few_judged instead.
    ties = next(q for q in ledger if q["clip_id"] == selected[2])
    if sum(bool(r.strip()) for r in ties["responses"]) == 4:
        assert outcome[selected[2]] == "below_margin"
        assert (ties["winners"], ties["losers"], ties["pairs_below_margin"]) == ([0, 1], [3, 2], 2)
    else:
        assert outcome[selected[2]] == "too_few_judged"
    assert len(table) >= 1 and all(r["pairing"] == "matched" and r["round"] == 1 for r in table)
    assert all(r["sampler"] == str(tiny_omni) and r["judge"].startswith("fake-gpt preference-judge@") for r in table)

    # AVEm: the scripted rejections for each chosen response, nulls where the writer failed; a swap clip of
    # another emotion, both modalities swapped (the SED prompt asks about both).
    for row in table:
        expected = (None, None) if row["chosen"] in script.failed_writer else rejections(row["chosen"])
        assert (row["rejected_vr"], row["rejected_er"]) == expected
        query_clip, swap = clips[row["clip_id"]], clips[row["swap_clip_id"]]
        assert emotion_of(swap["label"], swap["sentiment_analysis"]) != emotion_of(
            query_clip["label"], query_clip["sentiment_analysis"])
        assert row["swap_source_uri"] == swap["source_uri"] and row["swap_modality"] == "both"

    # The judge saw one 429 (retried), one answer repaired, one failed twice; the writer failed one chosen.
    assert script.saw_429 and calls_first["judge_repair"] == 2 and len(script.failed_judge) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["queries"]["total"] == 4 and summary["responses"]["sampled"] == 16
    assert summary["responses"]["judge_failures"].get("judge_unparseable") == 1
    dropped = Counter(v for v in outcome.values() if v != "paired")  # worked out above from the scripted scores
    assert {reason: summary["queries"]["dropped"][reason] for reason in dropped} == dict(dropped)
    ranked = sum(v != "too_few_judged" for v in outcome.values())  # queries that got a w1 w2 / l1 l2 ranking
    assert summary["pairs"]["kept"] == len(table) and summary["scores"]["winners"]["n"] == 2 * ranked
    assert summary["avem"]["writer_failures"] == ({"writer_unparseable": 1} if script.failed_writer else {})
    assert (out / "scores.png").stat().st_size > 5_000 and (out / "config.yaml").exists()
    print(f"preferences e2e: pairs {len(table)}, outcomes {outcome}, calls {calls_first}, first run "
          f"{first['run']['seconds']} s, rerun {again['run']['seconds']} s")


def _stand_in_engine(row, sampling):
    """What ray.data.llm's stages add to a row: an answer named after the request, or a per-row error."""
    request = sample_request(row, sampling)
    if row["clip_id"] == "a" and row["sample_index"] == 2:
        return dict(row, **request, **{ERROR_COLUMN: "prompt too long"})
    seed = request["sampling_params"].get("seed")
    return dict(row, **request, **{ERROR_COLUMN: "", "generated_text": f"{row['clip_id']}{row['sample_index']}:{seed}"})


class StandInProcessor:
    def __init__(self, sampling):
        self.sampling = sampling

    def __call__(self, ds):
        return ds.map(partial(_stand_in_engine, sampling=self.sampling))


def test_vllm_sampler_glue_groups_k_answers_per_query(local_ray, asr_set, tmp_path):
    """The GPU path's Ray Data glue (decode once, fan out K, engine, gather back) with a stand-in for vLLM."""
    folder, _ = asr_set
    config = load_config(PreferenceConfig, REPO / "jobs" / "configs" / "prefs_demo.yaml",
                         ["sampling.num_samples=4", "data.max_frames=4", f"output={tmp_path}"])
    uris = {"a": folder / "good_000.mp4", "b": folder / "good_001.mp4", "c": tmp_path / "missing.mp4"}
    queries = [empty_query(clip_id=c, source_uri=str(u), system="S", prompt="P", round=1) for c, u in uris.items()]
    ds = ray.data.from_arrow(pa.Table.from_pylist(queries, schema=QUERY_SCHEMA))
    sampled = add_vllm_sampler(ds, config, "/m", StandInProcessor(config.sampling))
    operators = [type(op).__name__ for op in sampled._logical_plan.dag.post_order_iter()]
    assert not {"Repartition", "Aggregate", "Sort", "RandomShuffle"} & set(operators)  # streams: no shuffle
    out = {r["clip_id"]: r for r in sampled.take_all()}
    assert [answer.split(":")[0] if answer else None for answer in out["a"]["responses"]] == ["a0", "a1", None, "a3"]
    seeds = [int(answer.split(":")[1]) for answer in out["b"]["responses"]]
    assert seeds == [seeds[0] + k for k in range(4)] and out["b"]["sample_error"] is None
    assert out["c"]["responses"] is None and out["c"]["sample_error"].startswith("unreadable_container")
    assert {r["sampler"] for r in out.values()} == {"/m"}


def test_launcher_reports_config_errors_before_starting_ray():
    bad = subprocess.run([sys.executable, str(REPO / "jobs" / "build_preferences.py"), "--config",
                          "jobs/configs/prefs_demo.yaml", "ranking.margin=-1", "ranking.pairing=all"],
                         capture_output=True, text=True, env=job_env(), cwd=REPO, timeout=120)
    assert bad.returncode == 2 and not bad.stdout
    assert "ranking.margin" in bad.stderr and "ranking.pairing" in bad.stderr  # both at once
