"""Batch collation for Qwen2.5-Omni SED examples: pad text, concatenate patches, pad audio features."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from train.data.sed_data import IGNORE_INDEX


def _pad(rows: Sequence[np.ndarray], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row)
    return out


def collate_sed(batch: dict[str, Sequence[np.ndarray]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids/labels with an attention mask; video patches of all clips concatenated (Qwen's
    layout, split again by video_grid_thw); audio features padded to the longest clip with their mask."""
    input_ids = _pad(batch["input_ids"], pad_token_id)
    labels = _pad(batch["labels"], IGNORE_INDEX)
    attention_mask = _pad([np.ones(len(r), dtype=np.int64) for r in batch["input_ids"]], 0)
    features = [np.asarray(f, dtype=np.float32) for f in batch["input_features"]]
    frames = max(f.shape[1] for f in features)
    input_features = torch.zeros(len(features), features[0].shape[0], frames)
    feature_mask = torch.zeros(len(features), frames, dtype=torch.long)
    for i, feat in enumerate(features):
        input_features[i, :, : feat.shape[1]] = torch.tensor(feat)  # a copy: Ray blocks are read-only arrays
        feature_mask[i, : feat.shape[1]] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "pixel_values_videos": torch.from_numpy(np.concatenate([np.asarray(p) for p in batch["pixel_values_videos"]])),
        "video_grid_thw": torch.from_numpy(np.concatenate([np.asarray(g) for g in batch["video_grid_thw"]])),
        "video_second_per_grid": torch.from_numpy(
            np.concatenate([np.asarray(s, dtype=np.float32) for s in batch["video_second_per_grid"]])),
        "input_features": input_features,
        "feature_attention_mask": feature_mask,
    }
