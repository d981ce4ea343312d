"""Talking to models: `backends/` (one ChatBackend interface over local transformers, any OpenAI-compatible HTTP API
with retries and an on-disk response cache, and ray.data.llm vLLM; Whisper and the sentence embedder), `prompts`
(versioned prompt texts), `verdicts` (strict parsers of model answers) and `annotation` (the six-field SABER
annotation). May import engine.core; stages and train use it. The vLLM backend's processor config is the one place
here that touches Ray (ray.data.llm), lazily.
"""
