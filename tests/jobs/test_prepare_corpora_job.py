"""jobs/prepare_corpora.py as users run it: S3 roots and outputs, and manifest -> build_saber -> splits on a mixed
tree of four corpora (RAVDESS, CREMA-D, MELD, MEAD) whose clips are real decodable media (the generated asr set,
renamed into each corpus's layout). Every number checked is worked out by hand in the comments."""

import json
import shutil
import subprocess
import sys
import threading
from collections import Counter

import pyarrow.parquet as pq
import pytest

from engine.core import storage
from engine.dataset.writer import read_clip_table
from engine.devkit.fake_openai import FakeOpenAI
from tests.jobs.helpers import REPO, job_env, run_build, split_config

pytestmark = pytest.mark.slow
PREPARE = [sys.executable, str(REPO / "jobs" / "prepare_corpora.py")]


def run_prepare(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*PREPARE, *args], capture_output=True, text=True, env=env or job_env(), timeout=120,
                          cwd=REPO)


MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
TRAIN_CSV = MELD_HEADER + (
    '1,First line.,Rachel,joy,positive,0,0,2,3,"00:01:00,000","00:01:02,000"\n'
    '2,Second line.,Ross,anger,negative,0,1,2,3,"00:01:03,000","00:01:05,000"\n'
    '3,Third line.,Rachel,sadness,negative,1,0,2,4,"00:02:00,000","00:02:02,000"\n'
    '4,Lost clip.,Joey,neutral,neutral,2,0,2,4,"00:03:00,000","00:03:02,000"\n')  # no clip: label_without_media
DEV_CSV = MELD_HEADER + '1,Dev line.,Monica,fear,negative,0,0,1,1,"00:00:01,000","00:00:02,000"\n'

# Clip i of the generated set (good_%03d) -> its place in a corpus layout. Speakers and recordings by hand:
# RAVDESS actor01 (0, 1), actor02 (2, 3); CREMA-D 1001 (4, 5), 1002 (6, 7); MELD train dia0 (8 Rachel, 9 Ross),
# train dia1 (10 Rachel), dev dia0 (11 Monica); MEAD take M003/happy/1/001 from two cameras (12, 13), M003 sad (14),
# W009 (15). Every other clip is its own recording.
LAYOUT = [
    "RAVDESS/Actor_01/01-01-05-02-01-01-01.mp4", "RAVDESS/Actor_01/01-01-03-01-02-01-01.mp4",
    "RAVDESS/Actor_02/01-01-04-01-01-02-02.mp4", "RAVDESS/Actor_02/01-01-06-02-02-01-02.mp4",
    "CREMA-D/VideoFlash/1001_DFA_ANG_XX.mp4", "CREMA-D/VideoFlash/1001_IEO_HAP_HI.mp4",
    "CREMA-D/VideoFlash/1002_TIE_SAD_LO.mp4", "CREMA-D/VideoFlash/1002_WSI_NEU_XX.mp4",
    "MELD.Raw/train/train_splits/dia0_utt0.mp4", "MELD.Raw/train/train_splits/dia0_utt1.mp4",
    "MELD.Raw/train/train_splits/dia1_utt0.mp4", "MELD.Raw/dev/dev_splits_complete/dia0_utt0.mp4",
    "MEAD/M003/video/front/happy/level_1/001.mp4", "MEAD/M003/video/left_30/happy/level_1/001.mp4",
    "MEAD/M003/video/front/sad/level_2/002.mp4", "MEAD/W009/video/front/angry/level_3/003.mp4",
]
# Files that never become rows (zero bytes: the engine never sees them).
EXTRA_FILES = {
    "RAVDESS/Actor_01/02-01-05-02-01-01-01.mp4": "",  # video-only
    "RAVDESS/Audio_Speech_Actors_01-24/Actor_01/03-01-05-02-01-01-01.wav": "",  # audio-only
    "CREMA-D/AudioWAV/1001_DFA_ANG_XX.wav": "",  # audio-only
    "MEAD/M003/audio/happy/level_1/001.m4a": "",  # paired with clips 12 and 13
    "MELD.Raw/train_sent_emo.csv": TRAIN_CSV, "MELD.Raw/dev_sent_emo.csv": DEV_CSV,
}
# The relation judge's verdict for clip i: (relation, intensity).
VERDICTS = {0: ("inconsistent", 9), 1: ("consistent", 2), 2: ("inconsistent", 3), 3: ("consistent", 4),
            4: ("inconsistent", 8), 5: ("consistent", 1), 6: ("inconsistent", 2), 7: ("consistent", 0),
            8: ("consistent", 10), 9: ("inconsistent", 7), 10: ("consistent", 5), 11: ("inconsistent", 1),
            12: ("consistent", 8), 13: ("consistent", 9), 14: ("inconsistent", 6), 15: ("consistent", 3)}


def _mixed_tree(root, folder, clips):
    good = sorted(c.name for c in clips if c.kind == "good")[:16]
    speech = {}
    for i, (name, rel) in enumerate(zip(good, LAYOUT, strict=True)):
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / name, target)
        sidecar = (folder / name).with_suffix(".json")
        shutil.copyfile(sidecar, target.with_suffix(".json"))  # --sidecar-annotations: its SABER annotation
        speech[json.loads(sidecar.read_text())["audio_desc"]["speech_content"]] = i
    for rel, text in EXTRA_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return speech


class Judge:
    """Answers the relation judge for clip i (found by its speech content) with VERDICTS[i]."""

    def __init__(self, speech: dict[str, int]) -> None:
        self.speech, self.calls, self.lock = speech, Counter(), threading.Lock()

    def __call__(self, body, prompt):
        first = body["messages"][0]["content"] + "\n"
        index = next(i for s, i in self.speech.items() if f"Speech content: {s}\n" in first)
        with self.lock:
            self.calls[index] += 1
        relation, intensity = VERDICTS[index]
        return {"content": json.dumps({"relation": relation, "intensity": intensity, "reason": f"clip {index}"})}


def test_four_corpora_manifest_to_build_saber_to_leakage_free_splits(asr_set, tmp_path):
    folder, clips = asr_set
    root = tmp_path / "corpora"
    speech = _mixed_tree(root, folder, clips)
    manifest = tmp_path / "manifest.parquet"
    prepared = run_prepare("--corpus", "ravdess", "--root", str(root / "RAVDESS"), "--corpus", "crema_d", "--root",
                           str(root / "CREMA-D"), "--corpus", "meld", "--root", str(root / "MELD.Raw"),
                           "--corpus", "mead", "--root", str(root / "MEAD"), "--output", str(manifest),
                           "--sidecar-annotations")
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    report = json.loads((tmp_path / "manifest.report.json").read_text())
    assert report["rows"] == 16 and report["skipped"] == {"video_only": 1, "audio_only": 2}
    assert report["malformed"] == 1 and report["corpora"]["meld"]["malformed_entries"] == [
        {"reason": "label_without_media", "where": "train_sent_emo.csv:5", "detail": "no clip with key 'train/2/0'"}]
    assert [report["corpora"][c]["speakers"] for c in ("ravdess", "crema_d", "meld", "mead")] == [2, 2, 3, 2]
    assert [report["corpora"][c]["recordings"] for c in ("ravdess", "crema_d", "meld", "mead")] == [4, 4, 3, 3]
    assert report["corpora"]["mead"]["paired"] == {"audio_uri": 2}

    out = tmp_path / "out"
    judge = Judge(speech)
    with FakeOpenAI(responder=judge) as server:
        built = run_build("--config", str(split_config(tmp_path, server.url)), "--input", str(manifest), "--output",
                          str(out), timeout=400)
    assert built.returncode == 0, built.stderr[-3000:]
    index = {str(root / rel): i for i, rel in enumerate(LAYOUT)}
    table = read_clip_table(str(out)).to_pylist()
    assert len(table) == 16 and all(r["status"] == "kept" for r in table), [r["reject_reason"] for r in table]
    rows = {index[r["source_uri"]]: r for r in table}
    assert (rows[8]["dataset"], rows[8]["speaker"], rows[8]["label"], rows[8]["emotion"], rows[8]["corpus_split"]) == (
        "MELD", "meld/Rachel", "joy", "happiness", "train")
    assert (rows[0]["speaker"], rows[0]["label"], rows[0]["emotion"], rows[0]["source_video"]) == (
        "ravdess/actor01", "angry", "anger", "ravdess/01-05-02-01-01-01")
    assert rows[12]["source_video"] == rows[13]["source_video"] == "mead/M003/happy/level_1/001"
    assert json.loads(rows[13]["corpus_extras"])["audio_uri"] == str(root / "MEAD/M003/audio/happy/level_1/001.m4a")
    assert Counter(r["dataset"] for r in table) == {"RAVDESS": 4, "CREMA-D": 4, "MELD": 4, "MEAD": 4}
    assert rows[5]["annotation_source"] == "sidecar"

    # Consistent by intensity: 8 (10), 13 (9), then 12 (8) shares 13's take, so 10 (5) would be third.
    # Inconsistent: 0 (9), 4 (8). Their recordings take clips 9 (dialogue 0 with 8) and 12 out of training.
    test = [(index[r["source_uri"]], r["av_relation"], r["av_intensity"]) for r in pq.read_table(out / "saber_test")
            .to_pylist()]
    assert test == [(8, "consistent", 10), (13, "consistent", 9), (0, "inconsistent", 9), (4, "inconsistent", 8)]
    train = sorted(index[r["source_uri"]] for r in pq.read_table(out / "sed").to_pylist())
    assert train == [1, 2, 3, 5, 6, 7, 10, 11, 14, 15]
    splits = json.loads((out / "report.json").read_text())["splits"]
    assert splits == {
        "sed_records": 16, "sed_train": 10, "held_out_same_video": 2, "held_out_same_speaker": 0,
        "saber_test": {"consistent": 2, "inconsistent": 2, "requested_per_subset": 2},
        # Test recordings: dia0, the M003 happy take, RAVDESS take 0, CREMA-D clip 4; training: the other ten.
        # Speakers by recording only: Rachel, M003, actor01 and 1001 also speak in training clips (10, 14, 1, 5).
        "groups": {"by": ["source_video"], "recordings": {"test": 4, "train": 10, "shared": 0},
                   "speakers": {"test": 4, "train": 8, "shared": 4, "test_clips_without_speaker": 0}},
        "relations": {"judged": 16, "consistent": 9, "inconsistent": 7, "failed": {}}}
    assert dict(judge.calls) == dict.fromkeys(range(16), 1)
    print(f"prepare_corpora -> build_saber: 4 corpora, 16 clips, {report['skipped']} skipped, 1 malformed listed; "
          f"test 2+2 from 4 recordings, train 10, held out by recording 2")


def test_s3_roots_and_output_list_and_argument_errors(moto_s3, tmp_path):
    local = tmp_path / "RAVDESS"
    for rel in ("Actor_01/01-01-08-02-01-02-01.mp4", "Actor_01/03-01-08-02-01-02-01.wav",
                "Actor_01/01-01-10-01-01-01-01.mp4"):
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_text("")
    fs = storage.filesystem("s3://saber-test")
    for path in sorted(local.rglob("*.*")):
        fs.put_file(str(path), f"saber-test/corpora/RAVDESS/{path.relative_to(local)}")
    env = job_env(**moto_s3)
    done = run_prepare("--corpus", "ravdess", "--root", "s3://saber-test/corpora/RAVDESS", "--output",
                       "s3://saber-test/manifests/ravdess.jsonl", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in fs.cat_file("saber-test/manifests/ravdess.jsonl").decode().splitlines()]
    assert [(r["uri"], r["label"], r["emotion"], r["speaker"]) for r in rows] == [
        ("s3://saber-test/corpora/RAVDESS/Actor_01/01-01-08-02-01-02-01.mp4", "surprised", "surprise",
         "ravdess/actor01")]
    report = json.loads(fs.cat_file("saber-test/manifests/ravdess.report.json"))
    assert report["corpora"]["ravdess"]["skipped"] == {"audio_only": 1}
    assert report["corpora"]["ravdess"]["malformed_entries"] == [
        {"reason": "unknown_code", "where": "Actor_01/01-01-10-01-01-01-01.mp4", "detail": "emotion='10'"}]

    listed = run_prepare("--list")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 10 and "msp_improv" in listed.stdout
    bad = run_prepare("--corpus", "ravdess", "--root", str(local), "--output", str(tmp_path / "m.parquet"),
                      "media.pattern=(", "layout=sure")
    assert bad.returncode == 2 and "media.pattern" in bad.stderr and "layout" in bad.stderr
    unpaired = run_prepare("--corpus", "ravdess", "--output", str(tmp_path / "m.parquet"))
    assert unpaired.returncode == 2 and "one --root per --corpus" in unpaired.stderr
    missing = run_prepare("--corpus", "ravdess", "--root", str(tmp_path / "nowhere"), "--output",
                          str(tmp_path / "m.parquet"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr
