"""build_saber with the SABER-Test step: a relation judge behind a loopback OpenAI-compatible server, clips
grouped two per recording. Checks the split against numbers worked out by hand, and that a rerun judges
nothing again."""

import json
import threading
from collections import Counter

import pyarrow.parquet as pq
import pytest

from engine.devkit.fake_openai import FakeOpenAI
from tests.jobs.helpers import run_build, split_config

pytestmark = pytest.mark.slow


class RelationJudge:
    """Clip i (found by its speech content): consistent when i is even, intensity (7 i) mod 11; clip 15's
    answers are never valid JSON."""

    def __init__(self, speech: dict[str, int]) -> None:
        self.speech, self.calls, self.lock = speech, Counter(), threading.Lock()

    def __call__(self, body, prompt):
        first = body["messages"][0]["content"] + "\n"  # a repair re-ask repeats the first message
        index = next(i for s, i in self.speech.items() if f"Speech content: {s}\n" in first)
        with self.lock:
            self.calls[index] += 1
        if index == 15:
            return {"content": "relation: inconsistent!"}
        relation = "consistent" if index % 2 == 0 else "inconsistent"
        return {"content": json.dumps({"relation": relation, "intensity": 7 * index % 11, "reason": f"clip {index}"})}


def _manifest(tmp_path, folder, clips):
    good = sorted(c.name for c in clips if c.kind == "good")
    assert len(good) == 16
    lines, speech = [], {}
    for i, name in enumerate(good):
        annotation = json.loads((folder / name).with_suffix(".json").read_text())
        speech[annotation["audio_desc"]["speech_content"]] = i
        lines.append(json.dumps({"uri": str(folder / name), "annotation": annotation, "source_video": f"rec{i // 2}"}))
    path = tmp_path / "clips.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, good, speech


def test_saber_test_split_by_hand_and_a_rerun_judges_nothing_again(asr_set, tmp_path):
    folder, clips = asr_set
    manifest, names, speech = _manifest(tmp_path, folder, clips)
    judge = RelationJudge(speech)
    out = tmp_path / "out"
    with FakeOpenAI(responder=judge) as server:
        config = split_config(tmp_path, server.url)
        first = run_build("--config", str(config), "--input", str(manifest), "--output", str(out), timeout=300)
        assert first.returncode == 0, first.stderr[-3000:]
        calls_first = dict(judge.calls)
        judge.calls.clear()
        second = run_build("--config", str(config), "--input", str(manifest), "--output", str(out), timeout=300)
        assert second.returncode == 0, second.stderr[-3000:]
        calls_second = sum(judge.calls.values())

    index = {str(folder / n): i for i, n in enumerate(names)}
    test = pq.read_table(out / "saber_test").to_pylist()
    # Consistent (even i), intensity 7i mod 11: 14 -> 10, 6 -> 9 are the top two. Inconsistent (odd i, 15
    # unjudged): 3 -> 10, 9 -> 8. Their recordings rec7, rec3, rec1, rec4 hold clips 14-15, 6-7, 2-3, 8-9.
    assert [(index[r["source_uri"]], r["av_relation"], r["av_intensity"]) for r in test] == [
        (14, "consistent", 10), (6, "consistent", 9), (3, "inconsistent", 10), (9, "inconsistent", 8)]
    train = sorted(index[r["source_uri"]] for r in pq.read_table(out / "sed").to_pylist())
    assert train == [0, 1, 4, 5, 10, 11, 12, 13]
    assert not {r["source_video"] for r in test} & {f"rec{i // 2}" for i in train}
    report = json.loads((out / "report.json").read_text())
    assert report["splits"] == {
        "sed_records": 16, "sed_train": 8, "held_out_same_video": 4, "held_out_same_speaker": 0,
        "groups": {"by": ["source_video"], "recordings": {"test": 4, "train": 4, "shared": 0},
                   "speakers": {"test": 0, "train": 0, "shared": 0, "test_clips_without_speaker": 4}},
        "saber_test": {"consistent": 2, "inconsistent": 2, "requested_per_subset": 2},
        "relations": {"judged": 16, "consistent": 8, "inconsistent": 7, "failed": {"judge_unparseable": 1}}}
    # One call per clip, clip 15 asked once more to repair its answer.
    assert calls_first == {**{i: 1 for i in range(15)}, 15: 2}
    # The rerun: no clip to process, relations/ holds 15 verdicts and clip 15's final failure (unusable after the
    # repair: engine.core.failures), so no clip is judged again: not one request reaches the server.
    assert calls_second == 0
    assert report["run"]["skipped_already_done"] == 16  # report.json is the rerun's, with the same splits
    # Every verdict was made in the stream (parts part-<run>-sNNNNN), none by the step after it.
    parts = sorted(p.name for p in (out / "relations").iterdir())
    assert parts and all("-s0" in name for name in parts), parts
    assert sum(pq.read_table(out / "relations" / name).num_rows for name in parts) == 16
    for folder_name in ("ms_swift", "llama_factory"):
        assert len((out / "exports" / folder_name / "saber_test.jsonl").read_text().splitlines()) == 4
    assert (out / "report.png").stat().st_size > 10_000
    print(f"saber_test job: 16 clips in 8 recordings, test 2+2, train 8, held out 4, first run "
          f"{sum(calls_first.values())} judge calls, rerun {calls_second}")
