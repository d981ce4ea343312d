"""Structured Evidence Decomposition (SED): the one serialisation of Y = [E_v, E_a, R] (paper Eq. 1).

SFT targets, sampling prompts, judging and evaluation all go through this module, so the format the model
learns is the format every later stage parses. Order (DESIGN.md): visual evidence, acoustic evidence,
reasoning. Headings are plain text so they survive any tokenizer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from engine.core.text import strip_sound_events

VISUAL, ACOUSTIC, REASONING = "Visual evidence", "Acoustic evidence", "Reasoning"
SECTIONS = (VISUAL, ACOUSTIC, REASONING)
FORMAT_VERSION = "sed-v1"

SYSTEM_PROMPT = (
    "You are an expert in multimodal emotion analysis. You watch a video clip and listen to its separate "
    "audio track, describe the evidence each modality gives, then reason from that evidence to the emotion."
)

USER_PROMPT = {
    "en": (
        "Analyse the emotion of the person in this clip. First describe the visual evidence (the scene, "
        "facial expression and body language), then the acoustic evidence (what is said and how it sounds: "
        "tone, pitch, pace, intensity). Finally reason from both to the person's emotional state, noting "
        "whether the visual and acoustic cues agree or conflict. Use the headings "
        f"'## {VISUAL}', '## {ACOUSTIC}' and '## {REASONING}'."
    ),
    "zh": (
        "请分析视频中人物的情绪。先描述视觉证据（场景、面部表情、肢体语言），再描述声学证据（说话内容及语气、音调、"
        "语速、强度），最后综合两者推理人物的情绪状态，并指出视觉与声学线索是否一致。请使用标题"
        f"'## {VISUAL}'、'## {ACOUSTIC}' 和 '## {REASONING}'。"
    ),
}

SED_SCHEMA = pa.schema([(name, pa.string()) for name in (
    "clip_id", "source_uri", "source_video", "dataset", "lang", "system", "prompt", "target", "format_version")])

_HEADING = re.compile(r"^##\s*(Visual evidence|Acoustic evidence|Reasoning)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class SedSections:
    visual: str
    acoustic: str
    reasoning: str


class SedFormatError(ValueError):
    """A response that does not have the three SED sections in order."""


def build_sed_target(fields: dict[str, Any]) -> str:
    """The assistant target from the six SABER annotation fields (flattened clip columns)."""
    speech = " ".join(strip_sound_events(fields["speech_content"] or "").split())
    events = re.findall(r"<([^<>]+)>", fields["speech_content"] or "")
    speech_line = f'Speech: "{speech}"' if speech else "Speech: none"
    if events:
        speech_line += f" (non-speech sounds: {', '.join(e.strip() for e in events)})"
    visual = "\n".join([f"Scene: {fields['video_desc']}", f"Face: {fields['facial_exp_desc']}",
                        f"Body: {fields['body_lang_desc']}"])
    acoustic = "\n".join([speech_line, f"Delivery: {fields['acoustic_feat']}"])
    return render_sections(SedSections(visual, acoustic, fields["sentiment_analysis"]))


def render_sections(sections: SedSections) -> str:
    return (f"## {VISUAL}\n{sections.visual.strip()}\n\n## {ACOUSTIC}\n{sections.acoustic.strip()}\n\n"
            f"## {REASONING}\n{sections.reasoning.strip()}")


def parse_sed_response(text: str) -> SedSections:
    """Strict parse: exactly the three headings, in order, each with a non-empty body."""
    found = [(m.group(1), m.start(), m.end()) for m in _HEADING.finditer(text)]
    names = [name for name, _, _ in found]
    if names != list(SECTIONS):
        raise SedFormatError(f"expected sections {list(SECTIONS)} in order, found {names}")
    bodies = []
    for i, (name, _, end) in enumerate(found):
        stop = found[i + 1][1] if i + 1 < len(found) else len(text)
        body = text[end:stop].strip()
        if not body:
            raise SedFormatError(f"section {name!r} is empty")
        bodies.append(body)
    return SedSections(*bodies)


def user_prompt(lang: str | None) -> str:
    return USER_PROMPT["zh" if (lang or "en").lower().startswith("zh") else "en"]


def sed_record(row: dict[str, Any]) -> dict[str, Any]:
    """One SFT chat record for a kept, annotated clip: media references, instruction and target."""
    return {
        "clip_id": row["clip_id"],
        "source_uri": row["source_uri"],
        "source_video": row.get("source_video") or row["source_uri"],
        "dataset": row.get("dataset"),
        "lang": row.get("lang"),
        "system": SYSTEM_PROMPT,
        "prompt": user_prompt(row.get("lang")),
        "target": build_sed_target(row),
        "format_version": FORMAT_VERSION,
    }
