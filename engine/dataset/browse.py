"""The data browser (issue 15, part 3): a local web page over a build's outputs, local or `s3://`, read-only on the
data. `python jobs/browse.py OUT` serves it; `create_app` is the Flask app the tests drive.

What it shows: every clip of `clips/` (kept and rejected, with stage, reason and detail), filtered by status, stage,
reason, corpus (`dataset`), language, emotion (the unified `emotion`, else the corpus `label`) and the relation
judge's verdict (`relations/`: consistent, inconsistent, failed, or none). One clip: a few frames decoded now from
its source (engine.core.media, in the media child process of engine.core.isolation, so a clip that crashes the
decoder costs a 422, not the server), its audio as a WAV (the same decode: 16 kHz mono, on the video's clock, as the
build's stages heard it), the six annotation fields, the ASR transcript against the annotated speech after the WER
normaliser (engine.core.text) with the differences marked, the description, the scores and the provenance.

Curation: keep / drop / note marks are appended to a JSON Lines file (default OUT/curation.jsonl, or any path; the
format, its reader and `apply_curation` for the next build are engine.dataset.curation's). Nothing else is ever
written.

Why Flask: synchronous like the code it calls (pyarrow reads, PyAV decodes, the media child's blocking pipe),
a test client without a server, Werkzeug's threaded server is enough for one person on loopback, and it is
already in the lock (moto's server mode). Writes accept only JSON bodies (a cross-site form cannot post one
without a CORS preflight, which this server never answers) and requests must name a loopback Host when bound to
loopback (DNS rebinding).
"""

from __future__ import annotations

import difflib
import json
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from flask import Flask, abort, jsonify, request, send_from_directory

from engine.core import media, storage
from engine.core.schema import ANNOTATION_FIELDS, AUDIO_SAMPLE_RATE
from engine.core.text import is_chinese, normalise, strip_sound_events
from engine.dataset.curation import (
    CurationMark,
    append_mark,
    check_curation_path,
    default_curation_path,
    json_or_text,
    read_curation,
    read_marks,
)
from engine.dataset.holdout import latest_verdicts, read_relations
from engine.dataset.writer import read_clip_table
from engine.models.backends.media_parts import wav_bytes

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("browse_static")
FILTERS = ("status", "stage", "reason", "dataset", "lang", "emotion", "relation")
PAGE_SIZE = 500  # clips a list answer holds (offset/limit page through the rest)
NONE = "(none)"  # the filter value of a null field
# Columns a clip's page does not show: binary fingerprints (engine.dataset.neardup).
HIDDEN = frozenset({"frame_hashes", "audio_fingerprint"})
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


# ---- the build ----------------------------------------------------------------------------------------------
@dataclass
class Build:
    """A build's clips/ rows by id (in table order), each clip's latest relation verdict, and report.json."""

    output: str
    clips: dict[str, dict[str, Any]]
    relations: dict[str, dict[str, Any]]
    report: dict[str, Any] | None


def load_build(output: str) -> Build:
    output = storage.absolute(output)
    table = read_clip_table(output)
    if not table.num_rows:
        raise FileNotFoundError(f"no clips/ part files under {output}: not a build_saber output (or nothing written "
                                "yet)")
    columns = [name for name in table.column_names if name not in HIDDEN]
    clips = {row["clip_id"]: row for row in table.select(columns).to_pylist()}
    return Build(output, clips, latest_verdicts(read_relations(output)), _read_report(output))


def _read_report(output: str) -> dict[str, Any] | None:
    fs, path = storage.filesystem(output), storage.strip_protocol(storage.join(output, "report.json"))
    try:
        with fs.open(path, "rb") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        return None


def relation_of(build: Build, clip_id: str) -> str | None:
    """consistent | inconsistent (the judge's verdict), failed (the judge's answer unusable), None (not judged)."""
    verdict = build.relations.get(clip_id)
    if verdict is None:
        return None
    return verdict["av_relation"] if verdict["verdict"] == "ok" else "failed"


def facts(build: Build, row: Mapping[str, Any]) -> dict[str, str | None]:
    """The values the filters match, one per FILTERS name."""
    return {"status": row["status"], "stage": row["reject_stage"], "reason": row["reject_reason"],
            "dataset": row["dataset"], "lang": row["lang"], "emotion": row.get("emotion") or row.get("label"),
            "relation": relation_of(build, row["clip_id"])}


def facets(build: Build) -> dict[str, dict[str, int]]:
    """For each filter, its values with their clip counts (null as NONE), most frequent first."""
    counts: dict[str, Counter[str]] = {name: Counter() for name in FILTERS}
    for row in build.clips.values():
        for name, value in facts(build, row).items():
            counts[name][NONE if value is None else value] += 1
    return {name: dict(counter.most_common()) for name, counter in counts.items()}


def filter_clips(build: Build, query: Mapping[str, str]) -> list[dict[str, Any]]:
    """Summaries of the clips matching every given filter (NONE matches null); unknown filters raise ValueError."""
    unknown = sorted(set(query) - set(FILTERS))
    if unknown:
        raise ValueError(f"unknown filters {unknown}; known: {list(FILTERS)}")
    wanted = {name: value for name, value in query.items() if value != ""}
    out = []
    for row in build.clips.values():
        values = facts(build, row)
        if all((values[name] or NONE) == value for name, value in wanted.items()):
            out.append({"clip_id": row["clip_id"], "source_uri": row["source_uri"],
                        "duration_s": row["duration_s"], "reject_detail": row["reject_detail"], **values})
    return out


def clip_detail(build: Build, clip_id: str) -> dict[str, Any]:
    row = build.clips[clip_id]
    speech = row["speech_content"] or ""
    return {
        "row": {key: _jsonable(value) for key, value in row.items()},
        "annotation": {name: row[name] for name in ANNOTATION_FIELDS},
        "transcript": transcript_diff(speech, row["asr_text"] or "", row["lang"]) if row["asr_text"] else None,
        "provenance": json_or_text(row["provenance"]),
        "corpus_extras": json_or_text(row["corpus_extras"]),
        "relation": {k: _jsonable(v) for k, v in build.relations[clip_id].items()}
        if clip_id in build.relations else None,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


# ---- the transcript against the annotated speech ------------------------------------------------------------
def transcript_diff(annotated: str, asr: str, lang: str | None) -> dict[str, Any]:
    """Both texts through the WER normaliser (sound events `<...>` stripped first, as the asr stage does), then a
    word diff (character diff for Chinese, the CER unit): a list of ops {op: equal|replace|delete|insert, ref: the
    annotated words, hyp: the transcript's}."""
    ref, hyp = normalise(strip_sound_events(annotated), lang), normalise(asr, lang)
    split = list if is_chinese(ref + hyp, lang) else str.split
    ref_units, hyp_units = split(ref), split(hyp)
    joiner = "" if split is list else " "
    matcher = difflib.SequenceMatcher(a=ref_units, b=hyp_units, autojunk=False)
    ops = [{"op": tag, "ref": joiner.join(ref_units[i1:i2]), "hyp": joiner.join(hyp_units[j1:j2])}
           for tag, i1, i2, j1, j2 in matcher.get_opcodes()]
    return {"ref": ref, "hyp": hyp, "ops": ops, "equal": ref_units == hyp_units}


# ---- media --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreviewSettings:
    frames: int = 6
    max_side: int = 360
    jpeg_quality: int = 85
    timeout_s: float = 60.0


class MediaCache:
    """Decoded previews of the last few clips opened (the page asks for the frames, then each JPEG, then the WAV:
    one decode). The decode runs in the media child (engine.core.isolation)."""

    def __init__(self, settings: PreviewSettings, size: int = 8) -> None:
        self.settings = settings
        self.size = size
        self._items: OrderedDict[str, media.EncodedClip | media.MediaError] = OrderedDict()
        self._lock = threading.Lock()
        self._native = media.NativeCalls(stage="browse", isolation="process", timeout_s=settings.timeout_s,
                                         attempts=1)

    def get(self, clip_id: str, source_uri: str) -> media.EncodedClip:
        with self._lock:
            item = self._items.get(clip_id)
        if item is None:
            item = self._decode(source_uri)
            with self._lock:
                self._items[clip_id] = item
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        if isinstance(item, media.MediaError):
            raise item
        return item

    def _decode(self, uri: str) -> media.EncodedClip | media.MediaError:
        s = self.settings
        try:
            source = media.open_source(uri)
            probed = self._native.run(uri, "engine.core.media.probe", source)
            # Half a frame over, so that floor(duration * fps) in media.sample_times gives `frames`, not one less.
            fps = (s.frames + 0.5) / max(probed.duration_s or 1.0, 0.1)
            return self._native.run(uri, "engine.core.media.decode_encoded", "engine.core.media.decode", source,
                                    probed, fps=fps, max_frames=s.frames, max_side=s.max_side,
                                    sample_rate=AUDIO_SAMPLE_RATE, jpeg_quality=s.jpeg_quality)
        except media.MediaError as err:
            return err
        except FileNotFoundError as err:
            return media.MediaError("missing_source", str(err))


# ---- the web app ---------------------------------------------------------------------------------------------
def create_app(output: str, curation: str | None = None, preview: PreviewSettings | None = None,
               loopback_only: bool = True) -> Flask:
    """The browser over `output`. Marks go to `curation` (default OUT/curation.jsonl)."""
    build = load_build(output)
    curation = curation or default_curation_path(output)
    check_curation_path(build.output, curation)
    previews = MediaCache(preview or PreviewSettings())
    app = Flask(__name__, static_folder=None)
    app.json.sort_keys = False  # columns and annotation fields in the schema's order
    app.config.update(BUILD=build, CURATION=curation, PREVIEWS=previews, LOOPBACK_ONLY=loopback_only)
    _routes(app, build, curation, previews)
    log.info("browsing %s: %d clips, %d relation verdicts; curation marks go to %s", build.output,
             len(build.clips), len(build.relations), curation)
    return app


def _routes(app: Flask, build: Build, curation: str, previews: MediaCache) -> None:
    @app.before_request
    def _loopback_host() -> None:
        if app.config["LOOPBACK_ONLY"] and _hostname(request.host) not in LOOPBACK:
            abort(403, f"Host {request.host!r} is not loopback")

    @app.get("/")
    def index():  # noqa: ANN202 - Flask views
        return send_from_directory(STATIC, "index.html")

    @app.get("/static/<path:name>")
    def static_file(name: str):  # noqa: ANN202
        return send_from_directory(STATIC, name)

    @app.get("/api/summary")
    def summary():  # noqa: ANN202
        return jsonify(output=build.output, clips=len(build.clips), curation=curation, report=build.report,
                       facets=facets(build), filters=list(FILTERS))

    @app.get("/api/clips")
    def clips():  # noqa: ANN202
        query = request.args.to_dict()
        try:
            offset, limit = int(query.pop("offset", 0)), int(query.pop("limit", PAGE_SIZE))
            found = filter_clips(build, query)
        except ValueError as err:
            return jsonify(error=str(err)), 400
        return jsonify(total=len(found), offset=offset, clips=found[offset:offset + limit])

    @app.get("/api/clips/<clip_id>")
    def clip(clip_id: str):  # noqa: ANN202
        _known(build, clip_id)
        decisions = read_curation(curation)
        return jsonify(**clip_detail(build, clip_id), curation=asdict(decisions[clip_id])
                       if clip_id in decisions else None)

    @app.get("/api/clips/<clip_id>/frames")
    def frames(clip_id: str):  # noqa: ANN202
        decoded = _preview(build, previews, clip_id)
        if isinstance(decoded, tuple):
            return decoded
        return jsonify(count=len(decoded.frames_jpeg), times=[round(t, 3) for t in decoded.frame_times],
                       decoder=decoded.decoder, video_duration_s=decoded.video_duration_s,
                       audio_duration_s=decoded.audio_duration_s, audio_offset_s=decoded.audio_offset_s)

    @app.get("/api/clips/<clip_id>/frames/<int:index>.jpg")
    def frame(clip_id: str, index: int):  # noqa: ANN202
        decoded = _preview(build, previews, clip_id)
        if isinstance(decoded, tuple) or not 0 <= index < len(decoded.frames_jpeg):
            abort(404)
        return app.response_class(decoded.frames_jpeg[index], mimetype="image/jpeg")

    @app.get("/api/clips/<clip_id>/audio.wav")
    def audio(clip_id: str):  # noqa: ANN202
        decoded = _preview(build, previews, clip_id)
        if isinstance(decoded, tuple):
            return decoded
        return app.response_class(wav_bytes(decoded.audio_pcm), mimetype="audio/wav")

    @app.get("/api/curation")
    def marks():  # noqa: ANN202
        return jsonify(path=curation, marks=[asdict(m) for m in read_marks(curation)])

    @app.post("/api/clips/<clip_id>/curation")
    def mark(clip_id: str):  # noqa: ANN202
        _known(build, clip_id)
        if not request.is_json:  # a cross-site form cannot send JSON without a preflight we never answer
            return jsonify(error="send the mark as application/json"), 415
        body = request.get_json()
        try:
            new = CurationMark(clip_id, body.get("action"), str(body.get("note") or ""),
                               build.clips[clip_id]["source_uri"])
        except ValueError as err:
            return jsonify(error=str(err)), 400
        append_mark(curation, new)
        return jsonify(mark=asdict(new), curation=asdict(read_curation(curation)[clip_id])), 201


def _hostname(host: str) -> str:
    """'127.0.0.1:8765' -> '127.0.0.1', '[::1]:8765' -> '[::1]'."""
    return host.split("]", 1)[0] + "]" if host.startswith("[") else host.rsplit(":", 1)[0]


def _known(build: Build, clip_id: str) -> None:
    if clip_id not in build.clips:
        abort(404, f"no clip {clip_id} in {build.output}")


def _preview(build: Build, previews: MediaCache, clip_id: str) -> media.EncodedClip | tuple[Any, int]:
    _known(build, clip_id)
    try:
        return previews.get(clip_id, build.clips[clip_id]["source_uri"])
    except media.MediaError as err:
        return jsonify(error=err.reason, detail=err.detail), 422
