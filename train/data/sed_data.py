"""SED training examples: records -> chat -> Qwen2.5-Omni processor tensors with masked labels.

CPU preprocessing (decode, processor, chat template) runs before the training loop, never in it: in a Ray Data actor
pool, or in the driver for a small CPU run (train.data.runtime). Each example leaves it as plain numpy arrays, trimmed
of padding, and the collator pads per batch.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from engine.core.media import MediaError, decode, open_source, probe
from engine.core.schema import AUDIO_SAMPLE_RATE
from engine.core.sed import SYSTEM_PROMPT, user_prompt
from train.core.config import DataConfig

log = logging.getLogger(__name__)
IGNORE_INDEX = -100
ARRAY_COLUMNS = ("input_ids", "labels", "pixel_values_videos", "video_grid_thw", "video_second_per_grid",
                 "input_features")


def sed_messages(record: dict[str, Any], audio_in_video: bool = False) -> list[dict[str, Any]]:
    """System, then the user turn: the video, its audio as a separate stream (the official inference) unless
    it is interleaved into the video's placeholder, then the instruction."""
    media = [{"type": "video"}] + ([] if audio_in_video else [{"type": "audio"}])
    return [
        {"role": "system", "content": [{"type": "text", "text": record.get("system") or SYSTEM_PROMPT}]},
        {"role": "user", "content": [
            *media, {"type": "text", "text": record.get("prompt") or user_prompt(record.get("lang"))}]},
    ]


def mask_labels(prompt_ids: list[int], target_ids: list[int]) -> tuple[list[int], list[int]]:
    """input_ids = prompt + target; labels ignore every prompt position (system, user, media, the
    assistant header) and keep the target tokens, so the loss is NLL on Y only (paper Eq. 2)."""
    return prompt_ids + target_ids, [IGNORE_INDEX] * len(prompt_ids) + target_ids


def target_token_ids(tokenizer: Any, target: str, end_token: str = "<|im_end|>") -> list[int]:
    """The assistant target plus the end-of-turn token, so the model learns where to stop."""
    return tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids(end_token)]


class SedEncoder:
    """Turns one record + decoded media into training arrays with the real processor and chat template."""

    def __init__(self, processor: Any, config: DataConfig) -> None:
        self.processor = processor
        self.config = config
        self.video_size = {"shortest_edge": 4 * 28 * 28, "longest_edge": config.max_pixels}

    def encode_prompt(self, record: dict[str, Any], frames: np.ndarray, audio: np.ndarray,
                      return_tensors: str = "np") -> Any:
        """The processor's outputs for the prompt alone (system, media, instruction, assistant header): what
        training prefixes to the target and what sampling and evaluation generate from."""
        interleave = self.config.audio_in_video
        prompt = self.processor.apply_chat_template(sed_messages(record, interleave), tokenize=False,
                                                    add_generation_prompt=True)
        # Interleaved: our already-decoded track is the audio of video 0 (no second decode by the processor).
        extra = {"load_audio_from_video": True, "audio_from_video_indices": [0]} if interleave else {}
        return self.processor(text=prompt, videos=[frames], audio=[audio], return_tensors=return_tensors,
                              videos_kwargs={"size": self.video_size, "fps": self.config.fps}, **extra)

    def encode(self, record: dict[str, Any], frames: np.ndarray, audio: np.ndarray) -> dict[str, np.ndarray]:
        enc = self.encode_prompt(record, frames, audio)
        input_ids, labels = mask_labels(enc["input_ids"][0].tolist(),
                                        target_token_ids(self.processor.tokenizer, record["target"]))
        if len(input_ids) > self.config.max_length:
            raise ValueError(f"{len(input_ids)} tokens > data.max_length {self.config.max_length}")
        n_audio = int(enc["feature_attention_mask"][0].sum())
        return {
            "input_ids": np.asarray(input_ids, dtype=np.int64),
            "labels": np.asarray(labels, dtype=np.int64),
            "pixel_values_videos": enc["pixel_values_videos"].astype(np.float32),
            "video_grid_thw": enc["video_grid_thw"].astype(np.int64),
            # Seconds per temporal patch: sets the multimodal RoPE time positions of the video tokens.
            "video_second_per_grid": np.asarray(enc["video_second_per_grid"], dtype=np.float32),
            # Trimmed to the real audio length: the extractor pads every clip to 30 s.
            "input_features": enc["input_features"][0][:, :n_audio].astype(np.float32),
        }


def load_media(uri: str, config: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) at config.fps (<= max_frames) and 16 kHz mono audio, with the engine's decoder."""
    source = open_source(uri)
    probed = probe(source)
    if not (probed.has_video and probed.has_audio):
        raise MediaError("missing_track", uri)
    side = int(config.max_pixels**0.5 * 1.5)  # decode near the processor's budget, not at full HD
    clip = decode(source, probed, fps=config.fps, max_frames=config.max_frames, max_side=side,
                  sample_rate=AUDIO_SAMPLE_RATE)
    return np.stack(clip.frames), clip.audio


class SedPreprocessor:
    """Loads the processor once, encodes a batch of records, drops the unusable with a log (a Ray Data actor, or
    called in the driver)."""

    def __init__(self, model_path: str, config: DataConfig) -> None:
        from transformers import AutoProcessor  # heavy import kept to the actor

        self.encoder = SedEncoder(AutoProcessor.from_pretrained(model_path), config)
        self.config = config
        self.logged_grid = False

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {name: [] for name in (*ARRAY_COLUMNS, "clip_id", "n_tokens", "n_target")}
        for i in range(len(batch["clip_id"])):
            record = {key: _scalar(values[i]) for key, values in batch.items()}
            try:
                frames, audio = load_media(record["source_uri"], self.config)
                example = self.encoder.encode(record, frames, audio)
            except (MediaError, ValueError) as err:
                log.warning("skipping SED record %s: %s", record["clip_id"], err)
                continue
            self._log_grid(example)
            for name in ARRAY_COLUMNS:
                out[name].append(example[name])
            out["clip_id"].append(record["clip_id"])
            out["n_tokens"].append(len(example["input_ids"]))
            out["n_target"].append(int((example["labels"] != IGNORE_INDEX).sum()))
        return out

    def _log_grid(self, example: dict[str, np.ndarray]) -> None:
        if not self.logged_grid:  # the real frame size reaching the model, once per actor
            log.info("video_grid_thw %s, %d tokens", example["video_grid_thw"].tolist(), len(example["input_ids"]))
            self.logged_grid = True


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def build_sed_dataset(config, model_path: str, materialize: bool):  # (SftConfig, str, bool) -> Dataset
    """Records -> preprocessed examples (train.data.runtime: an actor pool, or the driver for a small CPU run)."""
    from train.data import runtime

    data = config.data
    return runtime.encode(data.sed, data.limit, SedPreprocessor, {"model_path": model_path, "config": data},
                          batch_size=4, concurrency=data.preprocess_concurrency, materialize=materialize,
                          driver_max_rows=data.driver_max_rows)
