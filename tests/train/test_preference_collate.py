"""Preference encoding and collation: two clips with different video grids and audio lengths, so that any slip in
the order media is repeated for the chosen and rejected rows shows up as a wrong grid, a wrong feature row or a
model error; and log-probs of a padded batch against the same sequences scored one at a time."""

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoProcessor, Qwen2_5OmniThinkerForConditionalGeneration

from train.core.config import DataConfig
from train.data.collate import collate_sed
from train.data.preference_collate import AVEM_LAYOUT, DPO_LAYOUT, collate_preference, collate_text, split_rows
from train.data.preference_data import INPUT_COLUMNS, OUTPUT_COLUMNS, PreferenceEncoder, PreferencePreprocessor
from train.data.reference import batch_logps
from train.data.sed_data import IGNORE_INDEX
from train.preferences.schema import PREFERENCE_SCHEMA

DATA = DataConfig(max_pixels=56 * 56, max_frames=4)
MEDIA = ("pixel_values_videos", "video_grid_thw", "video_second_per_grid", "input_features")


# ---------------------------------------------------------------- preference tables for the tests
def corrupt(text: str, seed: int) -> str:
    """The words of `text` shuffled: same vocabulary, no longer a coherent answer."""
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


def write_preference_table(sed_dir: Path, out: Path, limit: int = 8) -> Path:
    """A table with the preference-building job's columns from SED records: chosen = the record's target,
    rejected = its words shuffled; AVEm variants: y_vr = another clip's target, y_er = a different shuffle;
    the swapped input = the next record's clip, swapping video, audio, both in turn."""
    records = pq.read_table(next(sed_dir.glob("*.parquet"))).to_pylist()[:limit]
    rows = []
    for i, rec in enumerate(records):
        other = records[(i + 1) % len(records)]
        rows.append({
            "clip_id": rec["clip_id"], "source_uri": rec["source_uri"], "source_video": rec["source_video"],
            "lang": rec["lang"], "av_relation": "consistent", "system": rec["system"], "prompt": rec["prompt"],
            "chosen": rec["target"], "rejected": corrupt(rec["target"], i), "chosen_score": 9.0,
            "rejected_score": 2.0, "chosen_index": 0, "rejected_index": 9, "pairing": "matched", "round": 0,
            "sampler": "test", "judge": "test", "pair_id": f"{rec['clip_id']}-0",
            "rejected_vr": other["target"], "rejected_er": corrupt(rec["target"], 100 + i),
            "swap_clip_id": other["clip_id"], "swap_source_uri": other["source_uri"],
            "swap_modality": ("video", "audio", "both")[i % 3]})
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=PREFERENCE_SCHEMA), out / "part-00000.parquet")
    return out


@pytest.fixture(scope="module")
def preference_table(sed_records, tmp_path_factory) -> Path:
    return write_preference_table(sed_records, tmp_path_factory.mktemp("prefs") / "preferences")


# ---------------------------------------------------------------- two synthetic clips, encoded
@pytest.fixture(scope="module")
def processor(tiny_omni):
    return AutoProcessor.from_pretrained(tiny_omni)


def clip(frames: int, height: int, seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 255, (frames, height, 56, 3), dtype=np.uint8),
            rng.standard_normal(int(16000 * seconds)).astype(np.float32) * 0.1)


RECORD = {"lang": "en", "system": None, "prompt": None, "swap_modality": "video"}
ANSWERS = [("## Visual evidence\nA smile.\n\n## Reasoning\nHappy.", "Happy smile a ## evidence Visual",
            "## Visual evidence\nA frown.", "## Visual evidence\nTears."),
           ("## Acoustic evidence\nA shout.\n\n## Reasoning\nAngry.", "shout angry",
            "## Acoustic evidence\nA laugh, loud and long.", "## Acoustic evidence\nA sigh.")]


def encode_pairs(processor) -> dict[str, list]:
    """Pair 0: 4 frames of 56x56, 1 s audio. Pair 1: 2 frames of 84x56, 2 s audio. AVEm: pair i swaps in the
    other clip's video."""
    clips = [clip(4, 56, 1.0, 0), clip(2, 84, 2.0, 1)]
    encoder = PreferenceEncoder(processor, DATA, "avem")
    batch: dict[str, list] = {}
    for i, (chosen, rejected, vr, er) in enumerate(ANSWERS):
        record = {**RECORD, "chosen": chosen, "rejected": rejected, "rejected_vr": vr, "rejected_er": er}
        example = encoder.encode(record, clips[i], clips[1 - i])
        example["rejected_ids"] = encoder._response(rejected, example["prompt_ids"])
        for key, value in example.items():
            batch.setdefault(key, []).append(value)
    return batch


@pytest.fixture(scope="module")
def pairs(processor) -> dict[str, list]:
    return encode_pairs(processor)


def video_chunks(collated) -> list[torch.Tensor]:
    sizes = collated["video_grid_thw"].prod(dim=1).tolist()
    return list(collated["pixel_values_videos"].split(sizes))


def count(ids: torch.Tensor, processor, token: str) -> int:
    return int((ids == processor.tokenizer.convert_tokens_to_ids(token)).sum())


def test_the_two_clips_really_differ(pairs):
    assert pairs["video_grid_thw"][0].tolist() != pairs["video_grid_thw"][1].tolist()
    assert pairs["input_features"][0].shape != pairs["input_features"][1].shape
    assert len(pairs["prompt_ids"][0]) != len(pairs["prompt_ids"][1])


def test_dpo_rows_share_their_clips_media_block_by_block(pairs, processor):
    out = collate_preference(pairs, DPO_LAYOUT.blocks, processor.tokenizer.pad_token_id)
    assert out["input_ids"].shape[0] == 4  # [chosen_0, chosen_1, rejected_0, rejected_1]
    grids = out["video_grid_thw"].tolist()
    own = [pairs["video_grid_thw"][i][0].tolist() for i in (0, 1)]
    assert grids == [own[0], own[1], own[0], own[1]]
    chunks = video_chunks(out)
    for i in (0, 1):  # chosen i and rejected i carry clip i's patches, identical to the encoded ones
        assert torch.equal(chunks[i], chunks[i + 2])
        assert torch.equal(chunks[i], torch.from_numpy(pairs["pixel_values_videos"][i]))
        n_audio = pairs["input_features"][i].shape[1]
        assert out["feature_attention_mask"][i].sum() == out["feature_attention_mask"][i + 2].sum() == n_audio
        assert torch.equal(out["input_features"][i], out["input_features"][i + 2])
        assert torch.equal(out["input_features"][i, :, :n_audio], torch.from_numpy(pairs["input_features"][i]))
    assert out["video_second_per_grid"].tolist() == pytest.approx(
        [float(pairs["video_second_per_grid"][i][0]) for i in (0, 1, 0, 1)])
    # Each text row holds as many video placeholders as its grid row has merged patches (2x2 merge), and as many
    # audio placeholders as its own clip's prompt: the grids line up with the rows.
    for row in range(4):
        assert count(out["input_ids"][row], processor, "<|VIDEO|>") == out["video_grid_thw"][row].prod() // 4
        prompt = torch.as_tensor(pairs["prompt_ids"][row % 2])
        assert count(out["input_ids"][row], processor, "<|AUDIO|>") == count(prompt, processor, "<|AUDIO|>") > 0


def test_dpo_rows_text_and_labels(pairs, processor):
    pad = processor.tokenizer.pad_token_id
    out = collate_preference(pairs, DPO_LAYOUT.blocks, pad)
    for row, (column, i) in enumerate([("chosen_ids", 0), ("chosen_ids", 1), ("rejected_ids", 0), ("rejected_ids", 1)]):
        prompt, response = pairs["prompt_ids"][i], pairs[column][i]
        n = len(prompt) + len(response)
        assert out["input_ids"][row, :n].tolist() == [*prompt, *response]
        assert out["attention_mask"][row].sum() == n and out["attention_mask"][row, :n].all()
        labels = out["labels"][row]
        assert (labels[: len(prompt)] == IGNORE_INDEX).all() and (labels[n:] == IGNORE_INDEX).all()
        assert labels[len(prompt): n].tolist() == response.tolist()
    assert processor.tokenizer.decode(pairs["chosen_ids"][0]) == ANSWERS[0][0] + "<|im_end|>"


def test_avem_rows_swapped_input_and_text_only_rows(pairs, processor):
    pad = processor.tokenizer.pad_token_id
    out = collate_preference(pairs, AVEM_LAYOUT.blocks, pad)
    assert out["input_ids"].shape[0] == 8  # chosen, y_vr, y_er, chosen on the swapped input; 2 pairs each
    chunks = video_chunks(out)
    for i in (0, 1):
        for block in (1, 2):  # y_vr and y_er see the pair's own clip
            assert torch.equal(chunks[2 * block + i], chunks[i])
            assert torch.equal(out["input_features"][2 * block + i], out["input_features"][i])
        # swap_modality=video: the other clip's video, the pair's own audio; the response is the chosen one.
        assert torch.equal(chunks[6 + i], chunks[1 - i])
        assert torch.equal(out["input_features"][6 + i], out["input_features"][i])
        assert out["labels"][6 + i][out["labels"][6 + i] != IGNORE_INDEX].tolist() == pairs["chosen_ids"][i].tolist()
    text = collate_text(pairs, AVEM_LAYOUT.text_blocks, pad)
    assert set(text) == {"input_ids", "attention_mask", "labels"} and text["input_ids"].shape[0] == 6
    for token in ("<|VIDEO|>", "<|AUDIO|>", "<|vision_bos|>", "<|audio_bos|>"):
        assert count(text["input_ids"], processor, token) == 0
    prompt = processor.tokenizer.decode(pairs["text_prompt_ids"][0])
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="text-only"):
        collate_preference(pairs, AVEM_LAYOUT.text_blocks, pad)


@pytest.mark.parametrize("modality, video_from, audio_from", [("video", 1, 0), ("audio", 0, 1), ("both", 1, 1)])
def test_swap_modality_picks_the_prompts_modality(processor, modality, video_from, audio_from):
    clips = [clip(4, 56, 1.0, 0), clip(2, 84, 2.0, 1)]
    record = {**RECORD, "chosen": "a", "rejected_vr": "b", "rejected_er": "c", "swap_modality": modality}
    example = PreferenceEncoder(processor, DATA, "avem").encode(record, clips[0], clips[1])
    alone = [PreferenceEncoder(processor, DATA, "dpo").encode({**record, "rejected": "d"}, c) for c in clips]
    assert np.array_equal(example["swap_pixel_values_videos"], alone[video_from]["pixel_values_videos"])
    assert np.array_equal(example["swap_input_features"], alone[audio_from]["input_features"])


# ---------------------------------------------------------------- padding does not leak into the log-probs
@pytest.fixture(scope="module")
def tiny_model(tiny_omni, one_torch_thread):
    return Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(tiny_omni).eval()


def one_sequence_logp(model, pairs, i: int, prompt: str, response: str, media: str) -> float:
    """One row scored alone, collated by the SFT collator: no padding at all."""
    example = {"input_ids": [np.concatenate([pairs[prompt][i], pairs[response][i]])],
               "labels": [np.concatenate([np.full(len(pairs[prompt][i]), IGNORE_INDEX), pairs[response][i]])],
               **{c: [pairs[media + c][i]] for c in MEDIA}}
    with torch.no_grad():
        return float(batch_logps(model, collate_sed(example, 0)))


@torch.no_grad()
def test_batched_log_probs_equal_one_sequence_at_a_time(tiny_model, pairs, processor):
    out = collate_preference(pairs, AVEM_LAYOUT.blocks, processor.tokenizer.pad_token_id)
    lengths = out["attention_mask"].sum(dim=1)
    assert lengths.min() < lengths.max()  # some rows are padded
    batched = split_rows(batch_logps(tiny_model, out), AVEM_LAYOUT.blocks)
    for block in AVEM_LAYOUT.blocks:
        alone = [one_sequence_logp(tiny_model, pairs, i, block.prompt, block.response, block.media) for i in (0, 1)]
        assert batched[block.name].tolist() == pytest.approx(alone, abs=2e-4), block.name
    dpo = split_rows(batch_logps(tiny_model, collate_preference(pairs, DPO_LAYOUT.blocks, 0)), DPO_LAYOUT.blocks)
    assert dpo["chosen"].tolist() == pytest.approx(batched["chosen"].tolist(), abs=2e-4)
    assert (dpo["chosen"] < 0).all() and not torch.allclose(dpo["chosen"], dpo["rejected"])


# ---------------------------------------------------------------- the Ray Data stage on real clips
@pytest.mark.parametrize("kind", ["dpo", "avem"])
def test_preprocessor_produces_its_declared_columns(tiny_omni, preference_table, kind):
    table = pq.read_table(next(preference_table.glob("*.parquet"))).slice(0, 3)
    batch = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    batch["chosen"][1] = None  # an unusable row is dropped, not a crash
    out = PreferencePreprocessor(str(tiny_omni), DATA, kind)(batch)
    assert set(out) == set(OUTPUT_COLUMNS[kind])
    assert out["pair_id"] == [batch["pair_id"][0], batch["pair_id"][2]]
    assert all(len(values) == 2 for values in out.values())


def test_preprocessor_names_missing_columns(tiny_omni, preference_table):
    table = pq.read_table(next(preference_table.glob("*.parquet"))).slice(0, 1)
    batch = {n: table.column(n).to_numpy(zero_copy_only=False) for n in table.column_names if n != "swap_modality"}
    assert "swap_modality" in INPUT_COLUMNS["avem"]
    with pytest.raises(ValueError, match="swap_modality"):
        PreferencePreprocessor(str(tiny_omni), DATA, "avem")(batch)
