"""Preference rows -> training arrays, before the training loop (decode and processor never in it; train.data.runtime).

Input: the preference table (one row per pair: clip_id, source_uri, system, prompt, chosen, rejected, pair_id, ...;
for AVEm-DPO also rejected_vr, rejected_er, swap_source_uri, swap_modality). Each row's clip is decoded and run
through the processor ONCE; the SED recipe's encoder (`SedEncoder`) makes the prompt, so DPO sees a clip exactly as
SFT did. Output per pair, as plain numpy arrays:

    prompt_ids, chosen_ids, rejected_ids + the clip's media        (pixel_values_videos, video_grid_thw,
                                                                     video_second_per_grid, input_features)
    AVEm:  vr_ids, er_ids; swap_prompt_ids + swap_* media           (the input with the prompt's modality swapped)
           text_prompt_ids                                          (system + instruction, no media: TPD)

Response ids end with <|im_end|> as in SFT. `train.data.preference_collate` turns a batch of these into model rows.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import numpy as np

from engine.core.media import MediaError
from train.core.config import DataConfig
from train.data.preference_collate import MEDIA_COLUMNS
from train.data.sed_data import IGNORE_INDEX, SedEncoder, load_media, sed_messages, target_token_ids

log = logging.getLogger(__name__)

AVEM_ONLY = ("rejected_vr", "rejected_er", "swap_source_uri", "swap_modality")  # nullable in the table
INPUT_COLUMNS = {
    "dpo": ("pair_id", "clip_id", "source_uri", "lang", "system", "prompt", "chosen", "rejected"),
    "avem": ("pair_id", "clip_id", "source_uri", "lang", "system", "prompt", "chosen", *AVEM_ONLY),
}
OUTPUT_COLUMNS = {
    "dpo": ("pair_id", "clip_id", "prompt_ids", "chosen_ids", "rejected_ids", *MEDIA_COLUMNS),
    "avem": ("pair_id", "clip_id", "prompt_ids", "chosen_ids", "vr_ids", "er_ids", *MEDIA_COLUMNS, "swap_prompt_ids",
             *(f"swap_{c}" for c in MEDIA_COLUMNS), "text_prompt_ids"),
}
SWAP_MODALITIES = ("video", "audio", "both")
Media = tuple[np.ndarray, np.ndarray]  # frames (T, H, W, 3), 16 kHz mono audio


def swapped_media(own: Media, other: Media, modality: str) -> Media:
    """AVEm's prompt-based input preference: the modality the prompt is about comes from the other clip
    (visual prompt -> video, audio prompt -> audio, otherwise both); the rest stays the pair's own."""
    if modality not in SWAP_MODALITIES:
        raise ValueError(f"swap_modality must be one of {SWAP_MODALITIES}, got {modality!r}")
    frames = other[0] if modality in ("video", "both") else own[0]
    audio = other[1] if modality in ("audio", "both") else own[1]
    return frames, audio


class PreferenceEncoder:
    """One preference row + decoded media -> the arrays of OUTPUT_COLUMNS[kind] (minus ids/bookkeeping)."""

    def __init__(self, processor: Any, config: DataConfig, kind: str) -> None:
        self.processor = processor
        self.config = config
        self.kind = kind
        self.sed = SedEncoder(processor, config)

    def encode(self, record: dict[str, Any], media: Media, swap_media: Media | None = None) -> dict[str, np.ndarray]:
        out = self._prompt_and_media(record, media, prefix="")
        out["chosen_ids"] = self._response(record["chosen"], out["prompt_ids"])
        if self.kind == "dpo":
            out["rejected_ids"] = self._response(record["rejected"], out["prompt_ids"])
            return out
        out["vr_ids"] = self._response(record["rejected_vr"], out["prompt_ids"])
        out["er_ids"] = self._response(record["rejected_er"], out["prompt_ids"])
        if swap_media is None:
            raise ValueError("AVEm-DPO needs the swapped clip's media")
        out |= self._prompt_and_media(record, swapped_media(media, swap_media, record["swap_modality"]), "swap_")
        out["text_prompt_ids"] = self.text_prompt_ids(record)
        return out

    def text_prompt_ids(self, record: dict[str, Any]) -> np.ndarray:
        """The same system prompt and instruction with no video or audio entry (so no media tokens at all): what
        the reference's language backbone alone sees for AVEm's text-prior debiasing."""
        messages = sed_messages(record)
        messages[-1] = {**messages[-1], "content": [c for c in messages[-1]["content"] if c["type"] == "text"]}
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return np.asarray(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)

    def _prompt_and_media(self, record: dict[str, Any], media: Media, prefix: str) -> dict[str, np.ndarray]:
        # SedEncoder.encode masks exactly the prompt prefix in `labels`: that prefix is the prompt (the target
        # only sets the max_length check; the responses are tokenized below the same way).
        example = self.sed.encode({**record, "target": record["chosen"]}, *media)
        n_prompt = int((example["labels"] == IGNORE_INDEX).sum())
        return {f"{prefix}prompt_ids": example["input_ids"][:n_prompt],
                **{f"{prefix}{column}": example[column] for column in MEDIA_COLUMNS}}

    def _response(self, text: str | None, prompt_ids: np.ndarray) -> np.ndarray:
        if not text:
            raise ValueError("empty response")
        ids = np.asarray(target_token_ids(self.processor.tokenizer, text), dtype=np.int64)
        if len(prompt_ids) + len(ids) > self.config.max_length:
            raise ValueError(f"{len(prompt_ids) + len(ids)} tokens > data.max_length {self.config.max_length}")
        return ids


class PreferencePreprocessor:
    """Loads the processor once; encodes a batch of preference rows (a Ray Data actor, or called in the driver).
    Unusable rows (undecodable media, a missing AVEm variant, too long) are dropped with a warning, as in the SFT
    preprocessing."""

    def __init__(self, model_path: str, config: DataConfig, kind: str, media_cache: int = 16) -> None:
        from transformers import AutoProcessor  # heavy import kept to the actor

        self.encoder = PreferenceEncoder(AutoProcessor.from_pretrained(model_path), config, kind)
        self.config = config
        self.kind = kind
        # Pairs of one clip are adjacent in the table (top-2 x bottom-2): decode each clip once, not per pair.
        self.media: OrderedDict[str, Media] = OrderedDict()
        self.media_cache = media_cache

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        missing = [c for c in INPUT_COLUMNS[self.kind] if c not in batch]
        if missing:
            raise ValueError(f"preference table lacks columns {missing} needed by loss.kind={self.kind}")
        out: dict[str, list] = {name: [] for name in OUTPUT_COLUMNS[self.kind]}
        for i in range(len(batch["pair_id"])):
            record = {key: _scalar(values[i]) for key, values in batch.items()}
            try:
                example = self._encode(record)
            except (MediaError, ValueError, TypeError) as err:
                log.warning("skipping preference pair %s (clip %s): %s", record["pair_id"], record["clip_id"], err)
                continue
            example |= {"pair_id": record["pair_id"], "clip_id": record["clip_id"]}
            for name in out:
                out[name].append(example[name])
        return out

    def _encode(self, record: dict[str, Any]) -> dict[str, Any]:
        if self.kind == "avem":  # the table leaves these null where the AVEm variant writer failed
            missing = [c for c in AVEM_ONLY if not record.get(c)]
            if missing:
                raise ValueError(f"AVEm-DPO needs {missing}")
        swap = self._load(record["swap_source_uri"]) if self.kind == "avem" else None
        return self.encoder.encode(record, self._load(record["source_uri"]), swap)

    def _load(self, uri: str) -> Media:
        if uri not in self.media:
            self.media[uri] = load_media(uri, self.config)
            if len(self.media) > self.media_cache:
                self.media.popitem(last=False)
        return self.media[uri]


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def build_preference_dataset(config, model_path: str, materialize: bool):  # (DpoConfig, str, bool) -> Dataset
    """Preference table -> encoded pairs (train.data.runtime: an actor pool, or the driver for a small CPU run)."""
    from train.data import runtime

    data = config.data
    return runtime.encode(data.preferences, data.limit, PreferencePreprocessor,
                          {"model_path": model_path, "config": data, "kind": config.loss.kind}, batch_size=4,
                          concurrency=data.preprocess_concurrency, materialize=materialize,
                          driver_max_rows=data.driver_max_rows)
