"""Model clients behind one interface (`base.ChatBackend`): `local` (transformers, loaded once per actor), `http`
(OpenAI-compatible APIs: backoff, concurrency cap, response cache, cost log), `vllm_batch` (ray.data.llm's vLLM
processor), plus `whisper` (faster-whisper ASR), `embeddings` (MiniLM) and `media_parts` (frames and audio as
request parts). `factory.make_backend` picks one from a BackendConfig. May import engine.core.
"""
