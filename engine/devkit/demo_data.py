"""A small synthetic demo set: talking-face clips with SABER sidecar annotations, plus planted bad files.

Every clip is planted with the (stage, reason) the engine must reject it with, or None if it must be
kept, and `expected.jsonl` records that ground truth next to the media, so `make demo` and the tests
can check the engine's verdicts clip by clip. Speech comes from espeak-ng, the face is drawn with
Pillow, ffmpeg muxes; `engine.devkit.demo_media` holds that machinery, `engine.devkit.demo_content` the
sentences, voices and backgrounds.

    clips = generate_demo_set(Path(".cache/demo_clips"))   # cached: a rerun with the same args is free
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.devkit import demo_media as media
from engine.devkit.demo_content import BACKGROUNDS, MOODS, SENTENCES, TAGS, VOICES
from engine.devkit.demo_media import synthesize_speech, write_clip  # re-exported: part of this module's API

__all__ = ["PlantedClip", "generate_demo_set", "load_expected", "synthesize_speech", "write_clip"]

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # bump when the planted content changes, so old caches are regenerated
EXPECTED_FILE = "expected.jsonl"
PARAMS_FILE = "params.json"
FPS = 10
SIZE = (320, 240)
TINY_SIZE = (64, 48)
TAG_EVERY = 4  # one annotated transcript in four carries a <sound event> that espeak does not say


@dataclass(frozen=True)
class PlantedClip:
    name: str  # file name inside out_dir, e.g. "good_000.mp4"
    kind: str
    expected_stage: str | None  # None for clips that must be kept
    expected_reason: str | None
    spoken_text: str | None  # what espeak actually said (None if no speech)
    annotated_text: str | None  # audio_desc.speech_content in the sidecar, with any <...> tags
    duration_s: float | None  # intended duration


# The engine's contract: kind -> (reject_stage, reject_reason). Order is the order of expected.jsonl.
EXPECTED_VERDICT: dict[str, tuple[str | None, str | None]] = {
    "good": (None, None),
    "wrong_transcript": ("asr", "wer_above_threshold"),
    "malformed_annotation": ("annotation", "malformed_annotation"),
    "truncated": ("probe", "unreadable_container"),
    # Header intact, media data cut: decord fails to read the missing frames (av_read_frame), so the
    # clip is a decode failure. duration_mismatch (a header that overstates the data) has its own test.
    "truncated_faststart": ("decode", "decode_failed"),
    "zero_byte": ("probe", "unreadable_container"),
    "not_a_video": ("probe", "unreadable_container"),
    "audio_only": ("probe", "missing_video_track"),
    "video_only": ("probe", "missing_audio_track"),
    "too_short": ("probe", "duration_too_short"),
    "too_long": ("probe", "duration_too_long"),
    "tiny_resolution": ("probe", "resolution_too_low"),
    "noise_audio": ("noise", "excessive_noise"),
}
BAD_KINDS: tuple[str, ...] = tuple(EXPECTED_VERDICT)[2:]
_NO_SIDECAR = {"zero_byte", "not_a_video"}  # not media at all: an annotation beside them would be odd


@dataclass(frozen=True)
class _Plan:
    """Everything needed to render one clip, fixed up front so rendering order cannot change the set."""

    name: str
    kind: str
    expression: str
    sentence: str  # the sentence the clip is about (spoken unless the kind removes the speech)
    annotated: str
    voice: str
    pitch: int
    speed: int
    background: str
    size: tuple[int, int] = SIZE


# ---------------------------------------------------------------- planning


def _words(text: str) -> set[str]:
    return {w.strip(",.?!").lower() for w in text.split()}


def _overlap(a: str, b: str) -> float:
    wa, wb = _words(a), _words(b)
    return len(wa & wb) / len(wa | wb)


def _pick_wrong(spoken: str, rng: np.random.Generator) -> str:
    """A different sentence sharing as few words as possible with the spoken one (so WER is high)."""
    pool = [s for group in SENTENCES.values() for s in group if s != spoken]
    scores = np.array([_overlap(spoken, s) for s in pool])
    candidates = [s for s, score in zip(pool, scores, strict=True) if score <= scores.min() + 0.05]
    return candidates[int(rng.integers(len(candidates)))]


def _with_tag(text: str, expression: str, rng: np.random.Generator) -> str:
    tag = TAGS[expression][int(rng.integers(2))]
    return f"{tag} {text}" if rng.random() < 0.5 else f"{text} {tag}"


def _random_delivery(rng: np.random.Generator) -> tuple[str, int, int, str]:
    """(voice, pitch 30-70, speed 130-180 wpm, background colour name) for one clip."""
    voice = VOICES[int(rng.integers(len(VOICES)))]
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    return voice, int(rng.integers(30, 71)), int(rng.integers(130, 181)), background


def _sentence_stream(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    """(expression, sentence) pairs drawn without replacement, reshuffled each pass over the pool."""
    pool = [(emotion, s) for emotion, group in SENTENCES.items() for s in group]
    out: list[tuple[str, str]] = []
    while len(out) < count:
        out += [pool[i] for i in rng.permutation(len(pool))]
    return out[:count]


def _plan_set(n_good: int, n_wrong: int, seed: int, with_bad: bool) -> list[_Plan]:
    rng = np.random.default_rng(seed)
    kinds = ["good"] * n_good + ["wrong_transcript"] * n_wrong + (list(BAD_KINDS) if with_bad else [])
    counters: Counter[str] = Counter()
    plans = []
    for i, (kind, (expression, sentence)) in enumerate(zip(kinds, _sentence_stream(rng, len(kinds)), strict=True)):
        annotated = _pick_wrong(sentence, rng) if kind == "wrong_transcript" else sentence
        if i % TAG_EVERY == 1:
            annotated = _with_tag(annotated, expression, rng)
        name = f"{kind}_{counters[kind]:03d}.mp4"
        counters[kind] += 1
        size = TINY_SIZE if kind == "tiny_resolution" else SIZE
        plans.append(_Plan(name, kind, expression, sentence, annotated, *_random_delivery(rng), size))
    return plans


# ---------------------------------------------------------------- sidecar annotations


def _acoustic(plan: _Plan) -> str:
    text = f"Synthetic speech in {media.describe_voice(plan.voice, plan.pitch, plan.speed)}; "
    text += f"the delivery is {MOODS[plan.expression][0]}, over a faint steady background hiss."
    return text + (" A non-verbal sound is marked in the transcript." if "<" in plan.annotated else "")


def _annotation(plan: _Plan) -> dict[str, object]:
    """The official SABER six-field layout, templated from what was actually rendered."""
    tone, polarity, emotion = MOODS[plan.expression]
    face, body = media.DRAWN_LOOK[plan.expression]
    return {
        "video_desc": f"A drawn cartoon face on a plain {plan.background} background speaks to the camera; "
        "its mouth opens and closes with the words.",
        "audio_desc": {"speech_content": plan.annotated, "acoustic_feat": _acoustic(plan)},
        "facial_exp_desc": f"{face}.",
        "body_lang_desc": f"{body}; only the head is visible and there are no gestures.",
        "sentiment_analysis": f"The overall sentiment is {polarity}: the words, the {tone} voice "
        f"and the {plan.expression} face together point to {emotion}.",
    }


# ---------------------------------------------------------------- rendering


def _speak(plan: _Plan) -> np.ndarray:
    return synthesize_speech(plan.sentence, voice=plan.voice, pitch=plan.pitch, speed=plan.speed)


def _repeat_to(speech: np.ndarray, max_s: float, gap_s: float = 0.8) -> tuple[np.ndarray, int]:
    """The utterance said again and again with pauses, as long as it fits in max_s; returns (audio, times)."""
    gap = np.zeros(int(gap_s * media.SAMPLE_RATE), dtype=np.float32)
    times = max(1, int((max_s * media.SAMPLE_RATE + gap.size) // (speech.size + gap.size)))
    parts = [speech] + [np.concatenate([gap, speech]) for _ in range(times - 1)]
    return np.concatenate(parts), times


def _render_media(plan: _Plan, path: Path) -> tuple[str | None, float | None]:
    """Writes the clip's file; returns (spoken_text, intended duration)."""
    common = {
        "expression": plan.expression,
        "size": plan.size,
        "fps": FPS,
        "background": BACKGROUNDS[plan.background],
    }
    kind = plan.kind
    if kind == "zero_byte":
        path.write_bytes(b"")
        return None, None
    if kind == "not_a_video":
        path.write_text("This is a plain text file that only pretends to be a video.\n")
        return None, None
    if kind in {"too_short", "noise_audio"}:
        duration = 0.2 if kind == "too_short" else 3.0
        audio = "noise" if kind == "noise_audio" else "speech"
        write_clip(path, speech=None, duration_s=duration, audio=audio, **common)
        return None, duration
    speech = _speak(plan)
    spoken = plan.sentence
    if kind == "too_long":
        speech, times = _repeat_to(speech, 38.0)
        spoken = " ".join([plan.sentence] * times)
        write_clip(path, speech=speech, duration_s=40.0, **common)
        return spoken, 40.0
    write_clip(
        path,
        speech=speech,
        audio="none" if kind == "video_only" else "speech",
        video=kind != "audio_only",
        faststart=kind == "truncated_faststart",
        **common,
    )
    if kind in {"truncated", "truncated_faststart"}:
        os.truncate(path, path.stat().st_size // 2)
    return (None if kind == "video_only" else spoken), media.natural_duration(speech, FPS)


def _write_sidecar(plan: _Plan, out_dir: Path) -> None:
    if plan.kind in _NO_SIDECAR:
        return
    text = json.dumps(_annotation(plan), indent=2)
    if plan.kind == "malformed_annotation":
        text = text[: len(text) // 2]  # cut mid-object: what an interrupted upload leaves behind
    (out_dir / Path(plan.name).with_suffix(".json")).write_text(text)


def _render(plan: _Plan, out_dir: Path) -> PlantedClip:
    spoken, duration = _render_media(plan, out_dir / plan.name)
    _write_sidecar(plan, out_dir)
    stage, reason = EXPECTED_VERDICT[plan.kind]
    annotated = None if plan.kind in _NO_SIDECAR else plan.annotated
    return PlantedClip(plan.name, plan.kind, stage, reason, spoken, annotated, duration)


# ---------------------------------------------------------------- cache and entry points


def _params(n_good: int, n_wrong: int, seed: int, with_bad: bool) -> dict[str, object]:
    return dict(version=GENERATOR_VERSION, n_good=n_good, n_wrong=n_wrong, seed=seed, with_bad=with_bad)


def _cached(out_dir: Path, params: dict[str, object]) -> list[PlantedClip] | None:
    """The recorded set if it was generated with these params and its files are all still there."""
    params_path, expected_path = out_dir / PARAMS_FILE, out_dir / EXPECTED_FILE
    if not (params_path.is_file() and expected_path.is_file()):
        return None
    try:
        if json.loads(params_path.read_text()) != params:
            return None
        clips = load_expected(out_dir)
    except (json.JSONDecodeError, TypeError):  # a damaged record is a miss: regenerate, don't fail
        return None
    return clips if all((out_dir / c.name).exists() for c in clips) else None


def _clear_previous(out_dir: Path) -> None:
    """Removes files an earlier (different) run planted, so the engine never sees a stale extra clip.

    Only names this generator produces are touched: out_dir may hold files that are not ours.
    """
    for name in (PARAMS_FILE, EXPECTED_FILE):
        (out_dir / name).unlink(missing_ok=True)
    for kind in EXPECTED_VERDICT:
        for path in out_dir.glob(f"{kind}_[0-9][0-9][0-9].*"):
            if path.suffix in {".mp4", ".json"}:
                path.unlink()


def _write_expected(out_dir: Path, clips: Sequence[PlantedClip], params: dict[str, object]) -> None:
    lines = "".join(json.dumps(asdict(c)) + "\n" for c in clips)
    (out_dir / EXPECTED_FILE).write_text(lines)
    # params.json goes last: its presence marks a complete set, so an interrupted run is not a cache hit.
    (out_dir / PARAMS_FILE).write_text(json.dumps(params, indent=2) + "\n")


def load_expected(out_dir: Path) -> list[PlantedClip]:
    """The planted ground truth recorded in out_dir/expected.jsonl, in generation order."""
    lines = (Path(out_dir) / EXPECTED_FILE).read_text().splitlines()
    return [PlantedClip(**json.loads(line)) for line in lines if line.strip()]


def generate_demo_set(
    out_dir: Path, n_good: int = 48, n_wrong: int = 12, seed: int = 0, with_bad: bool = True
) -> list[PlantedClip]:
    """Writes the demo clips, their sidecars and expected.jsonl into out_dir; returns the planted clips.

    Deterministic for a seed, and cached: if out_dir already holds a complete set generated with the
    same arguments, it is returned without touching any file.
    """
    if n_good < 0 or n_wrong < 0:
        raise ValueError(f"n_good={n_good}, n_wrong={n_wrong}: counts must be >= 0")
    out_dir = Path(out_dir)
    params = _params(n_good, n_wrong, seed, with_bad)
    cached = _cached(out_dir, params)
    if cached is not None:
        return cached
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous(out_dir)
    plans = _plan_set(n_good, n_wrong, seed, with_bad)
    # The heavy lifting happens in espeak-ng and ffmpeg subprocesses, so threads overlap them well.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        clips = list(pool.map(lambda plan: _render(plan, out_dir), plans))
    _write_expected(out_dir, clips, params)
    counts = ", ".join(f"{k}={v}" for k, v in Counter(c.kind for c in clips).items())
    log.info("demo set: %d clips in %s (%s)", len(clips), out_dir, counts)
    return clips
