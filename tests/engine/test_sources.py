import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.core.schema import clip_id_for
from engine.dataset.sources import SourceError, list_source


def _touch(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_folder_lists_videos_with_sidecars(tmp_path):
    _touch(tmp_path / "a.mp4")
    _touch(tmp_path / "a.json", "{}")
    _touch(tmp_path / "sub" / "b.MKV")
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / "orphan.json")
    rows = list_source(str(tmp_path), dataset="d", lang="en").to_pylist()
    assert [r["source_uri"] for r in rows] == [str(tmp_path / "a.mp4"), str(tmp_path / "sub" / "b.MKV")]
    assert rows[0]["annotation_uri"] == str(tmp_path / "a.json")
    assert rows[1]["annotation_uri"] is None
    assert rows[0]["clip_id"] == clip_id_for(str(tmp_path / "a.mp4"))
    assert {r["dataset"] for r in rows} == {"d"} and {r["lang"] for r in rows} == {"en"}


def test_clip_id_is_stable_and_distinct():
    assert clip_id_for("s3://b/x.mp4") == clip_id_for("s3://b/x.mp4")
    assert clip_id_for("s3://b/x.mp4") != clip_id_for("s3://b/y.mp4")


def test_jsonl_manifest_relative_uris_inline_annotation_and_dedupe(tmp_path):
    records = [
        {"uri": "clips/a.mp4", "annotation": {"video_desc": "v"}, "dataset": "MELD", "lang": "en", "label": "joy"},
        {"uri": "clips/a.mp4"},
        {"uri": "s3://bucket/b.mp4"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    rows = list_source(str(tmp_path / "m.jsonl"), dataset="fallback").to_pylist()
    assert len(rows) == 2
    local = next(r for r in rows if r["source_uri"].endswith("a.mp4"))
    assert local["source_uri"] == str(tmp_path / "clips" / "a.mp4")
    assert json.loads(local["annotation_raw"]) == {"video_desc": "v"}
    assert (local["dataset"], local["lang"], local["label"]) == ("MELD", "en", "joy")
    remote = next(r for r in rows if r["source_uri"].startswith("s3://"))
    assert remote["dataset"] == "fallback" and remote["annotation_raw"] is None


def test_csv_and_parquet_manifests(tmp_path):
    (tmp_path / "m.csv").write_text("uri,label\n/data/a.mp4,anger\n/data/b.mp4,\n")
    rows = list_source(str(tmp_path / "m.csv")).to_pylist()
    assert [(r["source_uri"], r["label"]) for r in rows] == [("/data/a.mp4", "anger"), ("/data/b.mp4", None)]
    pq.write_table(pa.table({"uri": ["/data/c.mp4"], "lang": ["zh"]}), tmp_path / "m.parquet")
    assert list_source(str(tmp_path / "m.parquet")).to_pylist()[0]["lang"] == "zh"


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        list_source(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no video files"):
        list_source(str(tmp_path / "empty"))
    (tmp_path / "m.jsonl").write_text('{"uri": "a.mp4"}\n{"path": "b.mp4"}\n')
    with pytest.raises(SourceError, match=r"without a 'uri': \[2\]"):
        list_source(str(tmp_path / "m.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"uri": "a.mp4"}\n{oops\n')
    with pytest.raises(SourceError, match="line 2 is not JSON"):
        list_source(str(tmp_path / "bad.jsonl"))


def test_source_video_from_manifest_column_pattern_or_the_clip_itself(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        '{"uri": "/meld/dia12_utt0.mp4"}\n{"uri": "/meld/dia12_utt3.mp4"}\n{"uri": "/meld/dia7_utt1.mp4"}\n'
        '{"uri": "/meld/other.mp4"}\n{"uri": "/meld/dia9_utt2.mp4", "source_video": "given"}\n')
    rows = list_source(str(tmp_path / "m.jsonl"), source_video_pattern=r"dia(?P<video>\d+)_utt").to_pylist()
    by_name = {r["source_uri"].rsplit("/", 1)[1]: r["source_video"] for r in rows}
    assert by_name == {"dia12_utt0.mp4": "12", "dia12_utt3.mp4": "12", "dia7_utt1.mp4": "7",
                       "other.mp4": "/meld/other.mp4", "dia9_utt2.mp4": "given"}
    unnamed = list_source(str(tmp_path / "m.jsonl"), source_video_pattern=r"(dia\d+)_").to_pylist()
    assert unnamed[0]["source_video"] == "dia12"
    plain = list_source(str(tmp_path / "m.jsonl")).to_pylist()
    assert [r["source_video"] for r in plain] == [r["source_uri"] if "dia9" not in r["source_uri"] else "given"
                                                 for r in plain]


def test_corpus_manifest_columns_travel_into_the_clip_table(tmp_path):
    """The corpus adapters' columns (speaker, emotion, corpus_split, corpus_extras) and a sidecar annotation named
    by the manifest reach the clip rows the pipeline builds."""
    from engine.core.schema import CLIP_SCHEMA
    from engine.dataset.corpora import MANIFEST_SCHEMA
    from engine.dataset.pipeline import source_to_rows

    pq.write_table(pa.Table.from_pylist([
        {"uri": "/meld/dia0_utt0.mp4", "dataset": "MELD", "lang": "en", "label": "joy", "emotion": "happiness",
         "speaker": "meld/Rachel", "source_video": "meld/train/dia0", "corpus_split": "train",
         "corpus_extras": '{"sentiment": "positive"}', "annotation_uri": "ann/dia0_utt0.json"},
        {"uri": "/ravdess/01-01-01-01-01-01-01.mp4", "dataset": "RAVDESS"},
    ], schema=MANIFEST_SCHEMA), tmp_path / "m.parquet")
    rows = {r["source_uri"]: r for r in source_to_rows(list_source(str(tmp_path / "m.parquet")))}
    meld = rows["/meld/dia0_utt0.mp4"]
    assert (meld["speaker"], meld["emotion"], meld["label"], meld["corpus_split"]) == (
        "meld/Rachel", "happiness", "joy", "train")
    assert json.loads(meld["corpus_extras"]) == {"sentiment": "positive"}
    assert meld["annotation_uri"] == str(tmp_path / "ann" / "dia0_utt0.json")  # relative to the manifest
    plain = rows["/ravdess/01-01-01-01-01-01-01.mp4"]
    assert plain["speaker"] is plain["emotion"] is plain["corpus_extras"] is plain["annotation_uri"] is None
    assert {"speaker", "emotion", "corpus_split", "corpus_extras"} <= set(CLIP_SCHEMA.names)


def test_jsonl_manifest_extras_given_as_an_object_become_json_text(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"uri": "/x/a.mp4", "speaker": "s1", "corpus_extras": {
        "valence": -1.5, "intensity": "high"}}) + "\n")
    row = list_source(str(tmp_path / "m.jsonl")).to_pylist()[0]
    assert row["speaker"] == "s1" and json.loads(row["corpus_extras"]) == {"valence": -1.5, "intensity": "high"}
    folder = tmp_path / "clips"
    _touch(folder / "b.mp4")
    assert list_source(str(folder)).to_pylist()[0]["speaker"] is None
