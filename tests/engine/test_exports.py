"""Exports for ms-swift and LLaMA-Factory: SFT and preference layouts, empty datasets, localised s3:// media."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.core import storage
from engine.dataset import exports
from engine.dataset.exports_media import localise, map_prefix, parse_mapping
from tests.engine.export_fixtures import media_files, pair_row, sed_row, write_tables
from tests.jobs.helpers import REPO, job_env


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_preference_rows_in_both_layouts():
    pair = pair_row("c0", "/m/c0.mp4", 0)
    swift = exports.pair_to_ms_swift(pair)
    assert [m["role"] for m in swift["messages"]] == ["system", "user", "assistant"]
    assert swift["messages"][1]["content"].startswith("<video><audio>")
    assert (swift["messages"][2]["content"], swift["rejected_response"]) == ("good answer 0 (c0)", "bad answer 0 (c0)")
    assert swift["videos"] == swift["audios"] == ["/m/c0.mp4"]
    lf = exports.pair_to_llama_factory(pair, media=lambda uri: uri.replace("/m/", "/local/"))
    assert [m["role"] for m in lf["messages"]] == ["system", "user"]  # the prompt ends with the user turn
    assert lf["chosen"] == {"role": "assistant", "content": "good answer 0 (c0)"}
    assert lf["rejected"] == {"role": "assistant", "content": "bad answer 0 (c0)"}
    assert lf["videos"] == lf["audios"] == ["/local/c0.mp4"]
    info = exports.llama_factory_dataset_info("p", "p.jsonl", ranking=True)["p"]
    columns = info["columns"]
    assert info["ranking"] is True and (columns["chosen"], columns["rejected"]) == ("chosen", "rejected")
    assert "ranking" not in exports.llama_factory_dataset_info("s", "s.jsonl")["s"]


def test_empty_datasets_are_neither_written_nor_listed(tmp_path):
    records = [sed_row("c0", "/m/c0.mp4")]
    pairs = [pair_row("c0", "/m/c0.mp4", 0)]
    exports.write_exports(str(tmp_path), {"a": records, "b": records, "p": pairs}, frozenset({"p"}))
    # A rerun where b and p became empty: their files (both frameworks) go, dataset_info lists a only.
    counts = exports.write_exports(str(tmp_path), {"a": records, "b": [], "p": []}, frozenset({"p"}))
    assert counts == {"a": 1, "b": 0, "p": 0}
    for framework in exports.FRAMEWORKS:
        assert sorted(p.name for p in (tmp_path / framework).glob("*.jsonl")) == ["a.jsonl"]
    assert set(json.loads((tmp_path / "llama_factory" / "dataset_info.json").read_text())) == {"a"}


def test_mappings_pick_the_longest_prefix_and_must_exist(tmp_path):
    (tmp_path / "raw" / "x").mkdir(parents=True)
    (tmp_path / "raw" / "x" / "a.mp4").write_bytes(b"v")
    mappings = dict([parse_mapping(f"s3://b/raw/={tmp_path}/raw/"), parse_mapping("s3://b/=/elsewhere/")])
    assert map_prefix("s3://b/raw/x/a.mp4", mappings) == f"{tmp_path}/raw/x/a.mp4"
    assert map_prefix("s3://c/a.mp4", mappings) is None
    media = localise(["s3://b/raw/x/a.mp4", "s3://b/raw/x/a.mp4"], mappings)
    assert media("s3://b/raw/x/a.mp4") == f"{tmp_path}/raw/x/a.mp4" and media.mapped == 1
    with pytest.raises(ValueError, match="no such file"):
        localise(["s3://b/raw/x/missing.mp4"], mappings)
    with pytest.raises(ValueError, match="no mapping or download folder"):
        localise(["s3://c/a.mp4"], mappings)
    with pytest.raises(ValueError, match="PREFIX=PATH"):
        parse_mapping("s3://b/raw/")


def test_s3_media_download_resumes(moto_s3, tmp_path):
    fs = storage.filesystem("s3://saber-test")
    uris = [f"s3://saber-test/raw/clip{i}.mp4" for i in range(3)]
    for i, uri in enumerate(uris):
        fs.pipe_file(storage.strip_protocol(uri), b"x" * (10 + i))
    media = localise(uris, download_dir=str(tmp_path / "media"))
    assert (media.downloaded, media.skipped) == (3, 0)
    assert media(uris[1]) == str(tmp_path / "media" / "saber-test" / "raw" / "clip1.mp4")
    assert Path(media(uris[1])).read_bytes() == b"x" * 11
    # A rerun copies only what is missing or of another size (an interrupted copy never has the final name).
    (tmp_path / "media" / "saber-test" / "raw" / "clip0.mp4").unlink()
    (tmp_path / "media" / "saber-test" / "raw" / "clip2.mp4").write_bytes(b"x")
    again = localise(uris, download_dir=str(tmp_path / "media"))
    assert (again.downloaded, again.skipped) == (2, 1)
    assert all(Path(again(u)).read_bytes() == b"x" * (10 + i) for i, u in enumerate(uris))
    assert not list((tmp_path / "media").rglob("*.part"))


def test_export_job_from_s3_tables_and_media(moto_s3, tmp_path):
    """jobs/export.py as users run it: build tables and media on S3, every exported path a local file."""
    fs = storage.filesystem("s3://saber-test")
    local = media_files(tmp_path / "src")
    uris = {clip: f"s3://saber-test/raw/{clip}.mp4" for clip in local}
    for clip, path in local.items():
        fs.put_file(path, storage.strip_protocol(uris[clip]))
    write_tables(tmp_path / "tables", uris, n_train=3, n_test=0)  # no SABER-Test record yet
    fs.put(str(tmp_path / "tables") + "/", "saber-test/out/", recursive=True)
    args = [sys.executable, str(REPO / "jobs" / "export.py"), "--engine-output", "s3://saber-test/out/engine",
            "--preferences", "s3://saber-test/out/prefs", "--output", str(tmp_path / "exp")]
    failed = subprocess.run(args, capture_output=True, text=True, env=job_env(**moto_s3), timeout=300)
    assert failed.returncode == 2 and "no mapping or download folder" in failed.stderr
    done = subprocess.run([*args, "--media-dir", str(tmp_path / "media")], capture_output=True, text=True,
                          env=job_env(**moto_s3), timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["rows"] == {"saber_train": 3, "saber_test": 0, "saber_preferences": 6}
    assert summary["media"]["downloaded"] == 3  # the training clips; the fourth clip is in no table
    info = json.loads((tmp_path / "exp" / "llama_factory" / "dataset_info.json").read_text())
    assert set(info) == {"saber_train", "saber_preferences"} and info["saber_preferences"]["ranking"] is True
    for framework in exports.FRAMEWORKS:
        assert sorted(p.name for p in (tmp_path / "exp" / framework).glob("*.jsonl")) == [
            "saber_preferences.jsonl", "saber_train.jsonl"]
        for row in _lines(tmp_path / "exp" / framework / "saber_preferences.jsonl"):
            assert row["videos"] == row["audios"] and Path(row["videos"][0]).read_bytes().startswith(b"\0")
    swift = _lines(tmp_path / "exp" / "ms_swift" / "saber_preferences.jsonl")
    assert {r["rejected_response"] for r in swift} == {f"bad answer {i} (c{c})" for i in (0, 1) for c in range(3)}
