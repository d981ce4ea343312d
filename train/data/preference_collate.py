"""Collation of preference pairs for Qwen2.5-Omni: every response of a pair as its own row, each row with its clip.

A preprocessed pair holds the prompt ids (system, media placeholders, instruction, assistant header) and the
media tensors of its clip ONCE, plus the token ids of each response. The collator lays the rows out in blocks,
one block per response kind, the pairs in the same order inside every block (TRL's [chosen; rejected] layout):

    DPO   rows [c_0 .. c_{B-1} | r_0 .. r_{B-1}]                                        2B rows
    AVEm  rows [w_0 .. | vr_0 .. | er_0 .. | w_0 on the swapped clip ..]                  4B rows
    text  rows [w_0 .. | vr_0 .. | er_0 ..] with the text-only prompt, no media (TPD)     3B rows

and repeats each pair's media in exactly that row order. Qwen2.5-Omni scatters the vision-tower output into the
video placeholder tokens in row-major order and reads `video_grid_thw` (and the audio features' rows) in the same
order, so row k·B + i must find pair i's patches at the (k·B + i)-th video: repeating the media block by block,
not pair by pair, is what keeps that true. Padding, attention and audio masks are `train.data.collate.collate_sed`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from train.data.collate import collate_sed
from train.data.sed_data import IGNORE_INDEX

MEDIA_COLUMNS = ("pixel_values_videos", "video_grid_thw", "video_second_per_grid", "input_features")


@dataclass(frozen=True)
class Block:
    """One row per pair: `prompt` column + `response` column, seeing the media under column prefix `media`
    ("" for the pair's own clip, "swap_" for the swapped input) or no media at all (None, text only)."""

    name: str
    response: str
    prompt: str = "prompt_ids"
    media: str | None = ""


@dataclass(frozen=True)
class Layout:
    blocks: tuple[Block, ...]  # policy (and reference) rows, with media
    text_blocks: tuple[Block, ...] = ()  # reference-only rows without media (AVEm's text-prior debiasing)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.blocks + self.text_blocks)


DPO_LAYOUT = Layout(blocks=(Block("chosen", "chosen_ids"), Block("rejected", "rejected_ids")))
AVEM_LAYOUT = Layout(
    blocks=(Block("chosen", "chosen_ids"), Block("vr", "vr_ids"), Block("er", "er_ids"),
            # Eq. 4 read with y_w in both terms: the chosen response again, on the clip with the prompt's modality
            # swapped for a different-emotion clip's.
            Block("chosen_swapped", "chosen_ids", prompt="swap_prompt_ids", media="swap_")),
    text_blocks=tuple(Block(f"text_{name}", f"{name}_ids", prompt="text_prompt_ids", media=None)
                      for name in ("chosen", "vr", "er")),
)
LAYOUTS = {"dpo": DPO_LAYOUT, "avem": AVEM_LAYOUT}


def collate_preference(batch: Mapping[str, Sequence[np.ndarray]], blocks: Sequence[Block],
                       pad_token_id: int) -> dict[str, Tensor]:
    """Model inputs + `labels` for len(blocks)·B rows (B pairs), block by block; media repeated per block.

    Every block must see media; text-only blocks go through `collate_text`."""
    if any(block.media is None for block in blocks):
        raise ValueError("collate_preference: text-only blocks go through collate_text")
    rows: dict[str, list[np.ndarray]] = {name: [] for name in ("input_ids", "labels", *MEDIA_COLUMNS)}
    for block in blocks:
        for i in range(_pair_count(batch)):
            input_ids, labels = _row(batch[block.prompt][i], batch[block.response][i])
            rows["input_ids"].append(input_ids)
            rows["labels"].append(labels)
            for column in MEDIA_COLUMNS:
                rows[column].append(batch[block.media + column][i])
    return collate_sed(rows, pad_token_id)


def collate_text(batch: Mapping[str, Sequence[np.ndarray]], blocks: Sequence[Block],
                 pad_token_id: int) -> dict[str, Tensor]:
    """Text-only rows (no media tensors at all): right-padded ids, attention mask and response labels."""
    input_ids, labels = [], []
    for block in blocks:
        for i in range(_pair_count(batch)):
            ids, lab = _row(batch[block.prompt][i], batch[block.response][i])
            input_ids.append(torch.as_tensor(ids))
            labels.append(torch.as_tensor(lab))
    lengths = torch.tensor([len(ids) for ids in input_ids])
    return {
        "input_ids": torch.nn.utils.rnn.pad_sequence(input_ids, batch_first=True, padding_value=pad_token_id),
        "attention_mask": (torch.arange(int(lengths.max()))[None, :] < lengths[:, None]).long(),
        "labels": torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX),
    }


def split_rows(values: Tensor, blocks: Sequence[Block]) -> dict[str, Tensor]:
    """[len(blocks)·B] per-row values -> {block name: [B]}, undoing the collator's block order."""
    if values.shape[0] % len(blocks):
        raise ValueError(f"{values.shape[0]} rows do not split into {len(blocks)} blocks")
    return dict(zip((b.name for b in blocks), values.chunk(len(blocks)), strict=True))


def _row(prompt_ids: np.ndarray, response_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prompt_ids, response_ids = np.asarray(prompt_ids, dtype=np.int64), np.asarray(response_ids, dtype=np.int64)
    labels = np.concatenate([np.full(len(prompt_ids), IGNORE_INDEX, dtype=np.int64), response_ids])
    return np.concatenate([prompt_ids, response_ids]), labels


def _pair_count(batch: Mapping[str, Sequence[np.ndarray]]) -> int:
    return len(batch["prompt_ids"])
