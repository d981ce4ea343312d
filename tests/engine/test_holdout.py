"""The step after the stream: relation verdicts (persisted, resumable), SABER-Test, sed/ and the exports."""

import json
import random
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.core.schema import CLIP_SCHEMA, new_row
from engine.core.sed import parse_sed_response
from engine.dataset import holdout
from engine.models.backends.base import ChatResult
from engine.models.prompts import FENCE_OPEN

FIELDS = {"video_desc": "A room.", "speech_content": "Fine.", "acoustic_feat": "Flat.", "facial_exp_desc": "Smile.",
          "body_lang_desc": "Still.", "sentiment_analysis": "Calm."}


def _clips(spec):
    """spec: (name, source_video, status, annotated) -> a clips/ table."""
    rows = []
    for name, video, status, annotated in spec:
        row = new_row(f"/d/{name}.mp4", source_video=video, status=status, **(FIELDS if annotated else {}))
        rows.append({k: row[k] for k in CLIP_SCHEMA.names})
    return pa.Table.from_pylist(rows, schema=CLIP_SCHEMA)


def _verdicts(table, judged):
    """judged: name -> (relation, intensity) or a failure reason string."""
    out = {}
    for row in table.to_pylist():
        name = row["source_uri"].rsplit("/", 1)[1][:-4]
        if name not in judged:
            continue
        verdict = judged[name]
        ok = isinstance(verdict, tuple)
        out[row["clip_id"]] = {"clip_id": row["clip_id"], "source_video": row["source_video"],
                               "verdict": "ok" if ok else "failed", "av_relation": verdict[0] if ok else None,
                               "av_intensity": verdict[1] if ok else None, "av_reason": "r" if ok else None,
                               "fail_reason": None if ok else verdict}
    return out


# 3 recordings with 2+ clips (v1, v2, v3) and single-clip ones; one rejected and one unannotated clip.
SPEC = [("a", "v1", "kept", True), ("b", "v1", "kept", True), ("c", "v2", "kept", True), ("d", "v2", "kept", True),
        ("e", "v3", "kept", True), ("f", "v4", "kept", True), ("g", "v5", "kept", True), ("h", "v6", "kept", True),
        ("x", "v7", "rejected", True), ("y", "v8", "kept", False)]
JUDGED = {"a": ("inconsistent", 9), "b": ("inconsistent", 8), "c": ("consistent", 10), "d": ("inconsistent", 7),
          "e": ("consistent", 4), "f": ("inconsistent", 3), "g": ("consistent", 6), "h": "judge_unparseable"}


def test_splits_sizes_ordering_and_no_recording_on_both_sides():
    clips = _clips(SPEC)
    candidates = holdout.sed_candidates(clips)
    assert candidates.num_rows == 8  # x rejected, y unannotated
    splits = holdout.make_splits(candidates, _verdicts(clips, JUDGED), per_subset=2)
    name = {r["clip_id"]: r["source_uri"].rsplit("/", 1)[1][:-4] for r in clips.to_pylist()}
    test = [(name[r["clip_id"]], r["av_relation"], r["av_intensity"]) for r in splits.test]
    # Consistent by intensity: c 10, g 6 (e 4 is third). Inconsistent: a 9, then b 8 shares v1 with a, so d 7.
    assert test == [("c", "consistent", 10), ("g", "consistent", 6), ("a", "inconsistent", 9),
                    ("d", "inconsistent", 7)]
    train = sorted(name[r["clip_id"]] for r in splits.train)
    # v1 (a, b), v2 (c, d) and v5 (g) are test recordings: b leaves training although it is not a test clip.
    assert train == ["e", "f", "h"]
    test_videos = {r["source_video"] for r in splits.test}
    assert not test_videos & {r["source_video"] for r in splits.train}
    assert splits.stats == {
        "sed_records": 8, "sed_train": 3, "held_out_same_video": 1, "held_out_same_speaker": 0,
        "saber_test": {"consistent": 2, "inconsistent": 2, "requested_per_subset": 2},
        # Test recordings v1, v2, v5; training v3, v4, v6. No clip has a speaker.
        "groups": {"by": ["source_video"], "recordings": {"test": 3, "train": 3, "shared": 0},
                   "speakers": {"test": 0, "train": 0, "shared": 0, "test_clips_without_speaker": 4}},
        "relations": {"judged": 8, "consistent": 3, "inconsistent": 4, "failed": {"judge_unparseable": 1}}}
    # The test split carries the reference annotation for evaluation, and the SED target parses.
    assert splits.test[0]["facial_exp_desc"] == "Smile."
    assert parse_sed_response(splits.test[0]["target"]).visual


def test_without_the_test_split_every_candidate_is_a_training_record():
    clips = _clips(SPEC)
    splits = holdout.make_splits(holdout.sed_candidates(clips), None, per_subset=2)
    assert len(splits.train) == 8 and splits.test == [] and splits.stats == {"sed_records": 8, "sed_train": 8}


def test_relations_persist_and_only_unjudged_clips_are_pending(tmp_path):
    clips = _clips(SPEC)
    candidates = holdout.sed_candidates(clips)
    verdicts = _verdicts(clips, JUDGED)
    first = pa.Table.from_pylist([{**v, "judge": "m p@1"} for v in verdicts.values()], schema=holdout.RELATION_SCHEMA)
    holdout.save_relations(str(tmp_path), "run1", first)
    # A later run judged h again and succeeded: the success wins over the earlier failure.
    h = next(v for v in verdicts.values() if v["verdict"] == "failed")
    again = pa.Table.from_pylist([{**h, "verdict": "ok", "av_relation": "consistent", "av_intensity": 2,
                                   "fail_reason": None}], schema=holdout.RELATION_SCHEMA)
    latest = holdout.latest_verdicts(holdout.read_relations(str(tmp_path)))
    assert holdout.pending_for_judge(candidates, latest).num_rows == 1  # h only
    holdout.save_relations(str(tmp_path), "run2", again)
    stored = holdout.read_relations(str(tmp_path))
    assert stored.num_rows == 9 and set(stored.column("run_id").to_pylist()) == {"run1", "run2"}
    latest = holdout.latest_verdicts(stored)
    assert latest[h["clip_id"]]["verdict"] == "ok" and len(latest) == 8
    assert holdout.pending_for_judge(candidates, latest).num_rows == 0
    assert holdout.pending_for_judge(candidates, latest).column_names == list(holdout.JUDGE_COLUMNS)


class _Backend:
    model_id = "judge-1"

    def __init__(self, answers):
        self.answers, self.prompts = list(answers), []

    def chat(self, requests):
        self.prompts += [r.messages[-1]["content"] for r in requests]
        return [ChatResult(self.answers.pop(0), None) if isinstance(self.answers[0], str)
                else ChatResult(None, self.answers.pop(0)[0]) for _ in requests]


def test_relation_batch_turns_answers_and_failures_into_verdict_rows():
    from engine.stages.relation import RelationJudgeStage

    answers = ['{"relation": "inconsistent", "intensity": 8, "reason": "smile, angry voice"}',
               "not json", ("rate limited",), "still not json"]  # b: unparseable, asked again, still unparseable
    backend = _Backend(answers)
    batch = holdout.RelationBatch(lambda: RelationJudgeStage(backend))
    clips = _clips(SPEC[:3])
    out = batch(holdout.sed_candidates(clips).select(list(holdout.JUDGE_COLUMNS))).to_pylist()
    assert [r["verdict"] for r in out] == ["ok", "failed", "failed"]
    assert (out[0]["av_relation"], out[0]["av_intensity"]) == ("inconsistent", 8)
    assert out[1]["fail_reason"] == "judge_unparseable" and "still not json" in out[1]["fail_detail"]
    assert out[2]["fail_reason"] == "model_error" and "rate limited" in out[2]["fail_detail"]
    assert len(backend.prompts) == 4 and not backend.answers  # 3 first asks + 1 repair re-ask
    assert out[0]["judge"] == "judge-1 av-relation-judge@" + out[0]["judge"].rsplit("@", 1)[1]
    # The annotation reaches the judge fenced, with readable headings.
    assert FENCE_OPEN in backend.prompts[0] and "Facial expression: Smile." in backend.prompts[0]


def test_outputs_written_whole_and_exports_match_the_records(tmp_path):
    clips = _clips(SPEC)
    splits = holdout.make_splits(holdout.sed_candidates(clips), _verdicts(clips, JUDGED), per_subset=2)
    holdout.write_splits(str(tmp_path), splits, with_test=True)
    assert pq.read_table(tmp_path / "sed" / "part-00000.parquet").num_rows == 3
    test = pq.read_table(tmp_path / "saber_test" / "part-00000.parquet")
    assert test.num_rows == 4 and test.column("av_intensity").to_pylist() == [10, 6, 9, 7]
    exports = tmp_path / "exports"
    for folder in ("ms_swift", "llama_factory"):
        for split, n in (("train", 3), ("test", 4)):
            lines = (exports / folder / f"saber_{split}.jsonl").read_text().splitlines()
            assert len(lines) == n
            assert json.loads(lines[0])["messages"][2]["content"] in {r["target"] for r in splits.train + splits.test}
    info = json.loads((exports / "llama_factory" / "dataset_info.json").read_text())
    assert set(info) == {"saber_train", "saber_test"} and info["saber_test"]["file_name"] == "saber_test.jsonl"
    assert not list(tmp_path.rglob("*.tmp"))


def test_relation_failures_follow_the_failure_policy(tmp_path):
    """A judge answer unusable after the repair is final (never judged again); an API failure is retryable
    (judged again by the next build) until its max_attempts-th failure, which is gave_up."""
    from engine.stages.relation import RelationJudgeStage

    clips = _clips(SPEC[:3])
    rows = holdout.sed_candidates(clips).select(list(holdout.JUDGE_COLUMNS))
    out = holdout.RelationBatch(lambda: RelationJudgeStage(_Backend(
        ['{"relation": "consistent", "intensity": 3, "reason": "calm"}', "not json", ("rate_limited",),
         "still not json"])))(rows)
    assert [(r["verdict"], r["failure"]) for r in out.to_pylist()] == [
        ("ok", None), ("failed", "final"), ("failed", "retryable")]
    a, b, c = out.column("clip_id").to_pylist()
    for run in (1, 2):  # the API keeps failing c; max_attempts=3 -> the third failure gives up
        earlier = holdout.retry_counts(holdout.read_relations(str(tmp_path)))
        holdout.save_relations(str(tmp_path), f"run{run}", holdout.settle_relations(
            out if run == 1 else out.filter(pc.equal(out.column("clip_id"), c)), earlier, 3))
        latest = holdout.latest_verdicts(holdout.read_relations(str(tmp_path)))
        assert holdout.pending_for_judge(rows, latest).column("clip_id").to_pylist() == [c]
    earlier = holdout.retry_counts(holdout.read_relations(str(tmp_path)))
    assert earlier == {c: 2}
    third = holdout.settle_relations(out.filter(pc.equal(out.column("clip_id"), c)), earlier, 3)
    assert (third.column("failure")[0].as_py(), third.column("fail_detail")[0].as_py()) == (
        "gave_up", "gave up after 3 attempts; last: judge-1: rate_limited")
    holdout.save_relations(str(tmp_path), "run3", third)
    latest = holdout.latest_verdicts(holdout.read_relations(str(tmp_path)))
    assert holdout.pending_for_judge(rows, latest).num_rows == 0
    assert (latest[a]["verdict"], latest[b]["failure"], latest[c]["failure"]) == ("ok", "final", "gave_up")


def test_an_empty_split_is_neither_written_nor_listed(tmp_path):
    """No test record (no clip judged yet): no saber_test.jsonl for either framework, and dataset_info.json does
    not list it (LLaMA-Factory 0.9.5 raises StopIteration on an empty listed file, ms-swift on an empty file)."""
    clips = _clips(SPEC)
    splits = holdout.make_splits(holdout.sed_candidates(clips), {}, per_subset=2)
    assert splits.test == []
    holdout.write_splits(str(tmp_path), splits, with_test=True)
    info = json.loads((tmp_path / "exports" / "llama_factory" / "dataset_info.json").read_text())
    assert set(info) == {"saber_train"}
    assert not list((tmp_path / "exports").rglob("saber_test.jsonl"))


# (name, recording, speaker, relation, intensity): h shares recording v1 with a; b shares speaker A with a; f
# shares speaker B with c; e has no speaker.
SPEAKER_SPEC = [("a", "v1", "A", "inconsistent", 9), ("b", "v2", "A", "consistent", 2),
                ("c", "v3", "B", "consistent", 10), ("d", "v4", "C", "inconsistent", 1),
                ("e", "v5", None, "consistent", 5), ("f", "v6", "B", "inconsistent", 3),
                ("g", "v7", "D", "consistent", 1), ("h", "v1", "E", "consistent", 0)]


def _speaker_splits(hold_out_speakers):
    rows = []
    for name, video, speaker, _, _ in SPEAKER_SPEC:
        row = new_row(f"/d/{name}.mp4", source_video=video, speaker=speaker, status="kept", **FIELDS)
        rows.append({k: row[k] for k in CLIP_SCHEMA.names})
    clips = pa.Table.from_pylist(rows, schema=CLIP_SCHEMA)
    verdicts = _verdicts(clips, {name: (relation, intensity) for name, _, _, relation, intensity in SPEAKER_SPEC})
    splits = holdout.make_splits(holdout.sed_candidates(clips), verdicts, per_subset=1,
                                 hold_out_speakers=hold_out_speakers)
    name = {r["clip_id"]: r["source_uri"].rsplit("/", 1)[1][:-4] for r in clips.to_pylist()}
    return splits, sorted(name[r["clip_id"]] for r in splits.test), sorted(name[r["clip_id"]] for r in splits.train)


def test_speakers_are_held_out_on_request_and_the_stats_count_both_groupings():
    # Top consistent: c (10); top inconsistent: a (9). Test recordings v1, v3; test speakers A, B.
    by_video, test, train = _speaker_splits(hold_out_speakers=False)
    assert test == ["a", "c"]
    assert train == ["b", "d", "e", "f", "g"]  # h leaves with recording v1; b and f keep speakers A and B
    assert by_video.stats["held_out_same_video"] == 1 and by_video.stats["held_out_same_speaker"] == 0
    assert by_video.stats["groups"] == {
        "by": ["source_video"], "recordings": {"test": 2, "train": 5, "shared": 0},
        "speakers": {"test": 2, "train": 4, "shared": 2, "test_clips_without_speaker": 0}}

    by_speaker, test, train = _speaker_splits(hold_out_speakers=True)
    assert test == ["a", "c"]
    assert train == ["d", "e", "g"]  # b (speaker A) and f (speaker B) leave too; e has no speaker and stays
    assert by_speaker.stats["sed_train"] == 3
    assert by_speaker.stats["held_out_same_video"] == 1 and by_speaker.stats["held_out_same_speaker"] == 2
    assert by_speaker.stats["groups"] == {
        "by": ["source_video", "speaker"], "recordings": {"test": 2, "train": 3, "shared": 0},
        "speakers": {"test": 2, "train": 2, "shared": 0, "test_clips_without_speaker": 0}}


def test_groups_come_from_the_clip_table_not_from_the_verdicts_of_an_earlier_build():
    """relations/ keeps the source_video a clip had when it was judged; a corrected manifest regroups it."""
    clips = _clips(SPEC)
    verdicts = _verdicts(clips, JUDGED)
    for verdict in verdicts.values():
        verdict["source_video"] = "stale"  # as if every clip had been judged under one old recording name
    splits = holdout.make_splits(holdout.sed_candidates(clips), verdicts, per_subset=2)
    assert len(splits.test) == 4 and splits.stats["groups"]["recordings"]["test"] == 3


def _random_build(seed, clips=300):
    """Clips over 60 recordings and 25 speakers, some unannotated or rejected, verdicts with ties in intensity."""
    rng = random.Random(seed)
    spec = [(f"k{i:03d}", f"v{rng.randrange(60)}", rng.choice(["kept"] * 5 + ["rejected"]), rng.random() > 0.1)
            for i in range(clips)]
    table = _clips(spec)
    speakers = pa.array([f"s{rng.randrange(25)}" if rng.random() > 0.2 else None for _ in range(clips)])
    table = table.set_column(table.schema.get_field_index("speaker"), "speaker", speakers)
    judged = {name: (rng.choice(["consistent", "inconsistent"]), rng.randrange(11)) if rng.random() > 0.1
              else "judge_unparseable" for name, *_ in spec if rng.random() > 0.15}
    return table, _verdicts(table, judged)


def test_arrow_selection_picks_what_the_python_rule_picks():
    """select_test_table (Arrow, walks only the top of each subset) against select_test (every candidate in Python)
    on random candidates with tied intensities and shared recordings."""
    from engine.dataset.saber_test import SaberTestCandidate, select_test, select_test_table

    rng = random.Random(7)
    pool = [SaberTestCandidate(f"c{i:04d}", f"v{rng.randrange(40)}", rng.choice(["consistent", "inconsistent"]),
                               rng.randrange(11), f"r{i}", rng.choice([None, "s1", "s2"])) for i in range(2000)]
    table = pa.table({"clip_id": [c.clip_id for c in pool], "source_video": [c.source_video for c in pool],
                      "relation": [c.relation for c in pool], "intensity": [c.intensity for c in pool],
                      "reason": [c.reason for c in pool], "speaker": pa.array([c.speaker for c in pool], pa.string())})
    for per_subset in (1, 7, 39, 500):  # 500: more than there are recordings
        assert select_test_table(table, per_subset, window=16) == select_test(pool, per_subset)


def test_verdict_table_keeps_the_verdict_the_rule_says():
    """One verdict a clip: a success over any failure, a finished failure over a retryable one, else the latest."""
    from engine.dataset.split_plan import verdict_table

    t = [datetime(2026, 1, d, tzinfo=timezone.utc) for d in (1, 2, 3, 4)]
    rows = [("a", "failed", "retryable", t[3]), ("a", "ok", None, t[0]), ("a", "failed", "final", t[2]),
            ("b", "failed", "retryable", t[0]), ("b", "failed", "gave_up", t[1]), ("b", "failed", "retryable", t[3]),
            ("c", "failed", "retryable", t[1]), ("c", "failed", None, t[2]), ("d", "ok", None, t[0]),
            ("d", "ok", None, t[1])]
    table = pa.Table.from_pylist([{"clip_id": c, "verdict": v, "failure": f, "judged_at": at, "fail_detail": str(n)}
                                  for n, (c, v, f, at) in enumerate(rows)], schema=holdout.RELATION_SCHEMA)
    latest = {r["clip_id"]: r["fail_detail"] for r in verdict_table(table).to_pylist()}
    assert latest == {"a": "1", "b": "4", "c": "7", "d": "9"}
    assert holdout.latest_verdicts(table)["b"]["failure"] == "gave_up"


def test_streamed_records_equal_the_records_made_in_memory(tmp_path):
    """The build's path (selection on a few columns, records streamed from the clip table in parts) writes the same
    sed/, saber_test/ and exports as make_splits + write_splits, with speakers held out."""
    from engine.dataset.split_plan import PLAN_COLUMNS, plan_splits

    table, verdicts = _random_build(3)
    candidates = holdout.sed_candidates(table)
    splits = holdout.make_splits(candidates, verdicts, per_subset=6, hold_out_speakers=True)
    holdout.write_splits(str(tmp_path / "memory"), splits, with_test=True)
    relations = pa.Table.from_pylist(list(verdicts.values()), schema=holdout.RELATION_SCHEMA)
    plan = plan_splits(candidates.select(list(PLAN_COLUMNS)), relations, 6, hold_out_speakers=True)
    assert plan.stats == splits.stats and len(plan.test) == 12
    parts = (table.slice(start, 37).select(list(holdout.RECORD_COLUMNS)) for start in range(0, table.num_rows, 37))
    holdout.write_split_records(str(tmp_path / "stream"), parts, plan, with_test=True)
    files = sorted(p.relative_to(tmp_path / "memory") for p in (tmp_path / "memory").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "stream") for p in (tmp_path / "stream").rglob("*") if p.is_file())
    for name in files:
        memory, stream = tmp_path / "memory" / name, tmp_path / "stream" / name
        if name.suffix == ".parquet":
            assert pq.read_table(stream).equals(pq.read_table(memory)), name
        else:
            assert stream.read_bytes() == memory.read_bytes(), name
    train = pq.read_table(tmp_path / "stream" / "sed" / "part-00000.parquet")
    assert train.num_rows == splits.stats["sed_train"] > 0
    speaker_of = dict(zip(table.column("clip_id").to_pylist(), table.column("speaker").to_pylist(), strict=True))
    test_speakers = {c.speaker for c in plan.test if c.speaker}
    assert not test_speakers & {speaker_of[c] for c in train.column("clip_id").to_pylist()}
