"""Capacity plan for a SABER build: clips into each stage, node-hours, wall time and cost, from per-clip costs.

Each number below is either measured by this project's benchmark (jobs/benchmark.py, outputs/benchmarks/) or an
ASSUMPTION with its reasoning beside it. Assumptions are meant to be replaced (YAML or key=value, see
jobs/plan.py) once a pilot run on real clips measures them: the engine's metrics give rows per stage and batch
seconds (saber_stage_*), tokens and requests per stage (saber_model_*), and the report gives the pass rates.

Model: the streamed stages run in plan order and each passes `pass_rate` of its input on. Ray Data runs them
concurrently, so the stream's wall time is that of the slowest stage (each pool at its configured maximum); the
SABER-Test relation judge labels every kept clip in the stream's last pool (or after the stream, `saber_test.in_stream
false`), and training follows the build. CPU/GPU stages are
charged node-hours for their work divided by the node's useful fraction (`utilization`: scale-up ramps,
stragglers, the idle timeout); API stages are charged their tokens plus the CPU slots their actors hold while
waiting on the API.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import Field

from engine.core.config_base import ConfigSection
from engine.models.backends.base import batches_in_flight

NodeName = Literal["head", "cpu", "gpu"]
SECONDS_PER_HOUR = 3600.0


# -- inputs: typed, YAML-loadable, every default a stated measurement or assumption -------------------------
class NodeType(ConfigSection):
    instance: str
    cpus: int = Field(ge=0)  # Ray CPUs the node offers (cluster/aws/saber-cluster.yaml `resources`)
    gpus: int = Field(ge=0)
    usd_per_hour: float = Field(gt=0)
    utilization: float = Field(gt=0, le=1)


class HeadNode(NodeType):
    # ASSUMPTION (edit): AWS on-demand list price, us-west-2, Linux. Runs for the whole build and training.
    instance: str = "m6i.2xlarge"
    cpus: int = 8
    gpus: int = 0
    usd_per_hour: float = 0.384
    utilization: float = 1.0


class CpuNode(NodeType):
    # ASSUMPTION (edit): AWS on-demand list price, us-west-2, Linux; spot is typically 50-70% cheaper.
    instance: str = "m6i.8xlarge"
    cpus: int = Field(32, gt=0)
    gpus: int = 0
    usd_per_hour: float = 1.536
    utilization: float = 0.8


class GpuNode(NodeType):
    # ASSUMPTION (edit): AWS on-demand list price of p4d.24xlarge (8x A100 40 GB), us-west-2. Capacity blocks
    # and savings plans change this the most.
    instance: str = "p4d.24xlarge"
    cpus: int = 96
    gpus: int = Field(8, gt=0)
    usd_per_hour: float = 32.7726
    utilization: float = 0.8


class Nodes(ConfigSection):
    head: HeadNode = HeadNode()
    cpu: CpuNode = CpuNode()
    gpu: GpuNode = GpuNode()


class MediaCost(ConfigSection):
    """Annotation check + probe + decode + noise filter, chained in one CPU task per batch."""

    # Measured: `python jobs/benchmark.py engine`, the sequential loop over the 71-clip demo set, 38.8 clips/s on
    # a 2-core machine; both cores are charged (decord and PyAV decode with threads).
    benchmark_clips_per_s: float = Field(38.8, gt=0)
    benchmark_cores: float = Field(2.0, gt=0)
    # ASSUMPTION: a production clip costs 20x a demo clip. Demo clips are 316x237 at 10 fps, 4.5 s; take real
    # ones as 1280x720 at 25 fps, 8 s: 54x the decoded pixels, but probing, audio, JPEG encoding at <= 448 px
    # and Python overhead do not scale with the source, hence 20x. Replace with a benchmark on real clips.
    clip_cost_factor: float = Field(20.0, gt=0)
    # production.yaml: media_concurrency max 256 tasks x media_num_cpus 1.
    max_cpus: float = Field(256, gt=0)
    # ASSUMPTION: technical filters (duration, resolution, tracks, decode) and the SNR filter keep 85%.
    pass_rate: float = Field(0.85, ge=0, le=1)

    @property
    def cpu_seconds_per_clip(self) -> float:
        return self.benchmark_cores / self.benchmark_clips_per_s * self.clip_cost_factor


class GpuCost(ConfigSection):
    model: str
    clips_per_gpu_s: float = Field(gt=0)  # all actors sharing one GPU together
    max_gpus: float = Field(gt=0)  # pool max actors x num_gpus per actor
    pass_rate: float = Field(ge=0, le=1)


class AsrCost(GpuCost):
    model: str = "faster-whisper large-v3 fp16, beam 5"
    # ASSUMPTION: faster-whisper's published GPU benchmark runs large-v2 fp16 beam 5 at ~14x real time on a
    # V100S; an A100 is ~1.7x that. An 8 s clip still pays a full 30 s encoder window but decodes only ~8 s of
    # text: ~0.5 s per clip per actor, two actors per GPU (asr_num_gpus 0.5) -> 4 clips/s per GPU. (On CPU the
    # demo's Whisper tiny.en does 2.2-2.7 clips/s on 2 cores; large-v3 on CPU would be ~50x slower.)
    clips_per_gpu_s: float = Field(4.0, gt=0)
    max_gpus: float = Field(8.0, gt=0)  # production.yaml: asr_concurrency max 16 x asr_num_gpus 0.5
    # ASSUMPTION: 20% of clips fail WER <= 0.3 / CER <= 0.3 against the annotated speech.
    pass_rate: float = Field(0.8, ge=0, le=1)


class DescribeCost(GpuCost):
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct, ray.data.llm vLLM, 1 GPU per engine"
    # ASSUMPTION: an 8 s clip sends 16 frames as images of <= 448 px, ~144 tokens each after the 2x2 merge,
    # plus the prompt: ~2.4K prompt tokens and ~120 new ones. An A100 under vLLM's continuous batching
    # prefills ~10K tokens/s of a 7B VLM (vision encoder included) and decodes thousands of tokens/s across
    # the batch: ~3 clips/s, 2.5 after image preparation stalls. (The transformers backend would do ~1.5.)
    clips_per_gpu_s: float = Field(2.5, gt=0)
    max_gpus: float = Field(16.0, gt=0)  # production.yaml: describe.backend.vllm.concurrency max 16 x 1 GPU
    pass_rate: float = Field(0.99, ge=0, le=1)  # ASSUMPTION: empty descriptions are rare


class ApiCost(ConfigSection):
    """An HTTP model stage. Its sustained rate is min(rate_limit_per_s, actors x window x window_efficiency /
    latency_s): an actor runs `batches_at_once` batches of `batch_size` rows, its backend keeps at most
    max_concurrency of their requests in flight (the window), and a batch returns only with its slowest answer, so
    stragglers leave part of the window idle (window_efficiency, measured by `jobs/benchmark.py models`)."""

    model: str
    applies: float = Field(ge=0, le=1)  # fraction of the stage's input it calls the model for
    requests_per_clip: float = Field(ge=1)  # 1 plus repair re-asks
    prompt_tokens_per_clip: float = Field(ge=0)  # repair re-asks included
    completion_tokens_per_clip: float = Field(ge=0)
    usd_per_1m_prompt: float = Field(ge=0)
    usd_per_1m_completion: float = Field(ge=0)
    actors: int = Field(ge=1)  # the pool's max actors
    max_concurrency: int = Field(ge=1)  # backend.http.max_concurrency: requests in flight per actor
    batch_size: int = Field(ge=1)  # the pool's batch_size
    # Batches one actor runs at once; None: the engine's rule for HTTP pools (base.batches_in_flight).
    batches_at_once: int | None = Field(None, ge=1)
    latency_s: float = Field(gt=0)  # mean seconds from sending a request to its whole answer
    # Mean requests in flight over the window. FALLBACK 1.0 (no stragglers: an upper bound); --benchmark takes the
    # value `jobs/benchmark.py models` measured on its latency profile (one slow answer in each batch).
    window_efficiency: float = Field(1.0, gt=0, le=1)
    rate_limit_per_s: float | None = Field(None, gt=0)  # your quota, cluster-wide; None: unlimited
    # Measured on a pilot (saber_model_requests per second): replaces the arithmetic above when set.
    requests_per_s: float | None = Field(None, gt=0)
    cpus_held: float = Field(ge=0)  # pool max actors x num_cpus: CPU slots held on CPU nodes while waiting
    pass_rate: float = Field(ge=0, le=1)

    @property
    def window(self) -> int:
        """Requests one actor can have in flight: its max_concurrency, unless its batches hold fewer."""
        batches = self.batches_at_once or batches_in_flight(self.max_concurrency, self.batch_size)
        return min(self.max_concurrency, batches * self.batch_size)

    @property
    def sustained_requests_per_s(self) -> float:
        if self.requests_per_s is not None:
            return self.requests_per_s
        ceiling = self.actors * self.window * self.window_efficiency / self.latency_s
        return min(ceiling, self.rate_limit_per_s or ceiling)


class AnnotateCost(ApiCost):
    model: str = "gemini-2.5-pro"
    applies: float = Field(1.0, ge=0, le=1)  # raw clips come without annotations
    requests_per_clip: float = Field(1.03, ge=1)  # ASSUMPTION: 3% need the one repair re-ask
    # ASSUMPTION: an 8 s clip sends 16 frames (2 fps) at 258 tokens each (Gemini's price for an image that fits
    # one tile; frames are <= 448 px), 8 s of audio at 32 tokens/s and a ~700-token prompt: ~5.1K, +3% repairs.
    prompt_tokens_per_clip: float = Field(5300, ge=0)
    # ASSUMPTION: ~500 tokens of six-field JSON plus ~1K thinking tokens (billed as output), +3% repairs.
    completion_tokens_per_clip: float = Field(1550, ge=0)
    # ASSUMPTION (edit): Gemini 2.5 Pro list prices for prompts <= 200K tokens, USD per 1M tokens.
    usd_per_1m_prompt: float = Field(1.25, ge=0)
    usd_per_1m_completion: float = Field(10.0, ge=0)
    # production.yaml: annotate.pool concurrency max 8, batch_size 16, backend max_concurrency 32: with the engine's
    # 4 batches at once, 32 in flight per actor (one batch at a time would be 16: 8 x 16 / 20 s = 6.4/s).
    actors: int = Field(8, ge=1)
    max_concurrency: int = Field(32, ge=1)
    batch_size: int = Field(16, ge=1)
    latency_s: float = Field(20.0, gt=0)  # ASSUMPTION: ~1.5K output tokens of a thinking model, plus the upload
    # ASSUMPTION (edit to your quota): 8 x 32 / 20 s = 12.8/s is more than a typical Gemini 2.5 Pro quota.
    rate_limit_per_s: float | None = Field(10.0, gt=0)
    cpus_held: float = Field(8.0, ge=0)  # production.yaml: annotate.pool concurrency max 8 x num_cpus 1
    pass_rate: float = Field(0.97, ge=0, le=1)  # ASSUMPTION: invalid JSON after the repair re-ask


class JudgeCost(ApiCost):
    model: str = "gpt-4o"
    applies: float = Field(1.0, ge=0, le=1)
    requests_per_clip: float = Field(1.0, ge=1)
    # ASSUMPTION: the annotation (~500 tokens), the description (~150) and the rubric (~450).
    prompt_tokens_per_clip: float = Field(1100, ge=0)
    completion_tokens_per_clip: float = Field(80, ge=0)  # ASSUMPTION: a score and a one-sentence reason
    # ASSUMPTION (edit): gpt-4o list prices, USD per 1M tokens.
    usd_per_1m_prompt: float = Field(2.5, ge=0)
    usd_per_1m_completion: float = Field(10.0, ge=0)
    # production.yaml: consistency.judge.pool concurrency max 4, batch_size 32, backend max_concurrency 32.
    actors: int = Field(4, ge=1)
    max_concurrency: int = Field(32, ge=1)
    batch_size: int = Field(32, ge=1)
    latency_s: float = Field(3.0, gt=0)  # ASSUMPTION: ~80 output tokens of gpt-4o after an 1.1K-token prompt
    rate_limit_per_s: float | None = Field(20.0, gt=0)  # ASSUMPTION (your quota): 4 x 32 / 3 s = 42.7/s is more
    cpus_held: float = Field(4.0, ge=0)  # production.yaml: consistency.judge.pool concurrency max 4 x 1 CPU
    pass_rate: float = Field(0.9, ge=0, le=1)  # ASSUMPTION: judge score >= 5


class RelationJudgeCost(JudgeCost):
    """The SABER-Test split's relation judge (saber_test.judge): every kept clip, in the stream's last pool by default
    (saber_test.judge_in_stream), else after the stream."""

    enabled: bool = True
    in_stream: bool = True  # the engine's saber_test.judge_in_stream: concurrent with the other stages
    cpus_held: float = Field(1.0, ge=0)  # production.yaml: saber_test.judge.pool concurrency max 4 x 0.25 CPU
    # ASSUMPTION: the annotation (~500 tokens) and the relation rubric (~300); a label, an intensity, a reason.
    prompt_tokens_per_clip: float = Field(800, ge=0)
    completion_tokens_per_clip: float = Field(60, ge=0)
    pass_rate: float = Field(1.0, ge=0, le=1)  # it labels clips, it rejects none


class TrainCost(ConfigSection):
    """SED-SFT on the kept clips (sft_production.yaml: 8 workers x 1 GPU = one 8-GPU node, 2 epochs)."""

    enabled: bool = True
    epochs: int = Field(2, ge=1)
    # ASSUMPTION: Qwen2.5-Omni-7B full fine-tuning, ZeRO-3, gradient checkpointing, ~3.2K tokens per sample
    # (16 frames, 8 s of audio, the SED target) at ~2K tokens/s per A100: ~5 samples/s per 8-GPU node.
    samples_per_s_per_node: float = Field(5.0, gt=0)
    nodes: int = Field(1, ge=1)


class PlanConfig(ConfigSection):
    clips: int = Field(600_000, ge=1)
    nodes: Nodes = Nodes()
    media: MediaCost = MediaCost()
    annotate: AnnotateCost = AnnotateCost()
    asr: AsrCost = AsrCost()
    describe: DescribeCost = DescribeCost()
    consistency: JudgeCost = JudgeCost()
    saber_test: RelationJudgeCost = RelationJudgeCost()
    train: TrainCost = TrainCost()


# -- outputs -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageEstimate:
    stage: str
    node: NodeName
    clips_in: float
    unit_cost: str  # what one clip costs, for the table
    node_hours: float
    wall_hours: float
    node_usd: float
    api_usd: float = 0.0

    @property
    def total_usd(self) -> float:
        return self.node_usd + self.api_usd


@dataclass(frozen=True)
class Plan:
    clips: int
    kept: float
    build_wall_hours: float  # the slowest streamed stage's (they run concurrently; the SABER-Test judge among them)
    bottleneck: str  # the slowest streamed stage
    stages: list[StageEstimate]

    @property
    def node_hours(self) -> float:
        return sum(s.node_hours for s in self.stages)

    @property
    def node_usd(self) -> float:
        return sum(s.node_usd for s in self.stages)

    @property
    def api_usd(self) -> float:
        return sum(s.api_usd for s in self.stages)

    @property
    def total_usd(self) -> float:
        return self.node_usd + self.api_usd

    def as_dict(self) -> dict[str, Any]:
        stages = [asdict(s) | {"total_usd": s.total_usd} for s in self.stages]
        return {"clips": self.clips, "kept": self.kept, "build_wall_hours": self.build_wall_hours,
                "bottleneck": self.bottleneck, "stages": stages, "node_hours": self.node_hours,
                "node_usd": self.node_usd, "api_usd": self.api_usd, "total_usd": self.total_usd}


# -- arithmetic ----------------------------------------------------------------------------------------------
def cpu_stage(name: str, clips_in: float, cost: MediaCost, node: NodeType) -> StageEstimate:
    cpu_hours = clips_in * cost.cpu_seconds_per_clip / SECONDS_PER_HOUR
    node_hours = cpu_hours / node.cpus / node.utilization
    return StageEstimate(name, "cpu", clips_in, f"{cost.cpu_seconds_per_clip:.3g} CPU-s/clip", node_hours,
                         cpu_hours / cost.max_cpus / node.utilization, node_hours * node.usd_per_hour)


def gpu_stage(name: str, clips_in: float, cost: GpuCost, node: NodeType) -> StageEstimate:
    gpu_hours = clips_in / cost.clips_per_gpu_s / SECONDS_PER_HOUR
    node_hours = gpu_hours / node.gpus / node.utilization
    return StageEstimate(name, "gpu", clips_in, f"{cost.clips_per_gpu_s:.3g} clips/s/GPU", node_hours,
                         gpu_hours / cost.max_gpus / node.utilization, node_hours * node.usd_per_hour)


def api_stage(name: str, clips_in: float, cost: ApiCost, node: NodeType) -> StageEstimate:
    """Wall time is set by the request rate; node-hours are the CPU slots the actors hold meanwhile."""
    called = clips_in * cost.applies
    per_s = cost.sustained_requests_per_s
    wall_hours = called * cost.requests_per_clip / per_s / SECONDS_PER_HOUR
    node_hours = wall_hours * cost.cpus_held / node.cpus
    usd_per_clip = (cost.prompt_tokens_per_clip * cost.usd_per_1m_prompt
                    + cost.completion_tokens_per_clip * cost.usd_per_1m_completion) / 1e6
    unit = f"${usd_per_clip:.4f}/clip {per_s:.3g} req/s {cost.model}"
    return StageEstimate(name, "cpu", clips_in, unit, node_hours, wall_hours,
                         node_hours * node.usd_per_hour, called * usd_per_clip)


def train_stage(kept: float, cost: TrainCost, node: NodeType) -> StageEstimate:
    samples = kept * cost.epochs
    node_hours = samples / cost.samples_per_s_per_node / SECONDS_PER_HOUR / node.utilization
    unit = f"{cost.epochs} epochs, {cost.samples_per_s_per_node:.3g} samples/s/node"
    return StageEstimate("train", "gpu", kept, unit, node_hours, node_hours / cost.nodes,
                         node_hours * node.usd_per_hour)


STREAMED = ("media", "annotate", "asr", "describe", "consistency")


def _streamed_stage(name: str, clips_in: float, cost: ConfigSection, nodes: Nodes) -> StageEstimate:
    if isinstance(cost, MediaCost):
        return cpu_stage(name, clips_in, cost, nodes.cpu)
    if isinstance(cost, GpuCost):
        return gpu_stage(name, clips_in, cost, nodes.gpu)
    return api_stage(name, clips_in, cost, nodes.cpu)


def plan(config: PlanConfig) -> Plan:
    """The streamed funnel, the SABER-Test judge on what is kept, training, then the head for the whole run."""
    remaining = float(config.clips)
    stages: list[StageEstimate] = []
    for name in STREAMED:
        cost = getattr(config, name)
        stages.append(_streamed_stage(name, remaining, cost, config.nodes))
        remaining *= cost.pass_rate
    slowest = max(stages, key=lambda s: s.wall_hours)
    build_wall = slowest.wall_hours
    if config.saber_test.enabled:
        judge = api_stage("saber_test", remaining, config.saber_test, config.nodes.cpu)
        stages.append(judge)
        if config.saber_test.in_stream:  # one more concurrent stage: the stream is as slow as its slowest
            slowest = max(slowest, judge, key=lambda s: s.wall_hours)
            build_wall = slowest.wall_hours
        else:  # after the stream, all at once
            build_wall += judge.wall_hours
    run_wall = build_wall
    if config.train.enabled:
        stages.append(train_stage(remaining, config.train, config.nodes.gpu))
        run_wall += stages[-1].wall_hours
    stages.append(StageEstimate("head", "head", float(config.clips), "whole run", run_wall, run_wall,
                                run_wall * config.nodes.head.usd_per_hour))
    return Plan(config.clips, remaining, build_wall, slowest.stage, stages)
