"""Consistency of an independent video description with the clip's annotation (paper's second check)."""

from __future__ import annotations

from engine.core.config import ConsistencyConfig
from engine.core.media import MediaError
from engine.core.schema import is_alive
from engine.models.backends.embeddings import SentenceEmbedder
from engine.stages.base import Row, RowStage


def annotation_visual_text(row: Row) -> str:
    """What a video-only describer can confirm: scene, face and body (speech and sound it cannot hear)."""
    return " ".join(row[k] or "" for k in ("video_desc", "facial_exp_desc", "body_lang_desc")).strip()


class EmbeddingConsistencyStage(RowStage):
    """Cosine similarity of sentence embeddings; the whole batch is embedded in one call."""

    name = "consistency"
    requires = ("description", "video_desc", "facial_exp_desc", "body_lang_desc")
    produces = ("consistency_score", "consistency_method")

    def __init__(self, config: ConsistencyConfig, embedder: SentenceEmbedder | None = None) -> None:
        self.config = config
        self.embedder = embedder or SentenceEmbedder(config.embedding_model)
        self._scores: dict[str, float] = {}

    def __call__(self, rows: list[Row]) -> list[Row]:
        todo = [r for r in rows if is_alive(r) and r["description"] and annotation_visual_text(r)]
        self._scores = {}  # this batch's scores only: never a score left from an earlier batch
        if todo:
            scores = self.embedder.pair_similarity([annotation_visual_text(r) for r in todo],
                                                   [r["description"] for r in todo])
            self._scores = {r["clip_id"]: float(s) for r, s in zip(todo, scores, strict=True)}
        return super().__call__(rows)

    def process_row(self, row: Row) -> None:
        if row["clip_id"] not in self._scores:
            raise MediaError("consistency_unscorable", "no description or no visual annotation to compare")
        score = self._scores[row["clip_id"]]
        row.update(consistency_score=score, consistency_method=f"embedding:{self.embedder.model_id}")
        if self.config.min_similarity is not None and score < self.config.min_similarity:
            raise MediaError("inconsistent_description", f"similarity {score:.2f} < {self.config.min_similarity}")
