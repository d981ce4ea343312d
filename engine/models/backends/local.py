"""Chat with a local `transformers` model: Qwen2.5-VL, the Qwen2.5-Omni thinker, or a text-only causal LM.

A Ray Data actor builds one `TransformersChatBackend` (model and processor load once, onto the GPU when
there is one) and calls `chat()` per batch. Requests arrive in the OpenAI shape the HTTP backend posts
(see `engine.models.backends.media_parts`) and are turned into the model's own chat format here:

- `qwen2_5_vl`: the image_url parts of one message become one video (2+ frames, in order, placed where the
  first frame was) or one image (a single frame); an input_audio part is `unsupported_media`.
- `qwen2_5_omni`: the same, plus the input_audio part as a separate audio stream (the official SABER
  inference layout, not interleaved into the video).
- `causal_lm`: text only; text parts are joined with newlines, any media part is `unsupported_media`.

Generation is batched in chunks of `batch_size` requests sharing (temperature, max_tokens, response_schema),
left-padded; greedy at temperature 0, otherwise plain temperature sampling (top_p=1, no top_k, as OpenAI's
defaults). A request's `response_schema` constrains its generation (engine.models.constrained) unless
`constrained_decoding` is off; the caller parses the text either way. Per-request failures are results
("bad_media", "unsupported_media", "too_long"); a chunk that runs out of memory is split in halves and run
again, and a single request that still does not fit is answered "out_of_memory" (retryable: engine.core.failures);
anything else raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import groupby
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from engine.models.backends.base import ChatRequest, ChatResult, UsageLog
from engine.models.backends.local_config import MIN_PIXELS, LocalBackendConfig, resolve_model_path
from engine.models.backends.media_parts import MediaPartError, decode_audio, decode_frames, is_audio_part, is_image_part
from engine.models.constrained import JsonSchemaDecoding

# torch and transformers are imported where a model is loaded or run, not here: importing the backend (an API-stage
# actor's factory, tests) should not cost ~3 s on 2 cores before it is used.
if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
_Media = TypeVar("_Media")
_Decoded = TypeVar("_Decoded")

def _out_of_memory(err: RuntimeError) -> bool:
    """torch.OutOfMemoryError (CUDA; a RuntimeError subclass) or the CPU allocator's plain RuntimeError."""
    return type(err).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(err)


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PerRequestError(Exception):
    """A request this backend answers with an error result instead of generating."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(f"{error}: {detail}")
        self.error = error


@dataclass
class _Prompt:
    """One request in the model's own format: templated text plus the decoded media its placeholders stand for."""

    index: int
    request: ChatRequest
    text: str
    images: list[np.ndarray] = field(default_factory=list)
    videos: list[np.ndarray] = field(default_factory=list)  # (T, H, W, 3) uint8
    audios: list[np.ndarray] = field(default_factory=list)  # float32, 16 kHz


class TransformersChatBackend:
    """ChatBackend over a local transformers model, loaded once."""

    def __init__(self, config: LocalBackendConfig) -> None:
        self.config = config
        self.model_id = config.model
        self.device = _device(config.device)
        self.dtype = _dtype(config.dtype, self.device)
        self.model, self.processor = _load(config, self.device, self.dtype)
        # A multimodal processor wraps its tokenizer; a causal LM's "processor" is the tokenizer itself.
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # batching needs one; the mask hides it
        self._stop_ids = _stop_ids(self.model.generation_config, self.tokenizer)
        self._max_len = self.model.config.get_text_config().max_position_embeddings
        self._schemas = (JsonSchemaDecoding.for_model(self.model, self.tokenizer, self._stop_ids,
                                                      config.max_string_chars) if config.constrained_decoding else None)
        self._usage = UsageLog(config.model)
        self._logged_grid = False

    # ------------------------------------------------------------ public

    def chat(self, requests: list[ChatRequest]) -> list[ChatResult]:
        results: list[ChatResult | None] = [None] * len(requests)
        prompts = []
        for index, request in enumerate(requests):
            try:
                prompts.append(self._prompt(index, request))
            except PerRequestError as err:
                log.warning("local chat %s: request %d: %s", request.tag or "-", index, err)
                results[index] = ChatResult(text=None, error=err.error, attempts=1)
        for chunk in self._chunks(prompts):
            for prompt, result in zip(chunk, self._run(chunk), strict=True):
                results[prompt.index] = result
        for request, result in zip(requests, results, strict=True):
            self._usage.record(request.tag, result)
        return results

    def encode(self, requests: list[ChatRequest]) -> Any:
        """The model inputs `chat()` would build for these requests as one batch (for inspection and tests).

        Raises PerRequestError for a request `chat()` would answer with an error.
        """
        return self._encode([self._prompt(index, request) for index, request in enumerate(requests)])

    def usage(self) -> dict[str, Any]:
        return self._usage.as_dict()

    def log_usage(self) -> None:
        log.info("%s", self._usage.summary())

    # ------------------------------------------------------------ requests → prompts

    def _prompt(self, index: int, request: ChatRequest) -> _Prompt:
        prompt = _Prompt(index, request, "")
        messages = [self._message(message, prompt) for message in request.messages]
        # A processor's template handles media placeholders; for causal_lm the "processor" is the tokenizer.
        prompt.text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt

    def _message(self, message: dict[str, Any], prompt: _Prompt) -> dict[str, Any]:
        """One OpenAI message → the model's format; decoded media are appended to the prompt's lists."""
        content = message.get("content")
        if isinstance(content, str):
            return {"role": message["role"], "content": content}
        if not isinstance(content, list):
            raise TypeError(f"message content must be a string or a list of parts, got {type(content).__name__}")
        if self.config.kind == "causal_lm":
            return {"role": message["role"], "content": _text_only(content)}
        return {"role": message["role"], "content": self._media_content(content, prompt)}

    def _media_content(self, parts: list[dict[str, Any]], prompt: _Prompt) -> list[dict[str, Any]]:
        frames = _decode([part for part in parts if is_image_part(part)], decode_frames)
        out: list[dict[str, Any]] = []
        for part in parts:
            if part.get("type") == "text":
                out.append({"type": "text", "text": part["text"]})
            elif is_image_part(part) and frames:  # all frames go where the first one was
                out.append(_visual(frames, prompt))
                frames = []
            elif is_audio_part(part):
                if self.config.kind != "qwen2_5_omni":
                    raise PerRequestError("unsupported_media", f"{self.config.kind} takes no audio")
                prompt.audios.append(_decode(part, decode_audio))
                out.append({"type": "audio"})
            elif not is_image_part(part):
                raise ValueError(f"unknown content part type {part.get('type')!r}")
        return out

    # ------------------------------------------------------------ batching and generation

    def _chunks(self, prompts: list[_Prompt]) -> list[list[_Prompt]]:
        """Prompts grouped by their generation settings (stable order), then cut into batch_size chunks."""
        def settings(prompt: _Prompt) -> tuple[float, int, str]:
            schema = prompt.request.response_schema
            return float(prompt.request.temperature), prompt.request.max_tokens, schema.text if schema else ""

        chunks = []
        for _, group in groupby(sorted(prompts, key=settings), key=settings):
            members = list(group)  # sorted() is stable: request order survives within a group
            size = self.config.batch_size
            chunks.extend(members[start:start + size] for start in range(0, len(members), size))
        return chunks

    def _run(self, chunk: list[_Prompt]) -> list[ChatResult]:
        try:
            inputs = self._encode(chunk)
        except ValueError as err:
            return self._isolate(chunk, err)
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        fits = [n + prompt.request.max_tokens <= self._max_len for prompt, n in zip(chunk, lengths, strict=True)]
        if not all(fits):
            return self._without_too_long(chunk, lengths, fits)
        request = chunk[0].request  # every prompt of a chunk shares temperature, max_tokens and schema
        try:
            new_tokens = self._generate(inputs, request)
        except MemoryError as err:  # torch.OutOfMemoryError is not a MemoryError: see _out_of_memory
            return self._split_after_oom(chunk, err)
        except RuntimeError as err:
            if not _out_of_memory(err):
                raise
            return self._split_after_oom(chunk, err)
        return [self._result(row, n) for row, n in zip(new_tokens.tolist(), lengths, strict=True)]

    def _split_after_oom(self, chunk: list[_Prompt], err: BaseException) -> list[ChatResult]:
        """Frees what the failed generate held, then runs the chunk's halves; one prompt alone that still does not
        fit is an "out_of_memory" result (retryable: another run, a bigger device or a smaller batch may fit it)."""
        _free_device_memory()
        if len(chunk) == 1:
            log.warning("local chat %s: request %d does not fit in memory alone: %s",
                        chunk[0].request.tag or "-", chunk[0].index, err)
            return [ChatResult(text=None, error="out_of_memory", attempts=1)]
        log.warning("local chat: out of memory on a batch of %d, retrying in halves (%s)", len(chunk), err)
        half = len(chunk) // 2
        return self._run(chunk[:half]) + self._run(chunk[half:])

    def _isolate(self, chunk: list[_Prompt], err: ValueError) -> list[ChatResult]:
        """The processor rejected some media (e.g. an extreme aspect ratio): find which by running each alone."""
        if len(chunk) > 1:
            return [result for prompt in chunk for result in self._run([prompt])]
        log.warning("local chat %s: request %d: the processor rejected its media: %s",
                    chunk[0].request.tag or "-", chunk[0].index, err)
        return [ChatResult(text=None, error="bad_media", attempts=1)]

    def _without_too_long(self, chunk: list[_Prompt], lengths: list[int], fits: list[bool]) -> list[ChatResult]:
        """The prompts that fit run as a (smaller) batch; the others are answered "too_long"."""
        answered = iter(self._run([prompt for prompt, ok in zip(chunk, fits, strict=True) if ok]) if any(fits) else [])
        results = []
        for prompt, n, ok in zip(chunk, lengths, fits, strict=True):
            if not ok:
                log.warning("local chat %s: request %d: %d prompt + %d new tokens exceed the model's %d",
                            prompt.request.tag or "-", prompt.index, n, prompt.request.max_tokens, self._max_len)
            results.append(next(answered) if ok else ChatResult(text=None, error="too_long", prompt_tokens=n,
                                                                attempts=1))
        return results

    def _encode(self, chunk: list[_Prompt]) -> Any:
        texts = [prompt.text for prompt in chunk]
        if self.config.kind == "causal_lm":
            inputs = self.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt")
            return inputs.to(self.device)
        media = _media_kwargs(chunk, self.config)
        inputs = self.processor(text=texts, padding=True, padding_side="left", return_tensors="pt", **media)
        self._log_grid(inputs)
        # Floating tensors (pixels, audio features) take the model's dtype; ids and masks stay integers.
        return inputs.to(self.device, dtype=self.dtype)

    def _generate(self, inputs: Any, request: ChatRequest) -> torch.Tensor:
        sampling: dict[str, Any] = {"do_sample": False}
        if request.temperature > 0:
            # Plain temperature sampling: real checkpoints ship top_p/top_k in generation_config.json.
            sampling = {"do_sample": True, "temperature": float(request.temperature), "top_p": 1.0, "top_k": 0}
        if self._schemas is not None and request.response_schema is not None:
            rows = inputs["input_ids"].shape[0]
            sampling["logits_processor"] = [self._schemas.logits_processor(request.response_schema, rows)]
        import torch

        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=request.max_tokens, **sampling)
        # Left padding: every prompt ends at the same column, so the new tokens are all that follows it.
        return output[:, inputs["input_ids"].shape[1]:].cpu()

    def _result(self, new_tokens: list[int], prompt_tokens: int) -> ChatResult:
        # A finished row is padded after its stop token; count up to and including that stop token.
        stop = next((i for i, token in enumerate(new_tokens) if token in self._stop_ids), None)
        tokens = new_tokens if stop is None else new_tokens[:stop + 1]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return ChatResult(text=text, error=None, prompt_tokens=int(prompt_tokens), completion_tokens=len(tokens),
                          attempts=1)

    def _log_grid(self, inputs: Any) -> None:
        if not self._logged_grid and "video_grid_thw" in inputs:  # the real frame size the model sees, once
            log.info("local %s: video_grid_thw %s", self.model_id, inputs["video_grid_thw"].tolist())
            self._logged_grid = True


# ---------------------------------------------------------------- helpers


def _text_only(parts: list[dict[str, Any]]) -> str:
    if any(is_image_part(part) or is_audio_part(part) for part in parts):
        raise PerRequestError("unsupported_media", "causal_lm takes text only")
    unknown = [part.get("type") for part in parts if part.get("type") != "text"]
    if unknown:
        raise ValueError(f"unknown content part types {unknown!r}")
    return "\n".join(part["text"] for part in parts)  # how vLLM's OpenAI server joins text parts


def _decode(media: _Media, decoder: Callable[[_Media], _Decoded]) -> _Decoded:
    try:
        return decoder(media)
    except MediaPartError as err:
        raise PerRequestError("bad_media", str(err)) from err


def _visual(frames: list[np.ndarray], prompt: _Prompt) -> dict[str, str]:
    if len(frames) == 1:
        prompt.images.append(frames[0])
        return {"type": "image"}
    if len({frame.shape for frame in frames}) > 1:
        raise PerRequestError("bad_media", "the frames of one video differ in size")
    prompt.videos.append(np.stack(frames))
    return {"type": "video"}


def _media_kwargs(chunk: list[_Prompt], config: LocalBackendConfig) -> dict[str, Any]:
    """images/videos/audio in placeholder order, with explicit sizes: the processors' class-level video
    defaults would otherwise override the saved config (and the per-frame pixel budget)."""
    size = {"shortest_edge": MIN_PIXELS, "longest_edge": config.max_pixels}
    images = [image for prompt in chunk for image in prompt.images]
    videos = [video for prompt in chunk for video in prompt.videos]
    audios = [audio for prompt in chunk for audio in prompt.audios]
    kwargs: dict[str, Any] = {"images_kwargs": {"size": size}, "videos_kwargs": {"size": size}}
    if images:
        kwargs["images"] = images
    if videos:
        kwargs["videos"] = videos
        # Raw arrays carry no frame rate. Qwen2.5-VL's processor reads it from video_metadata (else assumes
        # 24 fps), Omni's from videos_kwargs["fps"] (else assumes 2): give both the real rate.
        kwargs["videos_kwargs"]["fps"] = config.frames_fps
        kwargs["videos_kwargs"]["video_metadata"] = [
            {"total_num_frames": len(video), "fps": config.frames_fps, "frames_indices": list(range(len(video)))}
            for video in videos]
    if audios:
        kwargs["audio"] = audios
    return kwargs


def _device(choice: str) -> torch.device:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but no GPU is visible (use 'auto' or 'cpu')")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def _dtype(choice: str, device: torch.device) -> torch.dtype:
    import torch

    if choice == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[choice]


def _load(config: LocalBackendConfig, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    import transformers

    path = resolve_model_path(config.model)
    model_class, processor_class = {
        "qwen2_5_vl": (transformers.Qwen2_5_VLForConditionalGeneration, transformers.AutoProcessor),
        # The thinker alone: it writes the text; the talker (speech output) is never needed here.
        "qwen2_5_omni": (transformers.Qwen2_5OmniThinkerForConditionalGeneration, transformers.AutoProcessor),
        "causal_lm": (transformers.AutoModelForCausalLM, transformers.AutoTokenizer),
    }[config.kind]
    model = model_class.from_pretrained(path, dtype=dtype, attn_implementation=config.attn_implementation)
    log.info("local backend: %s (%s) on %s as %s", config.model, config.kind, device, dtype)
    return model.to(device).eval(), processor_class.from_pretrained(path)


def _stop_ids(generation_config: Any, tokenizer: Any) -> set[int]:
    eos = generation_config.eos_token_id
    ids = {*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id}
    return {token for token in ids if token is not None}
