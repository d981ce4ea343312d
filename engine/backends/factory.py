"""A ChatBackend from its config, built inside the actor that uses it (models load once per actor)."""

from __future__ import annotations

from engine.backends.base import ChatBackend
from engine.config import BackendConfig


def make_backend(config: BackendConfig) -> ChatBackend:
    if config.kind == "http":
        from engine.backends.http import HttpChatBackend

        return HttpChatBackend(config.http)
    from engine.backends.local import TransformersChatBackend

    return TransformersChatBackend(config.local)
