"""Corpus adapters on synthetic trees that mirror each corpus's documented layout (names, folders, label files).

The adapters never open a clip, so media are empty placeholder files; label files carry real rows. Every expected
row, skip count and malformed entry below is worked out by hand from the tree the test builds.
"""

import json

import pyarrow.parquet as pq
import pytest

from engine.core.config_base import ConfigError
from engine.dataset.corpora import (
    EMOTION_TABLE,
    UNIFIED_EMOTIONS,
    CorpusError,
    builtin_specs,
    load_spec,
    prepare_corpus,
    prepare_manifest,
    unified_emotion,
)
from engine.dataset.corpora.adapter import glob_regex, render, typed
from engine.dataset.corpora.emotions import UnknownEmotionWord


def _tree(root, files):
    """files: relative path -> text (None: an empty placeholder clip)."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text or "", encoding="utf-8")
    return root


def _prepare(name, root, **kwargs):
    result = prepare_corpus(load_spec(name, kwargs.pop("overrides", None)), str(root), **kwargs)
    by_name = {r["uri"].rsplit("/", 1)[1]: r for r in result.rows}
    return result, by_name


def _malformed(result):
    return sorted((e["reason"], e["where"]) for e in result.report["malformed_entries"])


def test_ravdess_codes_modalities_and_malformed_names(tmp_path):
    root = _tree(tmp_path / "RAVDESS", {
        "Video_Speech_Actor_01/Actor_01/01-01-05-02-01-01-01.mp4": None,  # full-AV, angry, strong, kids, rep 1
        "Video_Speech_Actor_01/Actor_01/02-01-05-02-01-01-01.mp4": None,  # the same take, video-only
        "Video_Song_Actor_02/Actor_02/01-02-02-01-02-02-02.mp4": None,  # song, calm, normal, dogs, rep 2
        "Audio_Speech_Actors_01-24/Actor_01/03-01-05-02-01-01-01.wav": None,
        "Video_Speech_Actor_02/Actor_02/01-01-09-01-01-01-02.mp4": None,  # emotion 09 does not exist
        "Video_Speech_Actor_02/Actor_02/01-01-03-01-01-01.mp4": None,  # six fields
        "Video_Speech_Actor_02/Actor_02/notes.txt": "not the corpus's business",
    })
    result, rows = _prepare("ravdess", root)
    assert sorted(rows) == ["01-01-05-02-01-01-01.mp4", "01-02-02-01-02-02-02.mp4"]
    angry = rows["01-01-05-02-01-01-01.mp4"]
    assert angry["uri"] == str(root / "Video_Speech_Actor_01/Actor_01/01-01-05-02-01-01-01.mp4")
    assert (angry["dataset"], angry["lang"], angry["label"], angry["emotion"]) == ("RAVDESS", "en", "angry", "anger")
    assert (angry["speaker"], angry["source_video"]) == ("ravdess/actor01", "ravdess/01-05-02-01-01-01")
    assert json.loads(angry["corpus_extras"]) == {"intensity": "strong", "vocal_channel": "speech",
                                                  "statement": "Kids are talking by the door", "repetition": 1}
    calm = rows["01-02-02-01-02-02-02.mp4"]
    assert (calm["label"], calm["emotion"], calm["speaker"]) == ("calm", "neutral", "ravdess/actor02")
    report = result.report
    assert report["skipped"] == {"audio_only": 1, "video_only": 1}
    assert report["malformed"] == {"unknown_code": 1, "unparsed_name": 1}
    assert _malformed(result) == [
        ("unknown_code", "Video_Speech_Actor_02/Actor_02/01-01-09-01-01-01-02.mp4"),
        ("unparsed_name", "Video_Speech_Actor_02/Actor_02/01-01-03-01-01-01.mp4")]
    assert next(e["detail"] for e in report["malformed_entries"] if e["reason"] == "unknown_code") == "emotion='09'"
    assert (report["rows"], report["speakers"], report["recordings"]) == (2, 2, 2)
    assert report["files"] == {"seen": 7, "clip_files": 5, "label_files": 0}


def test_crema_d_names_levels_and_audio_folders(tmp_path):
    root = _tree(tmp_path / "CREMA-D", {
        "VideoFlash/1001_DFA_ANG_XX.flv": None,
        "VideoFlash/1002_IEO_HAP_MD.flv": None,
        "VideoFlash/1003_ABC_ANG_XX.flv": None,  # no sentence ABC
        "VideoFlash/1004_DFA_JOY_HI.flv": None,  # no emotion JOY
        "AudioWAV/1001_DFA_ANG_XX.wav": None,
        "AudioMP3/1001_DFA_ANG_XX.mp3": None,
    })
    result, rows = _prepare("crema_d", root)
    assert sorted(rows) == ["1001_DFA_ANG_XX.flv", "1002_IEO_HAP_MD.flv"]
    anger, happy = rows["1001_DFA_ANG_XX.flv"], rows["1002_IEO_HAP_MD.flv"]
    assert (anger["label"], anger["emotion"], anger["speaker"], anger["source_video"]) == (
        "anger", "anger", "crema_d/1001", "crema_d/1001_DFA_ANG_XX")
    assert json.loads(anger["corpus_extras"]) == {"intensity": "unspecified", "sentence": "Don't forget a jacket"}
    assert (happy["label"], happy["emotion"], json.loads(happy["corpus_extras"])["intensity"]) == (
        "happy", "happiness", "medium")
    assert result.report["skipped"] == {"audio_only": 2}
    assert _malformed(result) == [("unknown_code", "VideoFlash/1003_ABC_ANG_XX.flv"),
                                  ("unknown_code", "VideoFlash/1004_DFA_JOY_HI.flv")]


def test_mead_views_share_a_recording_and_audio_is_paired(tmp_path):
    root = _tree(tmp_path / "MEAD", {
        "M003/video/front/angry/level_3/001.mp4": None,
        "M003/video/left_30/angry/level_3/001.mp4": None,  # the same take from another camera
        "M003/audio/angry/level_3/001.m4a": None,
        "W009/video/front/contempt/level_1/002.mp4": None,  # its audio is missing
        "W009/audio/happy/level_2/005.m4a": None,  # audio of no video
        "W009/video/front/excited/level_1/003.mp4": None,  # not a MEAD emotion
    })
    result, _ = _prepare("mead", root)
    rows = {r["uri"][len(str(root)) + 1:]: r for r in result.rows}
    assert sorted(rows) == ["M003/video/front/angry/level_3/001.mp4", "M003/video/left_30/angry/level_3/001.mp4",
                            "W009/video/front/contempt/level_1/002.mp4"]
    front, side = rows["M003/video/front/angry/level_3/001.mp4"], rows["M003/video/left_30/angry/level_3/001.mp4"]
    assert front["source_video"] == side["source_video"] == "mead/M003/angry/level_3/001"
    assert front["speaker"] == "mead/M003" and (front["label"], front["emotion"]) == ("angry", "anger")
    assert json.loads(side["corpus_extras"]) == {"intensity": "level_3", "view": "left_30",
                                                 "audio_uri": str(root / "M003/audio/angry/level_3/001.m4a")}
    contempt = rows["W009/video/front/contempt/level_1/002.mp4"]
    assert contempt["emotion"] == "contempt" and "audio_uri" not in json.loads(contempt["corpus_extras"])
    assert result.report["paired"] == {"audio_uri": 2}
    assert result.report["skipped"] == {"audio_only": 1}
    assert _malformed(result) == [("unknown_code", "W009/video/front/excited/level_1/003.mp4")]
    # Front camera only, by an override.
    front_only, _ = _prepare("mead", root, overrides=[
        "skip_when=[{var: view, values: [front], invert: true, reason: side_view}]"])
    assert front_only.report["rows"] == 2 and front_only.report["skipped"] == {"audio_only": 1, "side_view": 1}


MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"


def test_meld_csv_join_keys_carry_the_split(tmp_path):
    root = _tree(tmp_path / "MELD.Raw", {
        "train/train_splits/dia0_utt0.mp4": None,
        "train/train_splits/dia0_utt1.mp4": None,
        "train/train_splits/dia1_utt0.mp4": None,  # its row's emotion is not a MELD emotion
        "train/train_splits/._dia0_utt0.mp4": None,  # a macOS resource fork in the tarball
        "dev/dev_splits_complete/dia0_utt0.mp4": None,  # same ids as train, another split
        "test/output_repeated_splits_test/dia5_utt0.mp4": None,  # no label row
        "train_sent_emo.csv": MELD_HEADER
        + '1,"Oh my God, he\'s lost it.",Phoebe,sadness,negative,0,0,4,7,"00:20:57,256","00:21:00,049"\n'
        + '2,What?,Monica,surprise,negative,0,1,4,7,"00:21:01,927","00:21:03,261"\n'
        + '3,Hi!,Joey,joyful,positive,1,0,4,7,"00:21:05,000","00:21:06,000"\n'
        + '4,Bye.,Ross,neutral,neutral,2,0,4,8,"00:01:00,000","00:01:01,000"\n',  # no clip
        "dev_sent_emo.csv": MELD_HEADER + '1,Okay.,Rachel,joy,positive,0,0,1,1,"00:00:01,000","00:00:02,000"\n',
        "test_sent_emo.csv": MELD_HEADER,
    })
    result, _ = _prepare("meld", root)
    rows = {r["uri"][len(str(root)) + 1:]: r for r in result.rows}
    assert sorted(rows) == ["dev/dev_splits_complete/dia0_utt0.mp4", "train/train_splits/dia0_utt0.mp4",
                            "train/train_splits/dia0_utt1.mp4"]
    phoebe = rows["train/train_splits/dia0_utt0.mp4"]
    assert (phoebe["label"], phoebe["emotion"], phoebe["speaker"], phoebe["source_video"], phoebe["corpus_split"]) == (
        "sadness", "sadness", "meld/Phoebe", "meld/train/dia0", "train")
    assert json.loads(phoebe["corpus_extras"]) == {
        "sentiment": "negative", "utterance": "Oh my God, he's lost it.", "season": 4, "episode": 7,
        "start_time": "00:20:57,256", "end_time": "00:21:00,049"}
    assert rows["train/train_splits/dia0_utt1.mp4"]["source_video"] == "meld/train/dia0"  # one dialogue
    rachel = rows["dev/dev_splits_complete/dia0_utt0.mp4"]
    assert (rachel["label"], rachel["emotion"], rachel["source_video"], rachel["corpus_split"]) == (
        "joy", "happiness", "meld/dev/dia0", "dev")
    # The row with "joyful" is listed once (its clip is not listed again as media_without_label).
    assert _malformed(result) == [
        ("label_without_media", "train_sent_emo.csv:5"), ("media_without_label",
                                                           "test/output_repeated_splits_test/dia5_utt0.mp4"),
        ("unknown_code", "train_sent_emo.csv:4"), ("unparsed_name", "train/train_splits/._dia0_utt0.mp4")]
    assert result.report["speakers"] == 3 and result.report["recordings"] == 2
    assert result.report["corpus_splits"] == {"dev": 1, "train": 2}


def test_ch_sims_v2_meta_csv_sentiment_without_emotion(tmp_path):
    root = _tree(tmp_path / "ch-simsv2s", {
        "Raw/aqgy3_0001/00000.mp4": None,
        "Raw/aqgy3_0001/00001.mp4": None,
        "Raw/video_0002/0001.mp4": None,
        "meta.csv": "video_id,clip_id,text,label,label_T,label_A,label_V,annotation,mode\n"
                    "aqgy3_0001,00000,你好,-0.6,-0.8,-0.4,-0.6,Negative,train\n"
                    "aqgy3_0001,00001,好的,0.0,0.2,0.0,-0.2,Neutral,valid\n"
                    "video_0002,0001,谢谢,0.8,1.0,0.6,0.8,Positive,test\n"
                    "video_0002,0002,再见,0.2,0.4,0.0,0.2,Positive,train\n",  # no clip
    })
    result, _ = _prepare("ch_sims_v2", root)
    rows = {r["uri"][len(str(root)) + 1:]: r for r in result.rows}
    first = rows["Raw/aqgy3_0001/00000.mp4"]
    assert (first["lang"], first["label"], first["emotion"], first["speaker"], first["source_video"]) == (
        "zh", "negative", None, None, "ch_sims_v2/aqgy3_0001")
    assert json.loads(first["corpus_extras"]) == {"sentiment": -0.6, "sentiment_text": -0.8, "sentiment_audio": -0.4,
                                                  "sentiment_visual": -0.6, "text": "你好"}
    assert [rows[k]["corpus_split"] for k in sorted(rows)] == ["train", "valid", "test"]
    assert rows["Raw/aqgy3_0001/00001.mp4"]["source_video"] == first["source_video"]  # one source video
    assert _malformed(result) == [("label_without_media", "meta.csv:5")]
    assert result.report["emotions"] == {"(none)": 3} and result.report["unmapped_labels"] == {}


def test_mer2025_labeled_rows_and_the_unlabeled_pool(tmp_path):
    root = _tree(tmp_path / "mer2025-dataset", {
        "video/sample_00000001.mp4": None,
        "video/sample_00000002.mp4": None,
        "video/sample_00000003.mp4": None,  # unlabeled pool
        "audio/sample_00000001.wav": None,
        "track1_train_disdim.csv": "name,discrete,valence\nsample_00000001,worried,-1.2\n"
                                   "sample_00000002,happy,2.5\nsample_00000009,sad,-3\n",
    })
    result, rows = _prepare("mer2025", root)
    worried = rows["sample_00000001.mp4"]
    assert (worried["label"], worried["emotion"], worried["speaker"], worried["source_video"]) == (
        "worried", "fear", None, "mer2025/sample_00000001")
    assert json.loads(worried["corpus_extras"]) == {"valence": -1.2} and worried["corpus_split"] == "train"
    assert rows["sample_00000002.mp4"]["emotion"] == "happiness"
    assert result.report["skipped"] == {"audio_only": 1, "unlabeled": 1}
    assert _malformed(result) == [("label_without_media", "track1_train_disdim.csv:4")]


EVALUATION = """UTD-IMPROV-S01A-F01-S-FM01.avi; A; A:4.2; V:1.8; D:3.6 ; N:3.0;
WORKER_12; Angry; Frustrated; A:4.0; V:2.0; D:4.0; N:3.0;
UTD-IMPROV-S01A-M01-S-MF02.avi; X; A:3.0; V:3.0; D:3.0 ; N:NaN;
UTD-IMPROV-S09S-F03-R-FF01.avi; S; A:2.0; V:2.0; D:2.0 ; N:2.0;
"""


def test_msp_improv_evaluation_lines_and_name_fields(tmp_path):
    root = _tree(tmp_path / "MSP-IMPROV", {
        "session1/S01A/S/MSP-IMPROV-S01A-F01-S-FM01.avi": None,
        "session1/S01A/S/MSP-IMPROV-S01A-F01-S-FM01.wav": None,
        "session1/S01A/S/MSP-IMPROV-S01A-M01-S-MF02.avi": None,
        "session2/S05H/P/MSP-IMPROV-S05H-F02-P-FM03.avi": None,  # no evaluation line
        "Evaluation.txt": EVALUATION,
    })
    result, rows = _prepare("msp_improv", root)
    actress, actor = rows["MSP-IMPROV-S01A-F01-S-FM01.avi"], rows["MSP-IMPROV-S01A-M01-S-MF02.avi"]
    assert (actress["label"], actress["emotion"], actress["speaker"], actress["source_video"]) == (
        "angry", "anger", "msp_improv/F01", "msp_improv/dyad01/S01A/S")
    assert json.loads(actress["corpus_extras"]) == {
        "arousal": 4.2, "valence": 1.8, "dominance": 3.6, "naturalness": 3.0, "acted_emotion": "angry",
        "target_sentence": "01", "recording_type": "S"}
    # X: raters had no majority; a documented label without a unified counterpart (not an unmapped word).
    assert (actor["label"], actor["emotion"], actor["speaker"]) == ("no_agreement", None, "msp_improv/M01")
    assert json.loads(actor["corpus_extras"])["naturalness"] is None and actor["source_video"] == actress[
        "source_video"]
    assert result.report["label_lines_ignored"] == 1 and result.report["unmapped_labels"] == {}
    assert result.report["skipped"] == {"audio_only": 1}
    assert _malformed(result) == [("label_without_media", "Evaluation.txt:4"),
                                  ("media_without_label", "session2/S05H/P/MSP-IMPROV-S05H-F02-P-FM03.avi")]


CONV = "t_ffa55df6-114d-4b36-87a1-7af6b8b63d9b"


def test_multidialog_jsonl_metadata_and_unmapped_emotion_words(tmp_path):
    lines = [json.dumps({"conv_id": CONV, "utterance_id": 0, "from": "gpt", "value": "Hello there",
                         "emotion": "Happy", "speaker_id": 3}),
             json.dumps({"conv_id": CONV, "utterance_id": 1, "from": "human", "value": "Hi",
                         "emotion": "Curious", "speaker_id": 4}),
             "{not json"]
    root = _tree(tmp_path / "MultiDialog", {
        f"video/{CONV}_0.mp4": None, f"video/{CONV}_1.mp4": None,
        "metadata/valid_freq/valid_freq_metadata_0000.jsonl": "\n".join(lines) + "\n",
    })
    result, rows = _prepare("multidialog", root)
    happy, curious = rows[f"{CONV}_0.mp4"], rows[f"{CONV}_1.mp4"]
    assert (happy["label"], happy["emotion"], happy["speaker"], happy["source_video"], happy["corpus_split"]) == (
        "Happy", "happiness", "multidialog/3", f"multidialog/{CONV}", "valid_freq")
    assert json.loads(happy["corpus_extras"]) == {"role": "gpt", "transcript": "Hello there"}
    assert (curious["label"], curious["emotion"]) == ("Curious", None)
    assert result.report["unmapped_labels"] == {"Curious": 1}
    assert _malformed(result) == [("bad_label_row", "metadata/valid_freq/valid_freq_metadata_0000.jsonl:3")]


def test_meiju2025_tracks_languages_and_label_lists(tmp_path):
    root = _tree(tmp_path / "MEIJU", {
        "Track1/English/Annotation/Training/sample_0001.mp4": None,
        "Track1/English/Annotation/Validation/sample_0002.mp4": None,
        "Track1/Mandarin/Annotation/Training/sample_1001.mp4": None,
        "Track1/Mandarin/NoAnnotation/sample_9.mp4": None,
        "Track1/English/train_files.txt": "sample_0001.mp4 happy questioning\nsample_0002.mp4 anger consoling\n",
        "Track1/Mandarin/train_files.txt": "sample_1001.mp4 fear wishing\nsample_1002.mp4 joy agreeing\n",
    })
    result, rows = _prepare("meiju2025", root)
    assert [(rows[n]["lang"], rows[n]["label"], rows[n]["emotion"], rows[n]["corpus_split"]) for n in sorted(rows)] == [
        ("en", "happy", "happiness", "train"), ("en", "anger", "anger", "valid"), ("zh", "fear", "fear", "train")]
    assert json.loads(rows["sample_1001.mp4"]["corpus_extras"]) == {"intent": "wishing", "track": "Track1"}
    assert rows["sample_1001.mp4"]["source_video"] == "meiju2025/Track1/Mandarin/sample_1001"
    assert result.report["skipped"] == {"unlabeled": 1}
    # sample_1002's emotion "joy" is not a MEIJU emotion: listed once, and not again as a row without media.
    assert _malformed(result) == [("unknown_code", "Track1/Mandarin/train_files.txt:2")]


def test_memor_one_clip_several_targets(tmp_path):
    anno = {"primary": [
        {"clip": "S01E01_001", "character": 0, "moment": 12.5, "emotion": "joy"},
        {"clip": "S01E01_001", "character": 4, "moment": 14.0, "emotion": "anger"},
        {"clip": "S01E01_002", "character": 1, "moment": 3.0, "emotion": "trust"},
        {"clip": "S01E01_099", "character": 2, "moment": 1.0, "emotion": "fear"},  # no clip
    ], "fine_grained": []}
    root = _tree(tmp_path / "MEmoR", {
        "data/clips/S01E01_001.mp4": None, "data/clips/S01E01_002.mp4": None, "data/clips/S02E03_010.mp4": None,
        "data/anno.json": json.dumps(anno),
    })
    result, rows = _prepare("memor", root)
    both = rows["S01E01_001.mp4"]
    assert (both["label"], both["emotion"], both["speaker"], both["source_video"]) == (
        None, None, None, "memor/S01E01_001")  # two targets that disagree: no single label
    assert json.loads(both["corpus_extras"]) == {"targets": [
        {"label": "joy", "emotion": "happiness", "speaker": "sheldon", "moment": 12.5},
        {"label": "anger", "emotion": "anger", "speaker": "penny", "moment": 14.0}]}
    one = rows["S01E01_002.mp4"]
    assert (one["label"], one["emotion"], one["speaker"]) == ("trust", None, "memor/leonard")
    assert json.loads(one["corpus_extras"]) == {"moment": 3.0}
    assert _malformed(result) == [("label_without_media", "data/anno.json:primary[3]"),
                                  ("media_without_label", "data/clips/S02E03_010.mp4")]


def test_every_builtin_spec_loads_and_its_emotion_words_are_in_the_table():
    assert builtin_specs() == ["ch_sims_v2", "crema_d", "mead", "meiju2025", "meld", "memor", "mer2025",
                               "msp_improv", "multidialog", "ravdess"]
    for name in builtin_specs():
        spec = load_spec(name)
        assert spec.name == name and spec.sources
        if spec.emotion is None or not spec.label:
            continue
        label_var = spec.label.strip("{}")
        for word in spec.codes.get(label_var, {}).values():
            unified_emotion(word, spec.unified)  # raises for a word the one table does not list


def test_the_unified_table():
    assert unified_emotion(" Joy ") == "happiness" and unified_emotion("worried") == "fear"
    assert unified_emotion("calm") == "neutral" and unified_emotion("trust") is None
    assert unified_emotion("mad", {"mad": "anger"}) == "anger"
    with pytest.raises(UnknownEmotionWord):
        unified_emotion("curious")
    assert set(EMOTION_TABLE.values()) - {None} == set(UNIFIED_EMOTIONS)


def test_templates_globs_and_typed_extras():
    assert render("{a}/{b:0>4}", {"a": "x", "b": "7"}) == "x/0007"
    assert render("{a}/{b}", {"a": "x", "b": ""}) is None and render("{a}", {}) is None and render(None, {}) is None
    with pytest.raises(ConfigError, match="template"):
        render("{a:d}", {"a": "x"})
    assert glob_regex("**/*.mp4").match("a.mp4") and glob_regex("**/*.mp4").match("x/y/a.mp4")
    assert not glob_regex("*.mp4").match("x/a.mp4") and not glob_regex("**/*.mp4").match("a.mp4.json")
    assert glob_regex("**/AudioWAV/**").match("CREMA-D/AudioWAV/a.wav")
    assert [typed(t) for t in ("3", "-0.6", "01", "NaN", "1e5", "text")] == [3, -0.6, "01", None, "1e5", "text"]


def test_a_user_spec_with_a_label_file_join_and_bad_spec_errors(tmp_path):
    """A corpus added without code: a YAML spec (glob, path regex, CSV label join, label codes, extras)."""
    spec = tmp_path / "my_corpus.yaml"
    spec.write_text("""
name: my_corpus
dataset: MyCorpus
lang: de
layout: unconfirmed
sources: ["our own recordings"]
media: {glob: ["clips/*.mkv"], pattern: 'clips/(?P<spk>[a-z]+)_(?P<take>\\d+)\\.mkv$', key: "{spk}-{take}"}
labels: {files: [labels.tsv], format: csv, delimiter: "\\t", key: "{who}-{take}"}
codes: {mood: {w: mad, f: glad}}
unified: {mad: anger, glad: happiness}
label: "{mood}"
speaker: "{spk}"
source_video: "{spk}/{session}"
extras: {score: "{score}"}
""")
    root = _tree(tmp_path / "mine", {"clips/anna_1.mkv": None, "clips/ben_2.mkv": None,
                                     "labels.tsv": "who\ttake\tmood\tsession\tscore\nanna\t1\tw\ts1\t0.5\n"
                                                   "ben\t2\tf\ts2\t\n"})
    result = prepare_corpus(load_spec(str(spec)), str(root))
    assert [(r["label"], r["emotion"], r["speaker"], r["source_video"], r["lang"], r["corpus_extras"])
            for r in result.rows] == [("mad", "anger", "my_corpus/anna", "my_corpus/anna/s1", "de", '{"score": 0.5}'),
                                      ("glad", "happiness", "my_corpus/ben", "my_corpus/ben/s2", "de", None)]
    with pytest.raises(ConfigError) as err:
        load_spec(str(spec), ["media.pattern=(unclosed", "labels.format=xml", "layout=maybe"])
    assert all(field in str(err.value) for field in ("media.pattern", "labels.format", "layout"))
    with pytest.raises(ConfigError, match="unknown corpus 'iemocap'"):
        load_spec("iemocap")
    with pytest.raises(CorpusError, match="does not exist"):
        prepare_corpus(load_spec(str(spec)), str(tmp_path / "missing"))


def test_manifest_and_report_for_several_corpora(tmp_path):
    ravdess = _tree(tmp_path / "RAVDESS", {"Actor_01/01-01-05-02-01-01-01.mp4": None,
                                           "Actor_01/01-01-09-01-01-01-01.mp4": None})
    crema = _tree(tmp_path / "CREMA-D", {"VideoFlash/1001_DFA_ANG_XX.flv": None, "AudioWAV/1001_DFA_ANG_XX.wav": None})
    out = tmp_path / "out" / "manifest.parquet"
    report = prepare_manifest([(load_spec("ravdess"), str(ravdess)), (load_spec("crema_d"), str(crema))], str(out))
    table = pq.read_table(out)
    assert table.column_names == ["uri", "dataset", "lang", "label", "emotion", "speaker", "source_video",
                                  "corpus_split", "corpus_extras", "annotation_uri"]
    assert table.column("dataset").to_pylist() == ["RAVDESS", "CREMA-D"]
    written = json.loads((tmp_path / "out" / "manifest.report.json").read_text())
    assert written == report
    assert (report["rows"], report["malformed"], report["skipped"]) == (2, 1, {"audio_only": 1})
    assert set(report["corpora"]) == {"ravdess", "crema_d"} and report["corpora"]["ravdess"]["layout"] == "confirmed"
    jsonl = tmp_path / "out" / "m.jsonl"
    prepare_manifest([(load_spec("crema_d"), str(crema))], str(jsonl))
    assert json.loads(jsonl.read_text().splitlines()[0])["speaker"] == "crema_d/1001"
    with pytest.raises(CorpusError, match="must end in"):
        prepare_manifest([(load_spec("crema_d"), str(crema))], str(tmp_path / "m.txt"))
