"""Rank a query's judged responses and pair the top two against the bottom two (paper Sec. IV-B).

Rank order: total score descending, ties broken by sample index ascending (the earlier sample ranks higher),
so the ranking is a pure function of the scores. Winners are the first two ranked responses (w1 best), among
SED-formatted ones only when `sed_winners_only`; losers are the last two of the remaining ones, worst first
(l1 = lowest ranked, l2 = the one above it). `matched` pairs w1-l1 and w2-l2, `cross` all four. A pair is
kept when chosen_score - rejected_score >= margin; a query keeps whatever pairs pass, and is dropped as
`below_margin` when none does. Failed judgements never enter the ranking; with fewer than `min_judged`
judged responses the query is dropped as `too_few_judged`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from engine.core.config_base import ConfigSection
from engine.core.failures import FINAL, RETRYABLE, backend_failure
from train.preferences.schema import PREFERENCE_SCHEMA, QUERY_SCHEMA, pair_id


class RankingConfig(ConfigSection):
    """Top-2 winners against bottom-2 losers, on the judge's total score (0-20, see judge.py). Defined here,
    not in config.py, so that the rank tasks unpickle it without importing the sampler's torch stack."""

    pairing: Literal["matched", "cross"] = "matched"  # matched: w1-l1, w2-l2; cross: all four
    # A pair is kept only if chosen_score - rejected_score >= margin. 2 points of 20: one point on each
    # criterion, or two on one; smaller gaps are within a judge's run-to-run noise.
    margin: float = Field(2.0, ge=0)
    min_judged: int = Field(4, ge=4)  # queries with fewer successfully judged responses are dropped
    # Responses without the three SED sections are judged (they are real failure modes of the policy and
    # good losers) but cannot be winners: a DPO target must have the format SFT taught. Off only for a
    # model that never produces the format (the tiny random model of the demo and tests).
    sed_winners_only: bool = True


@dataclass(frozen=True)
class Candidate:
    index: int
    score: float
    sed_ok: bool = True


@dataclass
class RankOutcome:
    winners: list[int] = field(default_factory=list)  # best first
    losers: list[int] = field(default_factory=list)  # worst first
    pairs: list[tuple[int, int]] = field(default_factory=list)  # kept (chosen, rejected) sample indices
    below_margin: int = 0  # pairs formed but dropped for the margin
    drop_reason: str | None = None


def rank_order(candidates: list[Candidate]) -> list[Candidate]:
    return sorted(candidates, key=lambda c: (-c.score, c.index))


def rank_and_pair(candidates: list[Candidate], ranking: RankingConfig) -> RankOutcome:
    if len(candidates) < ranking.min_judged:
        return RankOutcome(drop_reason="too_few_judged")
    order = rank_order(candidates)
    eligible = [c for c in order if c.sed_ok] if ranking.sed_winners_only else order
    if len(eligible) < 2:
        return RankOutcome(drop_reason="too_few_sed_winners")
    winners = eligible[:2]
    losers = [c for c in reversed(order) if c not in winners][:2]
    if ranking.pairing == "matched":
        formed = list(zip(winners, losers, strict=True))
    else:
        formed = [(w, loser) for w in winners for loser in losers]
    kept = [(w.index, loser.index) for w, loser in formed if w.score - loser.score >= ranking.margin]
    return RankOutcome(winners=[c.index for c in winners], losers=[c.index for c in losers], pairs=kept,
                       below_margin=len(formed) - len(kept), drop_reason=None if kept else "below_margin")


def candidates_of(query: dict[str, Any]) -> list[Candidate]:
    """The successfully judged responses of a query row."""
    scores, sed_ok = query["scores"] or [], query["sed_ok"] or []
    return [Candidate(i, s, bool(sed_ok[i])) for i, s in enumerate(scores) if s is not None]


def retryable_judge_failures(query: dict[str, Any]) -> int:
    """Responses whose judge call the API failed for a reason of the world (details read "<model>: <error>")."""
    return sum(fail == "model_error" and backend_failure((detail or "").rsplit(": ", 1)[-1]) == RETRYABLE
               for fail, detail in zip(query["judge_fail"] or [], query["judge_fail_detail"] or [], strict=True))


def drop_failure(query: dict[str, Any], outcome: RankOutcome, ranking: RankingConfig) -> str | None:
    """A query dropped for too few judged responses is retryable when the API failures alone made it too few
    (judged again, it could pair); any other drop is a verdict about the answers."""
    if outcome.drop_reason is None:
        return None
    judged = len(candidates_of(query))
    if outcome.drop_reason == "too_few_judged" and judged + retryable_judge_failures(query) >= ranking.min_judged:
        return RETRYABLE
    return FINAL


def rank_query(query: dict[str, Any], ranking: RankingConfig) -> None:
    if query["sample_error"]:
        query.update(status="dropped", drop_reason="sample_failed", failure=FINAL, pairs_below_margin=0)
        return
    outcome = rank_and_pair(candidates_of(query), ranking)
    query.update(status="dropped" if outcome.drop_reason else "paired", drop_reason=outcome.drop_reason,
                 failure=drop_failure(query, outcome, ranking),
                 winners=outcome.winners, losers=outcome.losers, pair_chosen=[c for c, _ in outcome.pairs],
                 pair_rejected=[r for _, r in outcome.pairs], pairs_below_margin=outcome.below_margin)


def rank_batch(table: pa.Table, ranking: RankingConfig) -> pa.Table:
    """Ray Data task: judged query rows -> ranked query rows."""
    queries = table.to_pylist()
    for query in queries:
        rank_query(query, ranking)
    return pa.Table.from_pylist(queries, schema=QUERY_SCHEMA)


def preference_rows(query: dict[str, Any], pairing: str) -> list[dict[str, Any]]:
    """PREFERENCE_SCHEMA rows for a ranked (and, with AVEm, written) query row."""
    winners = query["winners"] or []
    rows = []
    for chosen, rejected in zip(query["pair_chosen"] or [], query["pair_rejected"] or [], strict=True):
        slot = winners.index(chosen)
        rows.append({
            "clip_id": query["clip_id"], "source_uri": query["source_uri"], "source_video": query["source_video"],
            "lang": query["lang"], "av_relation": query["av_relation"], "system": query["system"],
            "prompt": query["prompt"], "chosen": query["responses"][chosen], "rejected": query["responses"][rejected],
            "chosen_score": query["scores"][chosen], "rejected_score": query["scores"][rejected],
            "chosen_index": chosen, "rejected_index": rejected, "pairing": pairing, "round": query["round"],
            "sampler": query["sampler"], "judge": query["judge"],
            "pair_id": pair_id(query["clip_id"], query["round"], chosen, rejected),
            "rejected_vr": query["avem_vr"][slot] if query["avem_vr"] else None,
            "rejected_er": query["avem_er"][slot] if query["avem_er"] else None,
            "swap_clip_id": query["swap_clip_id"], "swap_source_uri": query["swap_source_uri"],
            "swap_modality": query["swap_modality"],
        })
    return rows


def preference_table(queries: list[dict[str, Any]], pairing: str) -> pa.Table:
    rows = [row for query in queries if query["status"] == "paired" for row in preference_rows(query, pairing)]
    return pa.Table.from_pylist(rows, schema=PREFERENCE_SCHEMA)
