"""The local transformers backend on tiny real Qwen2.5-VL, Qwen2.5-Omni thinker and Qwen2 models (CPU), and the
OpenAI content parts that carry clip media to it."""

from __future__ import annotations

import base64
import io
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.devkit.tiny_vl import build_tiny_causal_lm
from engine.models.backends.base import ChatRequest
from engine.models.backends.local import LocalBackendConfig, PerRequestError, TransformersChatBackend
from engine.models.backends.media_parts import (
    MediaPartError,
    audio_part,
    decode_audio,
    decode_frames,
    frame_parts,
    media_key,
)

SR = 16_000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("local_backend")


def _backend(models_dir: Path, spec: str, kind: str, **overrides: object) -> TransformersChatBackend:
    config = LocalBackendConfig(model=f"{spec}:{models_dir / spec}", kind=kind, device="cpu", **overrides)
    return TransformersChatBackend(config)


@pytest.fixture(scope="module")
def vl(models_dir: Path) -> TransformersChatBackend:
    return _backend(models_dir, "tiny-vl", "qwen2_5_vl", batch_size=4)


@pytest.fixture(scope="module")
def omni(models_dir: Path) -> TransformersChatBackend:
    return _backend(models_dir, "tiny-omni", "qwen2_5_omni")


@pytest.fixture(scope="module")
def lm(models_dir: Path) -> TransformersChatBackend:
    return _backend(models_dir, "tiny-lm", "causal_lm")


# ---------------------------------------------------------------- media


def _jpegs(n: int, seed: int = 0, size: tuple[int, int] = (56, 56)) -> list[bytes]:
    """Smooth colour gradients plus a per-frame offset: JPEG keeps them close, frames stay distinct."""
    h, w = size
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 128, 3)
        ramp = np.add.outer(np.arange(h), np.arange(w))[..., None] * 127 // (h + w)
        buffer = io.BytesIO()
        Image.fromarray((base + ramp).astype(np.uint8)).save(buffer, format="JPEG", quality=95)
        out.append(buffer.getvalue())
    return out


def _pcm(seconds: float = 1.0, hz: float = 440.0) -> bytes:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype("<f4").tobytes()


def test_frames_round_trip() -> None:
    frames = _jpegs(3)
    parts = frame_parts(frames)
    assert [part["type"] for part in parts] == ["image_url"] * 3
    assert parts[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    decoded = decode_frames(parts)
    for jpeg, array in zip(frames, decoded, strict=True):
        original = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        assert array.shape == (56, 56, 3) and array.dtype == np.uint8
        assert np.array_equal(array, original)  # the very pixels PIL decodes from the JPEG
    assert not np.array_equal(decoded[0], decoded[1])  # order is kept, frames are not merged


def test_audio_round_trip_and_wav_format() -> None:
    samples = np.random.default_rng(1).uniform(-1, 1, SR).astype(np.float32)
    samples[:2] = [1.0, -1.0]  # the extremes, where int16 clipping happens
    part = audio_part(samples.tobytes())
    assert part["type"] == "input_audio" and part["input_audio"]["format"] == "wav"
    with wave.open(io.BytesIO(base64.b64decode(part["input_audio"]["data"]))) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (SR, 1, 2)
    decoded = decode_audio(part)
    assert decoded.dtype == np.float32 and decoded.shape == samples.shape
    assert np.abs(decoded - samples).max() <= 1 / 32768


def test_bad_media_parts_are_rejected() -> None:
    with pytest.raises(ValueError, match="16000 Hz"):
        decode_audio(audio_part(_pcm(), sample_rate=8000))
    with pytest.raises(MediaPartError, match="readable image"):
        decode_frames(frame_parts([b"x" * 64]))
    with pytest.raises(MediaPartError, match="base64"):
        decode_frames([{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,%%%"}}])
    with pytest.raises(MediaPartError):
        decode_frames([{"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}])


def test_media_key_is_stable_and_content_sensitive() -> None:
    frames, pcm = _jpegs(2), _pcm()
    assert media_key(frames, pcm) == media_key(list(frames), pcm)
    assert media_key(frames, pcm) != media_key(frames[::-1], pcm)
    assert media_key(frames, pcm) != media_key(frames, None)
    assert media_key([b"ab", b"c"], None) != media_key([b"a", b"bc"], None)


# ---------------------------------------------------------------- requests


def _request(text: str, frames: Sequence[bytes] = (), pcm: bytes | None = None, **kwargs: object) -> ChatRequest:
    audio = [audio_part(pcm)] if pcm is not None else []
    parts = [*frame_parts(list(frames)), *audio, {"type": "text", "text": text}]
    messages = [{"role": "system", "content": "You are an emotion analyst."}, {"role": "user", "content": parts}]
    return ChatRequest(messages=messages, max_tokens=kwargs.pop("max_tokens", 6), **kwargs)


def _assert_answered(results: list, n: int) -> None:
    assert len(results) == n
    for result in results:
        assert result.ok, result.error
        assert result.text and result.prompt_tokens > 0 and result.completion_tokens > 0 and result.attempts == 1


# ---------------------------------------------------------------- Qwen2.5-VL


def test_vl_batch_video_image_text(vl: TransformersChatBackend) -> None:
    requests = [_request("Describe the video.", _jpegs(4), tag="describe"), _request("And this picture?", _jpegs(1)),
                _request("Only words here.")]
    results = vl.chat(requests)
    _assert_answered(results, 3)
    assert results[0].prompt_tokens > results[2].prompt_tokens  # the video's placeholders count
    assert vl.usage()["tags"]["describe"]["requests"] == 1 and vl.usage()["total"]["requests"] == 3


def test_vl_frames_become_one_video(vl: TransformersChatBackend) -> None:
    inputs = vl.encode([_request("Describe the video.", _jpegs(4)), _request("And this picture?", _jpegs(1))])
    ids = inputs["input_ids"]
    config = vl.model.config
    # 4 frames of 56x56: 2 temporal patches x 4x4 patches, merged 2x2 → 8 video tokens, all in request 0.
    assert inputs["video_grid_thw"].tolist() == [[2, 4, 4]]
    assert (ids[0] == config.video_token_id).sum() == 8 and (ids[1] == config.video_token_id).sum() == 0
    assert (ids[1] == config.image_token_id).sum() == 4 and (ids[0] == config.image_token_id).sum() == 0
    # 2 frames per temporal patch at the engine's 2 fps: one second per patch (not the processor's 24 fps guess).
    assert inputs["second_per_grid_ts"].tolist() == [1.0]


def test_vl_media_reaches_the_model(vl: TransformersChatBackend) -> None:
    def last_logits(seed: int) -> torch.Tensor:
        with torch.inference_mode():
            return vl.model(**vl.encode([_request("Describe the video.", _jpegs(4, seed=seed))])).logits[0, -1]

    assert not torch.allclose(last_logits(0), last_logits(1), atol=1e-4)
    assert torch.equal(last_logits(0), last_logits(0))


def test_vl_left_padding_matches_single_runs(vl: TransformersChatBackend) -> None:
    short, long = _request("Hi.", _jpegs(2)), _request("A much longer question about the whole clip, please. " * 3)
    inputs = vl.encode([short, long])
    assert inputs["attention_mask"][0, 0] == 0 and inputs["attention_mask"][:, -1].all()  # pads on the left
    together = vl.chat([short, long])
    assert [r.text for r in together] == [vl.chat([short])[0].text, vl.chat([long])[0].text]


def test_bad_media_is_a_result_and_the_batch_goes_on(vl: TransformersChatBackend) -> None:
    bad_parts = [*frame_parts([b"definitely not a jpeg"]), {"type": "text", "text": "?"}]
    bad_request = ChatRequest(messages=[{"role": "user", "content": bad_parts}], max_tokens=4)
    mixed_sizes = _request("Two sizes.", _jpegs(1) + _jpegs(1, size=(84, 56)))
    # Decodes fine, but Qwen's resize refuses an aspect ratio over 200: the batch is retried one by one.
    too_thin = _request("A thin strip.", _jpegs(1, size=(28, 6000)))
    results = vl.chat([_request("First.", _jpegs(2)), bad_request, mixed_sizes, too_thin, _request("Fifth.")])
    assert [r.error for r in results] == [None, "bad_media", "bad_media", "bad_media", None]
    assert all(r.text is None for r in results[1:4])
    _assert_answered([results[0], results[4]], 2)
    with pytest.raises(PerRequestError):
        vl.encode([bad_request])


def test_audio_is_unsupported_for_vl_and_too_long_is_reported(vl: TransformersChatBackend) -> None:
    results = vl.chat([_request("Listen.", _jpegs(2), _pcm()), _request("Go on.", max_tokens=40_000),
                       _request("Fine.")])
    assert [r.error for r in results] == ["unsupported_media", "too_long", None]
    assert results[1].prompt_tokens > 0


@pytest.mark.parametrize(("spec", "kind", "key"), [("tiny-vl", "qwen2_5_vl", "second_per_grid_ts"),
                                                   ("tiny-omni", "qwen2_5_omni", "video_second_per_grid")])
def test_frame_rate_sets_video_time_positions(models_dir: Path, spec: str, kind: str, key: str) -> None:
    # Frames sampled at 4 fps, 2 per temporal patch: half a second per patch (the processors would guess).
    backend = _backend(models_dir, spec, kind, frames_fps=4.0)
    assert backend.encode([_request("x", _jpegs(4))])[key].tolist() == [0.5]


def test_vl_bfloat16_casts_pixels(models_dir: Path) -> None:
    # The GPU default dtype, here on CPU: pixel values must follow the model's dtype, token ids must not.
    backend = _backend(models_dir, "tiny-vl", "qwen2_5_vl", dtype="bfloat16")
    assert backend.encode([_request("x", _jpegs(2))])["pixel_values_videos"].dtype == torch.bfloat16
    _assert_answered(backend.chat([_request("Describe the video.", _jpegs(2))]), 1)


# ---------------------------------------------------------------- Qwen2.5-Omni thinker


def test_omni_video_with_and_without_audio(omni: TransformersChatBackend) -> None:
    with_audio, video_only = _request("How does she feel?", _jpegs(4), _pcm()), _request("And now?", _jpegs(4))
    _assert_answered(omni.chat([with_audio, video_only]), 2)
    inputs = omni.encode([with_audio, video_only])
    audio_id = omni.model.config.audio_token_id
    assert (inputs["input_ids"][0] == audio_id).sum() > 0 and (inputs["input_ids"][1] == audio_id).sum() == 0
    assert inputs["input_features"].shape[0] == 1 and inputs["video_grid_thw"].shape[0] == 2


# ---------------------------------------------------------------- causal LM


def test_causal_lm_greedy_is_deterministic_and_sampling_varies(lm: TransformersChatBackend) -> None:
    request = _request("What is the emotion?", max_tokens=8)
    first, second = lm.chat([request]), lm.chat([request])
    _assert_answered(first, 1)
    assert first[0].text == second[0].text
    sampled = ChatRequest(messages=request.messages, max_tokens=8, temperature=0.8)
    texts = set()
    for seed in range(4):
        torch.manual_seed(seed)
        texts.add(lm.chat([sampled])[0].text)
    assert len(texts) > 1


def test_causal_lm_mixed_settings_left_padding_and_media(lm: TransformersChatBackend) -> None:
    requests = [_request("Short.", max_tokens=5), _request("With a picture.", _jpegs(1)),
                _request("A rather longer question for the model, with more words.", max_tokens=5),
                _request("Other settings.", max_tokens=3, temperature=0.5)]
    inputs = lm.encode([requests[0], requests[2]])
    assert inputs["attention_mask"][0, 0] == 0 and inputs["attention_mask"][:, -1].all()  # pads on the left
    torch.manual_seed(0)
    results = lm.chat(requests)
    assert results[1].error == "unsupported_media" and results[1].text is None
    _assert_answered([results[0], results[2], results[3]], 3)
    assert results[3].completion_tokens <= 3
    # Requests 0 and 2 ran as one left-padded batch and answer exactly as each does alone.
    assert [results[0].text, results[2].text] == [lm.chat([requests[0]])[0].text, lm.chat([requests[2]])[0].text]


def test_tiny_spec_must_match_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind"):
        LocalBackendConfig(model=f"tiny-vl:{tmp_path}", kind="causal_lm")


def test_tiny_builds_are_deterministic_and_cached(tmp_path: Path) -> None:
    first, second = build_tiny_causal_lm(tmp_path / "a", seed=3), build_tiny_causal_lm(tmp_path / "b", seed=3)
    weights = [(folder / "model.safetensors").read_bytes() for folder in (first, second)]
    assert weights[0] == weights[1]
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_causal_lm(first, seed=3) == first and (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert (build_tiny_causal_lm(tmp_path / "c", seed=4) / "model.safetensors").read_bytes() != weights[0]
