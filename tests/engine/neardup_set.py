"""A generated near-duplicate set: base clips (espeak-ng speech, a drawn face, ffmpeg) and copies of each made the way
corpora copy footage - re-encoded to other codecs, bitrates and containers, rescaled, cropped by up to 10%, trimmed by
up to 0.5 s - plus unrelated clips that are hard to tell apart: the same sentence in another voice, and another
sentence in the same voice (every clip shows the same drawn face). Cached under the tests' CACHE like the demo sets:
generation is deterministic for VERSION."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from engine.devkit.demo_media import EXPRESSIONS, synthesize_speech, write_clip

VERSION = 2
REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SABER_TEST_CACHE", REPO / ".cache" / "test_clips")) / f"neardup-v{VERSION}"

# (sentence, voice, pitch, speed): each base clip's speech. The last two are unrelated clips that share something
# with a base clip: base 0's sentence in another voice, base 1's voice with another sentence.
BASES = (
    ("I can't believe you did that to me again.", "en-us", 50, 160),
    ("The weather is lovely this afternoon, isn't it?", "en-gb-x-rp", 30, 140),
    ("Please put the red book back on the shelf.", "en-us+f3", 70, 170),
    ("We should leave before the traffic gets worse.", "en-us+m1", 40, 150),
    ("Nobody told me that the meeting was cancelled.", "en-us+f2", 60, 175),
    ("My brother bought a new car last week.", "en-us+m2", 20, 130),
)
UNRELATED = (
    ("I can't believe you did that to me again.", "en-us+f2", 65, 150),
    ("Could you tell me where the station is?", "en-gb-x-rp", 30, 140),
)
# name -> (ffmpeg input options, output options, suffix): every copy is decoded and encoded again.
# The fastest encoder settings (x264 ultrafast, VP9 realtime at cpu-used 8): generation is what a cold cache pays.
X264 = ("-c:v", "libx264", "-preset", "ultrafast")
COPIES: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "vp9_opus": ((), ("-c:v", "libvpx-vp9", "-b:v", "120k", "-deadline", "realtime", "-cpu-used", "8", "-c:a",
                      "libopus", "-b:a", "24k"), ".webm"),
    "half_size_mpeg4": ((), ("-vf", "scale=160:120", "-c:v", "mpeg4", "-q:v", "10", "-c:a", "libmp3lame", "-b:a",
                             "48k"), ".avi"),
    "upscaled": ((), ("-vf", "scale=480:360", *X264, "-crf", "30", "-c:a", "aac", "-b:a", "48k"), ".mov"),
    "crop10": ((), ("-vf", "crop=iw*0.9:ih*0.9:iw*0.02:ih*0.08", *X264, "-c:a", "aac"), ".mp4"),
    "trim_start": (("-ss", "0.5"), (*X264, "-c:a", "aac", "-b:a", "96k"), ".mkv"),
    "trim_end_crop5": ((), ("-t", "{end}", "-vf", "crop=iw*0.95:ih*0.95:0:0,scale=320:240", *X264, "-c:a", "aac"),
                       ".mp4"),
}


@dataclass(frozen=True)
class SetClip:
    path: Path
    group: str  # clips of one group are copies of each other; an unrelated clip is a group of its own


def _duration(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def _copy(base: Path, name: str, out: Path) -> Path:
    before, after, suffix = COPIES[name]
    target = out / f"{base.stem}_{name}{suffix}"
    if not target.exists():
        after = tuple(arg.format(end=f"{_duration(base) - 0.4:.2f}") for arg in after)
        staged = target.with_name(f".tmp_{target.name}")
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *before, "-i", str(base), *after,
                        "-map_metadata", "-1", str(staged)], check=True)
        os.replace(staged, target)
    return target


def _base(index: int, speech: tuple[str, str, int, int], out: Path, prefix: str) -> Path:
    path = out / f"{prefix}{index}.mp4"
    if not path.exists():
        sentence, voice, pitch, speed = speech
        write_clip(path, speech=synthesize_speech(sentence, voice, pitch, speed),
                   expression=EXPRESSIONS[index % len(EXPRESSIONS)])
    return path


def _group(index: int, speech: tuple[str, str, int, int], out: Path) -> list[SetClip]:
    base = _base(index, speech, out, "base")
    return [SetClip(base, f"base{index}"), *(SetClip(_copy(base, name, out), f"base{index}") for name in COPIES)]


def generate(out: Path = CACHE) -> list[SetClip]:
    """Every clip of the set (generated once, then read from `out`)."""
    out.mkdir(parents=True, exist_ok=True)
    # espeak-ng and ffmpeg run as subprocesses: two groups at a time keep both cores busy.
    with ThreadPoolExecutor(max_workers=2) as pool:
        groups = list(pool.map(lambda item: _group(*item, out), enumerate(BASES)))
    clips = [clip for group in groups for clip in group]
    clips += [SetClip(_base(i, speech, out, "other"), f"other{i}") for i, speech in enumerate(UNRELATED)]
    (out / "set.json").write_text(json.dumps([[c.path.name, c.group] for c in clips]))
    return clips
