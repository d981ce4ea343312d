"""Clips shaped like the corpora's, for benchmarks: H.264 1280x720 at 30 fps (ffmpeg's moving testsrc2 pattern under
temporal grain, so the encoder and decoder work as on camera footage), AAC 48 kHz stereo, 3-8 s of espeak-ng speech
with room tone, and a SABER sidecar annotation beside each; `expected.jsonl` records every clip as one to keep
(engine.devkit.demo_data's PlantedClip, so load_expected reads it). Deterministic for a seed, and cached like the demo
set: a rerun with the same arguments touches nothing.

    clips = generate_realistic_set(Path(".cache/realistic_clips"), count=60)
    python -m engine.devkit.realistic_clips --count 60 --out .cache/realistic_clips
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.devkit.demo_containers import AudioInput, write_pattern_clip, write_wav_channels
from engine.devkit.demo_content import MOODS, SENTENCES, VOICES
from engine.devkit.demo_data import EXPECTED_FILE, PARAMS_FILE, PlantedClip, load_expected
from engine.devkit.demo_media import dbfs_to_rms, describe_voice, synthesize_speech

GENERATOR_VERSION = 1  # bump when the rendered content changes, so old caches are regenerated
SIZE = (1280, 720)
FPS = 30
SAMPLE_RATE = 48_000
CHANNELS = 2
# Drawn inside 3-8 s with a margin: AAC priming and the last frame's length put the container's duration a few
# hundredths of a second past the planned one.
MIN_S, MAX_S = 3.1, 7.9
PAD_S = 0.3  # room tone before the first and after the last word
GAP_S = 0.6  # between repeats of the sentence
GRAIN = 10  # ffmpeg noise strength (0-100): sensor grain that changes every frame
# A camera's bitrate for 720p (about 4 Mbit/s at most): unbounded, the grain alone would take 16 Mbit/s.
CODEC_ARGS = ("-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-maxrate", "4M", "-bufsize", "8M",
              "-pix_fmt", "yuv420p",
              "-c:a", "aac", "-b:a", "128k", "-ar", str(SAMPLE_RATE), "-ac", str(CHANNELS))


@dataclass(frozen=True)
class _Plan:
    name: str
    expression: str
    sentence: str
    voice: str
    pitch: int
    speed: int
    duration_s: float  # planned; the speech is repeated to fill it and padded with room tone
    seed: int  # of the grain and the room tone


def _plan_set(count: int, seed: int) -> list[_Plan]:
    rng = np.random.default_rng(seed)
    plans = []
    for i in range(count):
        expression = str(rng.choice(sorted(SENTENCES)))
        plans.append(_Plan(
            name=f"real_{i:03d}.mp4", expression=expression,
            sentence=str(rng.choice(SENTENCES[expression])), voice=str(rng.choice(VOICES)),
            pitch=int(rng.integers(35, 66)), speed=int(rng.integers(140, 176)),
            duration_s=round(float(rng.uniform(MIN_S, MAX_S)), 2), seed=int(rng.integers(0, 2**31 - 1))))
    return plans


def _soundtrack(plan: _Plan) -> tuple[np.ndarray, str]:
    """(samples, 2) float audio exactly plan.duration_s long, and the words said: the sentence as many times as fit
    (at least once: a clip too short for one saying is lengthened, within MAX_S), then room tone to the end."""
    speech = synthesize_speech(plan.sentence, plan.voice, plan.pitch, plan.speed, sample_rate=SAMPLE_RATE)
    gap, pad = int(GAP_S * SAMPLE_RATE), int(PAD_S * SAMPLE_RATE)
    total = max(int(plan.duration_s * SAMPLE_RATE), min(speech.size + 2 * pad, int(MAX_S * SAMPLE_RATE)))
    times = max(1, (total - 2 * pad + gap) // (speech.size + gap))
    said = np.concatenate([speech] + [np.concatenate([np.zeros(gap, np.float32), speech]) for _ in range(times - 1)])
    said = said[: total - 2 * pad]  # only when one saying is longer than MAX_S allows
    rng = np.random.default_rng(plan.seed)
    mono = np.zeros(total, np.float32)
    mono[pad: pad + said.size] = said
    tone = rng.normal(0.0, dbfs_to_rms(-50.0), (total, CHANNELS)).astype(np.float32)
    stereo = np.stack([mono, 0.8 * mono], axis=1) + tone  # the voice a little left of centre
    return stereo, " ".join([plan.sentence] * times)


def _annotation(plan: _Plan, spoken: str) -> dict[str, object]:
    tone, polarity, emotion = MOODS[plan.expression]
    return {
        "video_desc": "A moving colour test pattern with a sweeping gradient and counters, under fine grain.",
        "audio_desc": {"speech_content": spoken,
                       "acoustic_feat": f"Synthetic speech in {describe_voice(plan.voice, plan.pitch, plan.speed)}; "
                                        f"the delivery is {tone}, over faint room tone."},
        "facial_exp_desc": "No face is visible.",
        "body_lang_desc": "No person is visible.",
        "sentiment_analysis": f"The overall sentiment is {polarity}: the words and the {tone} voice point to "
                              f"{emotion}.",
    }


def _render(plan: _Plan, out_dir: Path) -> PlantedClip:
    audio, spoken = _soundtrack(plan)
    duration = audio.shape[0] / SAMPLE_RATE
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".tmp_real_") as tmp:
        wav = Path(tmp) / "speech.wav"
        write_wav_channels(wav, audio, SAMPLE_RATE)
        write_pattern_clip(out_dir / plan.name, duration_s=duration, size=SIZE, fps=FPS, codec_args=CODEC_ARGS,
                           audio=[AudioInput(wav)],
                           video_filter=f"noise=alls={GRAIN}:allf=t+u:all_seed={plan.seed % 2**31}")
    (out_dir / Path(plan.name).with_suffix(".json")).write_text(json.dumps(_annotation(plan, spoken), indent=2))
    return PlantedClip(plan.name, "good", None, None, spoken, spoken, round(duration, 3))


def _params(count: int, seed: int) -> dict[str, object]:
    return {"generator": "realistic", "version": GENERATOR_VERSION, "count": count, "seed": seed}


def _cached(out_dir: Path, params: dict[str, object]) -> list[PlantedClip] | None:
    try:
        if json.loads((out_dir / PARAMS_FILE).read_text()) != params:
            return None
        clips = load_expected(out_dir)
    except (FileNotFoundError, json.JSONDecodeError, TypeError):  # missing or damaged: regenerate, don't fail
        return None
    return clips if all((out_dir / clip.name).exists() for clip in clips) else None


def generate_realistic_set(out_dir: Path, count: int = 60, seed: int = 0) -> list[PlantedClip]:
    """Writes `count` clips (real_000.mp4 ...), their sidecars, expected.jsonl and params.json into out_dir;
    returns the clips. Files of an earlier set with other arguments are replaced, other files left alone."""
    if count < 1:
        raise ValueError(f"count={count}: must be >= 1")
    out_dir = Path(out_dir)
    params = _params(count, seed)
    cached = _cached(out_dir, params)
    if cached is not None:
        return cached
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PARAMS_FILE).unlink(missing_ok=True)  # written last: its presence marks a complete set
    for old in out_dir.glob("real_[0-9][0-9][0-9].*"):
        old.unlink()
    # espeak-ng and ffmpeg do the work in subprocesses, so threads overlap them.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        clips = list(pool.map(lambda plan: _render(plan, out_dir), _plan_set(count, seed)))
    (out_dir / EXPECTED_FILE).write_text("".join(json.dumps(asdict(clip)) + "\n" for clip in clips))
    (out_dir / PARAMS_FILE).write_text(json.dumps(params, indent=2) + "\n")
    return clips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=60, help="clips to write")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same clips")
    parser.add_argument("--out", type=Path, default=Path(".cache/realistic_clips"), help="folder for the clips")
    args = parser.parse_args(argv)
    clips = generate_realistic_set(args.out, args.count, args.seed)
    print(f"{len(clips)} clips in {args.out}, {sum(c.duration_s or 0 for c in clips):.1f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
