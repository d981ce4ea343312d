"""A ChatBackend from its config, built inside the actor that uses it (models load once per actor)."""

from __future__ import annotations

from engine.core.config import BackendConfig
from engine.models.backends.base import ChatBackend


def make_backend(config: BackendConfig) -> ChatBackend:
    if config.kind == "http":
        from engine.models.backends.http import HttpChatBackend

        return HttpChatBackend(config.http)
    from engine.models.backends.local import TransformersChatBackend

    return TransformersChatBackend(config.local)
