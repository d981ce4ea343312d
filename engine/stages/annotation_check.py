"""Reads a clip's given annotation (sidecar or manifest) and validates it against the SABER layout."""

from __future__ import annotations

from engine.core import storage
from engine.core.media import MediaError
from engine.models.annotation import AnnotationError, parse_annotation
from engine.stages.base import Row, RowStage


class AnnotationCheckStage(RowStage):
    """Clips without an annotation pass with empty fields (a later stage annotates them)."""

    name = "annotation"
    requires = ("annotation_raw", "annotation_uri")
    produces = ("video_desc", "speech_content", "acoustic_feat", "facial_exp_desc", "body_lang_desc",
                "sentiment_analysis", "annotation_source")

    def process_row(self, row: Row) -> None:
        text, source = row["annotation_raw"], "manifest"
        if text is None and row["annotation_uri"]:
            text, source = self._read_sidecar(row["annotation_uri"]), "sidecar"
        if text is None:
            return
        try:
            fields = parse_annotation(text)
        except AnnotationError as err:
            raise MediaError("malformed_annotation", str(err)) from None
        row.update(fields, annotation_source=source)

    @staticmethod
    def _read_sidecar(uri: str) -> str:
        fs = storage.filesystem(uri)
        try:
            with fs.open(storage.strip_protocol(uri), "rb") as handle:
                return handle.read().decode("utf-8")
        except UnicodeDecodeError as err:
            raise MediaError("malformed_annotation", f"sidecar is not UTF-8: {err}") from None
