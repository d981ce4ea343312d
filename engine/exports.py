"""SED records in the multimodal JSONL layouts of ms-swift and LLaMA-Factory (same chat, their media tags)."""

from __future__ import annotations

from typing import Any


def _messages(record: dict[str, Any]) -> list[dict[str, str]]:
    # Both trainers expand <video>/<audio> tags in the user text into the clip's media, in order.
    return [{"role": "system", "content": record["system"]},
            {"role": "user", "content": f"<video><audio>{record['prompt']}"},
            {"role": "assistant", "content": record["target"]}]


def to_ms_swift(record: dict[str, Any]) -> dict[str, Any]:
    """ms-swift: messages + `videos` + `audios` (audio as a separate stream, as the official inference)."""
    return {"messages": _messages(record), "videos": [record["source_uri"]], "audios": [record["source_uri"]]}


def to_llama_factory(record: dict[str, Any]) -> dict[str, Any]:
    """LLaMA-Factory sharegpt style; see `llama_factory_dataset_info` for the column mapping it needs."""
    return {"messages": _messages(record), "videos": [record["source_uri"]], "audios": [record["source_uri"]]}


def llama_factory_dataset_info(name: str, file_name: str) -> dict[str, Any]:
    return {name: {"file_name": file_name, "formatting": "sharegpt",
                   "columns": {"messages": "messages", "videos": "videos", "audios": "audios"},
                   "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                            "assistant_tag": "assistant", "system_tag": "system"}}}
