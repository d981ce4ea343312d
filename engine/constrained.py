"""Constrained decoding for the local transformers backend: a verdict's JSON Schema as a token mask.

xgrammar compiles the schema (engine.verdicts) against the tokenizer into a grammar whose matcher, at every
generation step, masks the logits of every token that cannot continue a valid answer; the model picks among
the rest as it would unconstrained (greedy or sampled). So the answer is valid JSON of the schema's layout,
keys, enums and integer ranges, and ends once the object is closed (then only a stop token is allowed).

Why xgrammar (measured on the tiny models the tests build, jobs/benchmark.py-style, see the README): it
precomputes a per-state token mask cache, so a step costs a bitmask fill and a masked add; lm-format-enforcer
walks a character trie of the vocabulary in Python each step, and outlines' default (outlines-core) back end
builds a full index of the schema's regex over the vocabulary before the first token. It is also what vLLM and
SGLang use, so local and served answers are constrained the same way.

Not constrained here: what a string says. A random (tiny) model fills a string to its maxLength, so
`max_string_chars` caps every string of a schema for the local model, to keep a verdict inside max_tokens.
"""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

from engine.backends.base import ResponseSchema

if TYPE_CHECKING:
    import torch


def cap_strings(schema: dict[str, Any], max_chars: int | None) -> dict[str, Any]:
    """A copy of `schema` whose free strings (not enums or consts) allow at most `max_chars` characters."""
    if max_chars is None:
        return schema
    capped = copy.deepcopy(schema)
    _cap(capped, max_chars)
    return capped


def _cap(node: Any, max_chars: int) -> None:
    if isinstance(node, list):
        for item in node:
            _cap(item, max_chars)
        return
    if not isinstance(node, dict):
        return
    if node.get("type") == "string" and "enum" not in node and "const" not in node:
        node["maxLength"] = min(int(node.get("maxLength", max_chars)), max_chars)
    for value in node.values():
        _cap(value, max_chars)


class JsonSchemaDecoding:
    """Compiles response schemas for one tokenizer (once each: the compiler caches) into logits processors."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: set[int], max_string_chars: int | None) -> None:
        import xgrammar

        self._xgr = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                       stop_token_ids=sorted(stop_ids))
        self._compiler = xgrammar.GrammarCompiler(info, max_threads=1)
        self.max_string_chars = max_string_chars

    @classmethod
    def for_model(cls, model: Any, tokenizer: Any, stop_ids: set[int],
                  max_string_chars: int | None) -> JsonSchemaDecoding:
        """The logits' width (the output embeddings' rows) can exceed the tokenizer's vocabulary."""
        return cls(tokenizer, model.get_output_embeddings().weight.shape[0], stop_ids, max_string_chars)

    def compile(self, schema: ResponseSchema) -> Any:
        body = json.dumps(cap_strings(schema.schema, self.max_string_chars))  # keeps the key order
        # Compact separators and no free whitespace: fewer tokens per verdict, none spent on indentation.
        return self._compiler.compile_json_schema(body, any_whitespace=False, separators=(",", ": "))

    def logits_processor(self, schema: ResponseSchema, batch_size: int) -> SchemaLogitsProcessor:
        return SchemaLogitsProcessor(self._xgr, self.compile(schema), batch_size)


class SchemaLogitsProcessor:
    """A transformers logits processor (one per generate() call): each row's matcher accepts the token sampled
    last, then fills that row's mask of allowed next tokens; disallowed logits become -inf."""

    def __init__(self, xgr: Any, compiled: Any, batch_size: int) -> None:
        self._xgr = xgr
        self._matchers = [xgr.GrammarMatcher(compiled) for _ in range(batch_size)]
        self._bitmask = xgr.allocate_token_bitmask(batch_size, compiled.tokenizer_info.vocab_size)
        self._started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != len(self._matchers):
            raise RuntimeError(f"batch of {input_ids.shape[0]} rows, {len(self._matchers)} grammar matchers")
        for row, matcher in enumerate(self._matchers):
            if self._started and not matcher.is_terminated() and not matcher.accept_token(int(input_ids[row, -1])):
                raise RuntimeError(f"row {row}: the sampled token {int(input_ids[row, -1])} breaks the grammar")
            if not matcher.is_terminated():  # a finished row is padded by generate() whatever its logits say
                matcher.fill_next_token_bitmask(self._bitmask, row)
        self._started = True
        # apply_token_bitmask_inplace runs on CPU tensors or on CUDA (its own kernel) alike.
        self._xgr.apply_token_bitmask_inplace(scores, self._bitmask.to(scores.device))
        return scores
