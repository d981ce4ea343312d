"""SED records and preference pairs in the multimodal JSONL layouts of ms-swift and LLaMA-Factory.

Both get the same chat (system, user with `<video><audio>` tags, assistant) and the clip as `videos` and
`audios`. Layouts written (one JSONL file per non-empty dataset; an empty one is neither written nor listed,
since both loaders crash on an empty file):

- `ms_swift/NAME.jsonl`: SFT rows `{messages, videos, audios}`; preference rows add `rejected_response` (the
  chosen answer is the last assistant message), ms-swift's RLHF layout for `swift rlhf --rlhf_type dpo`.
- `llama_factory/NAME.jsonl` + `dataset_info.json` (sharegpt formatting, role/content tags): SFT rows
  `{messages, videos, audios}`; preference rows `{messages, chosen, rejected, videos, audios}` with `chosen` and
  `rejected` one assistant message each, listed with `"ranking": true` (LLaMA-Factory's DPO/RM layout).

Audio convention: the soundtrack is a separate stream (as the official SABER inference), so `audios` names the
same file as `videos` and the user turn carries both tags. Train with ms-swift's `USE_AUDIO_IN_VIDEO` unset
(false): set, ms-swift also extracts the soundtrack from every video, and with `audios` naming the same file the
model hears it twice. LLaMA-Factory reads these rows right either way: `use_audio_in_video: false` (its default)
gives two streams; `true` interleaves each `<video>`'s following `<audio>` into the video tokens in 2 s chunks
(it requires that pairing and as many audios as videos, which this layout has), the soundtrack still once.

Neither framework opens `s3://` paths: `jobs/export.py` rewrites them through engine.dataset.exports_media (download
to a local folder, or map a prefix to a mounted path).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from engine.core import storage

FRAMEWORKS = ("ms_swift", "llama_factory")
# source URI -> the path written (identity, or engine.dataset.exports_media's localised path)
Media = Callable[[str], str]


def _same(uri: str) -> str:
    return uri


def _prompt(record: Mapping[str, Any]) -> list[dict[str, str]]:
    # Both trainers expand <video>/<audio> tags in the user text into the clip's media, in order.
    return [{"role": "system", "content": record["system"]},
            {"role": "user", "content": f"<video><audio>{record['prompt']}"}]


def _messages(record: Mapping[str, Any]) -> list[dict[str, str]]:
    return [*_prompt(record), {"role": "assistant", "content": record["target"]}]


def _media(record: Mapping[str, Any], media: Media) -> dict[str, list[str]]:
    path = media(record["source_uri"])
    return {"videos": [path], "audios": [path]}


def to_ms_swift(record: Mapping[str, Any], media: Media = _same) -> dict[str, Any]:
    """ms-swift: messages + `videos` + `audios` (audio as a separate stream, as the official inference)."""
    return {"messages": _messages(record), **_media(record, media)}


def to_llama_factory(record: Mapping[str, Any], media: Media = _same) -> dict[str, Any]:
    """LLaMA-Factory sharegpt style; see `llama_factory_dataset_info` for the column mapping it needs."""
    return {"messages": _messages(record), **_media(record, media)}


def pair_to_ms_swift(pair: Mapping[str, Any], media: Media = _same) -> dict[str, Any]:
    """A preference row (train.preferences.schema.PREFERENCE_SCHEMA) in ms-swift's RLHF layout."""
    messages = [*_prompt(pair), {"role": "assistant", "content": pair["chosen"]}]
    return {"messages": messages, "rejected_response": pair["rejected"], **_media(pair, media)}


def pair_to_llama_factory(pair: Mapping[str, Any], media: Media = _same) -> dict[str, Any]:
    """A preference row in LLaMA-Factory's sharegpt ranking layout (prompt messages, chosen, rejected)."""
    return {"messages": _prompt(pair), "chosen": {"role": "assistant", "content": pair["chosen"]},
            "rejected": {"role": "assistant", "content": pair["rejected"]}, **_media(pair, media)}


def llama_factory_dataset_info(name: str, file_name: str, ranking: bool = False) -> dict[str, Any]:
    columns = {"messages": "messages", "videos": "videos", "audios": "audios"}
    if ranking:
        columns |= {"chosen": "chosen", "rejected": "rejected"}
    entry: dict[str, Any] = {"file_name": file_name, "formatting": "sharegpt", **({"ranking": True} if ranking else {}),
                             "columns": columns,
                             "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                      "assistant_tag": "assistant", "system_tag": "system"}}
    return {name: entry}


CONVERTERS = {False: {"ms_swift": to_ms_swift, "llama_factory": to_llama_factory},
              True: {"ms_swift": pair_to_ms_swift, "llama_factory": pair_to_llama_factory}}


def write_exports(folder: str, datasets: Mapping[str, list[dict[str, Any]]], ranking: frozenset[str] = frozenset(),
                  media: Media = _same) -> dict[str, int]:
    """`folder/{ms_swift,llama_factory}/NAME.jsonl` for each non-empty dataset (NAME in `ranking`: preference rows),
    and LLaMA-Factory's dataset_info.json listing them. A dataset that is empty now loses the file an earlier
    run wrote. Returns the rows written per dataset."""
    fs = storage.filesystem(folder)
    base = storage.strip_protocol(folder)
    info: dict[str, Any] = {}
    for framework in FRAMEWORKS:
        fs.makedirs(f"{base}/{framework}", exist_ok=True)
    for name, records in datasets.items():
        for framework in FRAMEWORKS:
            path = f"{base}/{framework}/{name}.jsonl"
            if not records:
                if fs.exists(path):
                    fs.rm(path)
                continue
            convert = CONVERTERS[name in ranking][framework]
            text = "".join(json.dumps(convert(r, media), ensure_ascii=False) + "\n" for r in records)
            fs.pipe_file(path, text.encode("utf-8"))
        if records:
            info |= llama_factory_dataset_info(name, f"{name}.jsonl", ranking=name in ranking)
    fs.pipe_file(f"{base}/llama_factory/dataset_info.json", json.dumps(info, indent=2).encode("utf-8"))
    return {name: len(records) for name, records in datasets.items()}
