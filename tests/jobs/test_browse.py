"""The data browser (engine.dataset.browse, jobs/browse.py) and its curation file (engine.dataset.curation): the API
through Flask's test client on a small build written by hand with the real clips/ and relations/ schemas over the small
generated set's media (filters worked out by hand), the curation file and its reader, the same build on S3 (moto),
and the page in a real headless chromium."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import wave
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from engine.core import storage
from engine.core.parts import write_parquet_whole
from engine.core.schema import CLIP_SCHEMA, new_row, reject
from engine.dataset.browse import create_app
from engine.dataset.curation import CurationDecision, CurationMark, append_mark, apply_curation, read_curation
from engine.dataset.holdout import RELATION_SCHEMA
from engine.dataset.writer import read_clip_table
from tests.jobs.helpers import REPO, free_port, job_env, wait_for

# name -> (dataset, lang, emotion, status/stage/reason, relation verdict or None)
CLIPS = {
    "good_000": ("demo", "en", "sad", None, "consistent"),
    "good_001": ("demo", "en", "sad", None, "inconsistent"),
    "wrong_transcript_000": ("meld", "en", "angry", ("asr", "wer_above_threshold"), None),
    "wrong_transcript_001": ("demo", "en", "happy", ("asr", "wer_above_threshold"), "failed"),
    "not_a_video_000": ("demo", None, None, ("probe", "unreadable_container"), None),
    "noise_audio_000": ("meld", "en", "angry", ("noise", "excessive_noise"), None),
}
SPOKEN = {"good_000": "My little brother cried himself asleep again tonight",  # "to sleep" -> "asleep"
          "good_001": "She left without saying goodbye to anyone",
          "wrong_transcript_000": "The soup needs a little more salt and pepper"}


def _row(folder: Path, name: str) -> dict:
    dataset, lang, emotion, rejected, _ = CLIPS[name]
    row = new_row(str(folder / f"{name}.mp4"), dataset=dataset, lang=lang, emotion=emotion, attempts=1)
    sidecar = folder / f"{name}.json"
    annotation = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    row.update({k: v for k, v in annotation.items() if isinstance(v, str)}, **annotation.get("audio_desc", {}))
    if name in SPOKEN:
        row.update(asr_text=SPOKEN[name], asr_metric="wer", asr_model="tiny.en")
    row.update(description=f"description of {name}", consistency_score=0.8, duration_s=4.0, width=320, height=240,
               provenance=json.dumps({"describe": "tiny-vl prompt@abc123"}), run_id="r1",
               processed_at=datetime(2026, 11, 30, tzinfo=timezone.utc))
    if rejected:
        reject(row, *rejected, detail=f"planted {name}")
    return row


def _relation(name: str, clip_id: str, verdict: str) -> dict:
    ok = verdict != "failed"
    return {"clip_id": clip_id, "source_video": name, "verdict": "ok" if ok else "failed",
            "av_relation": verdict if ok else None, "av_intensity": 6 if ok else None,
            "av_reason": "the face and the voice agree" if ok else None,
            "fail_reason": None if ok else "judge_unparseable", "fail_detail": None,
            "failure": None if ok else "final", "judge": "tiny-judge", "run_id": "r1",
            "judged_at": datetime(2026, 11, 30, tzinfo=timezone.utc)}


def write_build(out: str, media: Path) -> dict[str, str]:
    """clips/ (one part), relations/ and report.json under `out` (local or s3://); the clip ids by name."""
    rows = {name: _row(media, name) for name in CLIPS}
    clips = pa.Table.from_pylist([{k: r[k] for k in CLIP_SCHEMA.names} for r in rows.values()], schema=CLIP_SCHEMA)
    write_parquet_whole(storage.join(out, "clips"), "part-r1-00000.parquet", clips)
    relations = [_relation(n, rows[n]["clip_id"], c[4]) for n, c in CLIPS.items() if c[4]]
    write_parquet_whole(storage.join(out, "relations"), "part-r1-00000.parquet",
                        pa.Table.from_pylist(relations, schema=RELATION_SCHEMA))
    storage.filesystem(out).pipe_file(storage.strip_protocol(storage.join(out, "report.json")),
                                      json.dumps({"input": len(rows), "kept": 2}).encode())
    return {name: row["clip_id"] for name, row in rows.items()}


@pytest.fixture(scope="module")
def build(small_set, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    out = tmp_path_factory.mktemp("browse") / "out"
    return out, write_build(str(out), small_set[0])


@pytest.fixture(scope="module")
def client(build):
    out, _ = build
    return create_app(str(out)).test_client()


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha1()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "curation.jsonl"):
        digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def _names(client, ids: dict[str, str], query: str) -> set[str]:
    by_id = {v: k for k, v in ids.items()}
    answer = client.get(f"/api/clips?{query}").get_json()
    assert answer["total"] == len(answer["clips"])
    return {by_id[c["clip_id"]] for c in answer["clips"]}


# ---- the API ----------------------------------------------------------------------------------------------------
def test_filters_match_the_hand_worked_sets(client, build):
    _, ids = build
    assert _names(client, ids, "") == set(CLIPS)
    assert _names(client, ids, "status=kept") == {"good_000", "good_001"}
    assert _names(client, ids, "reason=wer_above_threshold") == {"wrong_transcript_000", "wrong_transcript_001"}
    assert _names(client, ids, "stage=asr&dataset=meld") == {"wrong_transcript_000"}
    assert _names(client, ids, "dataset=meld") == {"wrong_transcript_000", "noise_audio_000"}
    assert _names(client, ids, "lang=(none)") == {"not_a_video_000"}
    assert _names(client, ids, "emotion=angry&status=rejected") == {"wrong_transcript_000", "noise_audio_000"}
    assert _names(client, ids, "relation=consistent") == {"good_000"}
    assert _names(client, ids, "relation=failed") == {"wrong_transcript_001"}
    assert _names(client, ids, "relation=(none)") == {"wrong_transcript_000", "not_a_video_000", "noise_audio_000"}
    assert _names(client, ids, "reason=excessive_noise&dataset=demo") == set()
    summary = client.get("/api/summary").get_json()
    assert summary["clips"] == 6 and summary["report"] == {"input": 6, "kept": 2}
    assert summary["facets"]["reason"] == {"(none)": 2, "wer_above_threshold": 2, "unreadable_container": 1,
                                           "excessive_noise": 1}
    assert summary["facets"]["relation"]["(none)"] == 3
    page = client.get("/api/clips?status=rejected&offset=1&limit=2").get_json()
    assert page["total"] == 4 and len(page["clips"]) == 2 and page["offset"] == 1
    bad = client.get("/api/clips?colour=red")
    assert bad.status_code == 400 and "colour" in bad.get_json()["error"]


def test_clip_detail_with_transcript_diff(client, build):
    _, ids = build
    detail = client.get(f"/api/clips/{ids['good_000']}").get_json()
    assert detail["annotation"]["speech_content"] == "My little brother cried himself to sleep again tonight"
    assert detail["annotation"]["facial_exp_desc"].startswith("The mouth corners turn down")
    assert detail["transcript"]["ops"] == [
        {"op": "equal", "ref": "my little brother cried himself", "hyp": "my little brother cried himself"},
        {"op": "replace", "ref": "to sleep", "hyp": "asleep"},
        {"op": "equal", "ref": "again tonight", "hyp": "again tonight"}]
    assert detail["provenance"] == {"describe": "tiny-vl prompt@abc123"}
    assert detail["relation"]["av_relation"] == "consistent" and detail["curation"] is None
    assert "frame_hashes" not in detail["row"] and detail["row"]["processed_at"].startswith("2026-11-30")
    # The annotated "<sniffs>" is a sound event: stripped before the comparison, as the asr stage does.
    assert client.get(f"/api/clips/{ids['good_001']}").get_json()["transcript"]["equal"] is True
    assert client.get(f"/api/clips/{ids['not_a_video_000']}").get_json()["transcript"] is None
    assert client.get("/api/clips/nope").status_code == 404


def test_frames_and_audio_are_decoded_from_the_source(client, build):
    _, ids = build
    frames = client.get(f"/api/clips/{ids['good_000']}/frames").get_json()
    assert frames["count"] == 6 and frames["times"] == sorted(frames["times"])
    jpeg = client.get(f"/api/clips/{ids['good_000']}/frames/2.jpg")
    assert jpeg.mimetype == "image/jpeg" and jpeg.data[:3] == b"\xff\xd8\xff"
    assert client.get(f"/api/clips/{ids['good_000']}/frames/6.jpg").status_code == 404
    audio = client.get(f"/api/clips/{ids['good_000']}/audio.wav")
    with wave.open(io.BytesIO(audio.data)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        assert abs(wav.getnframes() / 16000 - 4.9) < 0.2  # the clip is 4.9 s (expected.jsonl)
    broken = client.get(f"/api/clips/{ids['not_a_video_000']}/frames")
    assert broken.status_code == 422 and broken.get_json()["error"] == "unreadable_container"


def test_curation_marks_go_to_their_file_only(build):
    out, ids = build
    before = _tree_digest(out)
    client = create_app(str(out), curation=str(out.parent / "marks.jsonl")).test_client()
    url = f"/api/clips/{ids['good_001']}/curation"
    assert client.post(url, json={"action": "drop", "note": "voice is sad, face is neutral"}).status_code == 201
    assert client.post(url, json={"action": "note", "note": "check the speaker"}).status_code == 201
    assert client.post(url, data="action=keep").status_code == 415  # a plain form post (cross-site) is refused
    assert client.post(url, json={"action": "delete"}).status_code == 400
    assert client.post(url, json={"action": "note"}).status_code == 400  # a note needs text
    assert client.get(f"/api/clips/{ids['good_001']}").get_json()["curation"] == {
        "action": "drop", "notes": ["voice is sad, face is neutral", "check the speaker"]}
    lines = [json.loads(line) for line in (out.parent / "marks.jsonl").read_text().splitlines()]
    assert [(m["clip_id"], m["action"]) for m in lines] == [(ids["good_001"], "drop"), (ids["good_001"], "note")]
    assert _tree_digest(out) == before and not (out / "curation.jsonl").exists()
    assert client.get("/", headers={"Host": "evil.example:8765"}).status_code == 403  # DNS rebinding
    with pytest.raises(FileNotFoundError, match="no clips/ part files"):
        create_app(str(out.parent / "not-a-build"))
    with pytest.raises(ValueError, match="inside the build's clips/"):
        create_app(str(out), curation=str(out / "clips" / "marks.jsonl"))


def test_curation_reader_and_apply(build, tmp_path):
    out, ids = build
    path = str(tmp_path / "curation.jsonl")
    for mark in [CurationMark(ids["good_000"], "drop", "blurry"), CurationMark(ids["good_000"], "keep"),
                 CurationMark(ids["good_001"], "drop", "face does not match"),
                 CurationMark(ids["wrong_transcript_000"], "keep", "the transcript is a paraphrase"),
                 CurationMark(ids["not_a_video_000"], "keep"), CurationMark(ids["noise_audio_000"], "note", "hm")]:
        append_mark(path, mark)
    decisions = read_curation(path)
    assert decisions[ids["good_000"]] == CurationDecision("keep", ("blurry",))  # the last keep/drop wins
    assert decisions[ids["noise_audio_000"]] == CurationDecision(None, ("hm",))
    applied = {r["clip_id"]: r for r in apply_curation(read_clip_table(str(out)), decisions).to_pylist()}
    assert applied[ids["good_000"]]["status"] == "kept"
    assert (applied[ids["good_001"]]["status"], applied[ids["good_001"]]["reject_stage"],
            applied[ids["good_001"]]["reject_reason"], applied[ids["good_001"]]["reject_detail"]) == (
        "rejected", "curation", "curated_drop", "face does not match")
    kept = applied[ids["wrong_transcript_000"]]
    assert kept["status"] == "kept" and kept["reject_reason"] is None
    assert json.loads(kept["provenance"])["curation"] == (
        "kept over asr/wer_above_threshold: the transcript is a paraphrase")
    assert applied[ids["not_a_video_000"]]["reject_reason"] == "unreadable_container"  # no media: stays out
    assert applied[ids["noise_audio_000"]]["status"] == "rejected"
    (tmp_path / "bad.jsonl").write_text('{"clip_id": "x", "action": "maybe"}\n')
    with pytest.raises(ValueError, match="line 1"):
        read_curation(str(tmp_path / "bad.jsonl"))


def test_a_build_with_curation_applies_it_before_the_report_and_the_splits(build, tmp_path):
    """What run_build does with `curation=PATH` (engine.dataset.build.curate), on the hand-made build: the marks change
    the table the report and the splits read, clips/ on disk keeps the automatic verdicts."""
    from engine.core.config import EngineConfig, load_config
    from engine.dataset.build import curate
    from engine.dataset.holdout import sed_candidates
    from engine.dataset.pipeline import funnel_stages
    from engine.dataset.report import build_report

    out, ids = build
    path = str(tmp_path / "curation.jsonl")
    for mark in [CurationMark(ids["good_001"], "drop", "face does not match"),
                 CurationMark(ids["wrong_transcript_000"], "keep"), CurationMark(ids["not_a_video_000"], "keep"),
                 CurationMark("not-in-this-build", "drop")]:
        append_mark(path, mark)
    on_disk = read_clip_table(str(out))
    config = load_config(EngineConfig, REPO / "jobs" / "configs" / "demo.yaml",
                         [f"input={out}", f"output={out}", f"curation={path}"])
    table, stats = curate(config, on_disk)
    assert stats == {"file": path, "marked": 4, "dropped": 1, "kept_over_rejection": 1,
                     "unknown_clips": ["not-in-this-build"]}
    # Kept before: good_000, good_001; now good_000 and wrong_transcript_000 (the probe rejection has no media).
    assert set(sed_candidates(table).column("clip_id").to_pylist()) == {ids["good_000"], ids["wrong_transcript_000"]}
    report = build_report(table, funnel_stages(config), {})
    assert report["funnel"][-1] == {"stage": "curation", "remaining": 2, "rejected": 1}
    assert report["rejected_by_reason"]["curation/curated_drop"] == 1 and report["kept"] == 2
    assert read_clip_table(str(out)).equals(on_disk)  # clips/ untouched
    no_file = load_config(EngineConfig, REPO / "jobs" / "configs" / "demo.yaml", [f"input={out}", f"output={out}"])
    assert curate(no_file, on_disk) == (on_disk, None) and "curation" not in funnel_stages(no_file)


def test_browse_an_s3_build(moto_s3, small_set, tmp_path):
    """clips/, relations/, the media and the curation file on S3, all through engine.core.storage."""
    fs = storage.filesystem("s3://saber-test")
    for name in ("good_000", "not_a_video_000"):
        fs.put_file(str(small_set[0] / f"{name}.mp4"), f"saber-test/media/{name}.mp4")
    local = tmp_path / "media"
    local.mkdir()
    for name in CLIPS:
        for suffix in (".mp4", ".json"):
            if (small_set[0] / f"{name}{suffix}").exists():
                shutil.copy(small_set[0] / f"{name}{suffix}", local)
    ids = write_build("s3://saber-test/out", local)
    # Point two clips at their S3 copies (a build over s3:// records s3:// source URIs).
    table = read_clip_table("s3://saber-test/out")
    uris = [f"s3://saber-test/media/{Path(u).name}" for u in table.column("source_uri").to_pylist()]
    table = table.set_column(table.schema.get_field_index("source_uri"), "source_uri", pa.array(uris))
    write_parquet_whole("s3://saber-test/out/clips", "part-r1-00000.parquet", table)
    client = create_app("s3://saber-test/out").test_client()
    assert client.get("/api/clips?reason=wer_above_threshold").get_json()["total"] == 2
    assert client.get(f"/api/clips/{ids['good_000']}/frames").get_json()["count"] == 6
    assert client.get(f"/api/clips/{ids['wrong_transcript_000']}/frames").get_json()["error"] == "missing_source"
    assert client.post(f"/api/clips/{ids['good_000']}/curation", json={"action": "keep"}).status_code == 201
    assert client.post(f"/api/clips/{ids['good_000']}/curation", json={"action": "note", "note": "ok"}).status_code \
        == 201
    assert read_curation("s3://saber-test/out/curation.jsonl")[ids["good_000"]] == CurationDecision("keep", ("ok",))


# ---- the page, in a real headless chromium ----------------------------------------------------------------------
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def served(build, tmp_path):
    """jobs/browse.py on a free loopback port, as a user starts it; its URL and its curation file."""
    out, _ = build
    port, curation = free_port(), tmp_path / "curation.jsonl"
    proc = subprocess.Popen([sys.executable, str(REPO / "jobs" / "browse.py"), str(out), "--port", str(port),
                             "--curation", str(curation)], env=job_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "server.log").open("w"))
    url = f"http://127.0.0.1:{port}/"
    try:
        assert wait_for(lambda: _answers(url + "api/summary"), timeout=60), (tmp_path / "server.log").read_text()
        yield url, curation
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def chrome(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium/chromedriver on PATH (Debian: apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev dependency (pip install -e .[dev])")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1650",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    # The system chromedriver, named: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def test_page_in_headless_chromium(chrome, served, build, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, curation = served
    _, ids = build
    wait = WebDriverWait(chrome, 30)
    chrome.get(url)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#clips tr.clip")) == len(CLIPS))
    chrome.save_screenshot(str(tmp_path / "1-list.png"))

    Select(chrome.find_element(By.ID, "filter-reason")).select_by_value("wer_above_threshold")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#clips tr.clip")) == 2)
    shown = {r.get_attribute("data-clip-id") for r in chrome.find_elements(By.CSS_SELECTOR, "#clips tr.clip")}
    assert shown == {ids["wrong_transcript_000"], ids["wrong_transcript_001"]}
    assert "reason=wer_above_threshold" in chrome.current_url
    chrome.save_screenshot(str(tmp_path / "2-filtered.png"))

    Select(chrome.find_element(By.ID, "filter-reason")).select_by_value("")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#clips tr.clip")) == len(CLIPS))
    chrome.find_element(By.CSS_SELECTOR, f"tr[data-clip-id='{ids['good_000']}']").click()
    # Frames are real decoded JPEGs once every <img> has a natural width; the audio element has loaded the WAV.
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#frames img")) == 6 and d.execute_script(
        "return [...document.querySelectorAll('#frames img')].every(i => i.complete && i.naturalWidth > 0)"))
    wait.until(lambda d: d.execute_script("const a = document.getElementById('audio'); return a.readyState >= 1"))
    duration = chrome.execute_script("return document.getElementById('audio').duration")
    assert abs(duration - 4.9) < 0.2
    assert chrome.find_element(By.CSS_SELECTOR, "#transcript .rep-ref").text == "to sleep"
    assert chrome.find_element(By.CSS_SELECTOR, "#transcript .rep-hyp").text == "asleep"
    assert "The mouth corners turn down" in chrome.find_element(By.ID, "annotation").text

    chrome.find_element(By.ID, "note").send_keys("clear face, keep")
    chrome.find_element(By.ID, "mark-keep").click()
    wait.until(lambda d: d.find_element(By.ID, "curation-state").text.startswith("keep"))
    chrome.save_screenshot(str(tmp_path / "3-clip.png"))
    assert read_curation(str(curation))[ids["good_000"]] == CurationDecision("keep", ("clear face, keep",))

    chrome.find_element(By.CSS_SELECTOR, f"tr[data-clip-id='{ids['not_a_video_000']}']").click()
    wait.until(lambda d: "unreadable_container" in d.find_element(By.ID, "frames").text)
    assert not chrome.find_element(By.ID, "audio").is_displayed()  # the previous clip's sound is gone
    chrome.save_screenshot(str(tmp_path / "4-broken.png"))
    print(f"screenshots in {tmp_path}")
