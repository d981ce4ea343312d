"""Engine throughput: the Ray Data plan against a plain sequential loop over the same stage objects; the
cost per clip of isolating the native media code (engine.core.isolation) against running it in-process; and Whisper
transcribing clips batched against one by one.

Both sides of each comparison do identical work per clip, on the same clips, in one process run, so the
ratio says what the distribution (or the isolation) costs or buys on this machine and nothing else.
"""

from __future__ import annotations

import io
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from engine.core.config import EngineConfig, MediaConfig
from engine.core.isolation import ChildProcess
from engine.core.media import CHILD_PRELOAD, MediaError, NativeCalls, encode_clip
from engine.core.schema import AUDIO_SAMPLE_RATE, is_alive
from engine.core.text import error_rate, normalise
from engine.dataset.pipeline import build_plan, media_stages, source_to_rows
from engine.dataset.sources import list_source
from engine.models.backends.whisper import load_whisper, transcribe, transcribe_batch
from engine.ops.launch import init_ray
from engine.stages.asr import AsrWerFilterStage
from engine.stages.decode import audio_from_row


@dataclass(frozen=True)
class Throughput:
    name: str
    clips: int
    seconds: float
    media_seconds: float
    # engine runs: seconds until the driver held its first rows, and bytes per clip each operator handed on
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds

    @property
    def media_seconds_per_s(self) -> float:
        return self.media_seconds / self.seconds

    def as_dict(self) -> dict[str, float | int | str]:
        return {k: v for k, v in asdict(self).items() if k != "extra"} | self.extra | {
            "clips_per_s": round(self.clips_per_s, 3), "media_seconds_per_s": round(self.media_seconds_per_s, 3)}


def _media_seconds(rows: list[dict]) -> float:
    return sum(r["duration_s"] or 0.0 for r in rows)


def sequential(source: pa.Table, config: EngineConfig, with_asr: bool, asr_threads: int | None = None) -> Throughput:
    """The baseline: one process, one clip after another, stages built once.

    Model loading is inside the timer, as it is for the engine (its actors load models while it runs).

    `asr_threads` lets the baseline's Whisper use several cores itself (CTranslate2 intra-op threads),
    the strongest single-process loop on a multi-core machine.
    """
    started = time.perf_counter()
    stages = [factory() for factory in media_stages(config)]
    asr_config = config.asr.model_copy(update={"cpu_threads": asr_threads or config.asr.cpu_threads})
    asr = AsrWerFilterStage(asr_config) if with_asr else None
    done = []
    for row in source_to_rows(source):
        rows = [row]
        for stage in stages:
            rows = stage(rows)
        rows[0].pop("_media", None)
        if asr is not None and is_alive(rows[0]):
            rows = asr(rows)
        done += rows
    name = f"sequential{'+asr' if with_asr else ''}{f' ({asr_threads} threads)' if asr_threads else ''}"
    return Throughput(name, len(done), time.perf_counter() - started, _media_seconds(done))


def distributed(source: pa.Table, config: EngineConfig, with_asr: bool) -> Throughput:
    """The engine's plan on the running Ray, drained to the driver like build_saber does; also when the first rows
    arrived and the object-store bytes per clip each operator output."""
    config = config.model_copy(update={"asr": config.asr.model_copy(update={"enabled": with_asr})})
    started = time.perf_counter()
    rows, first = [], None
    plan = build_plan(source, config)
    for batch in plan.iter_batches(batch_format="pyarrow", batch_size=None):
        first = time.perf_counter() - started if first is None else first
        rows += batch.select(["duration_s"]).to_pylist()
    seconds = time.perf_counter() - started
    extra = {"first_rows_seconds": round(first or seconds, 2), "bytes_per_clip_out": operator_bytes_per_row(plan)}
    return Throughput(f"ray_data{'+asr' if with_asr else ''}", len(rows), seconds, _media_seconds(rows), extra)


def operator_bytes_per_row(dataset: ray.data.Dataset) -> dict[str, int]:
    """Each executed operator's output bytes per output row (what it put in the object store per clip), from the
    dataset's stats (Ray Data's own accounting; the same figures `Dataset.stats()` prints). Empty if Ray's internal
    stats API changed: the benchmark's other figures do not depend on it."""
    try:
        summaries, out = [dataset._get_stats_summary()], {}  # noqa: SLF001 - the structured form of stats()' text
        while summaries:  # each operator's summary holds the ones before it as parents
            summary = summaries.pop()
            summaries += summary.parents
            out.update({op.operator_name: round(op.output_size_bytes.sum / op.output_num_rows.sum)
                        for op in summary.operators_stats if op.output_num_rows and op.output_num_rows.sum})
        return out
    except (AttributeError, TypeError):
        return {}


def start_ray(config: EngineConfig) -> dict[str, float | None]:
    """Ray started (or joined) as the jobs do it: how long that took, and the cluster's CPUs."""
    started = time.perf_counter()
    init_ray(config.ray_address)
    return {"ray_start_seconds": round(time.perf_counter() - started, 2), "cpus": ray.cluster_resources().get("CPU")}


def benchmark_engine(config: EngineConfig, repeats: int = 1) -> dict:
    source = list_source(config.input, config.dataset, config.lang, config.source_video_pattern)
    if config.limit:
        source = source.slice(0, config.limit)
    results: dict = {"clips": source.num_rows, **start_ray(config), "runs": []}
    cores = os.cpu_count() or 1
    for with_asr in (False, True):
        for _ in range(repeats):
            base = sequential(source, config, with_asr)
            engine = distributed(source, config, with_asr)
            run = {"stages": "media+asr" if with_asr else "media", "baseline": base.as_dict(),
                   "engine": engine.as_dict(), "speedup": round(engine.clips_per_s / base.clips_per_s, 3)}
            if with_asr and cores > 1:
                threaded = sequential(source, config, with_asr, asr_threads=cores)
                run["baseline_all_threads"] = threaded.as_dict()
                run["speedup_vs_all_threads"] = round(engine.clips_per_s / threaded.clips_per_s, 3)
            results["runs"].append(run)
    return results


# ---- media isolation ------------------------------------------------------------------------------------------
ProbeDecode = Callable[[Any, dict[str, Any]], Any]  # (source, decode kwargs) -> (ProbeResult, EncodedClip)


def _through(native: Any) -> ProbeDecode:
    """Probe then decode as the stages do: two calls through `native` (NativeCalls, or a per-clip wrapper)."""
    def run(source: Any, kwargs: dict[str, Any]) -> Any:
        probed = native("engine.core.media.probe", source)
        return probed, native("engine.core.media.decode_encoded", "engine.core.media.decode", source, probed, **kwargs)
    return run


def _raw_frames_back(native: Any) -> ProbeDecode:
    """As _through, but the decoded frames cross as arrays and are JPEG-encoded on this side."""
    def run(source: Any, kwargs: dict[str, Any]) -> Any:
        probed = native("engine.core.media.probe", source)
        decode_kwargs = {key: value for key, value in kwargs.items() if key != "jpeg_quality"}
        return probed, encode_clip(native("engine.core.media.decode", source, probed, **decode_kwargs),
                                   kwargs["jpeg_quality"])
    return run


def _native(isolation: str, config: MediaConfig) -> Callable[..., Any]:
    calls = NativeCalls("bench", isolation, config.decode_timeout_s, config.decode_attempts)
    return lambda function, *args, **kwargs: calls.run("bench", function, *args, **kwargs)


def _engine_calls(isolation: str, config: MediaConfig) -> ProbeDecode:
    return _through(_native(isolation, config))


def _forked(run: ProbeDecode) -> ProbeDecode:
    """`run` in a fork of this process per clip, its result pickled back through a pipe."""
    def forked(source: Any, kwargs: dict[str, Any]) -> Any:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_fd)
            status = 1
            try:
                with os.fdopen(write_fd, "wb") as out:
                    out.write(pickle.dumps(run(source, kwargs), pickle.HIGHEST_PROTOCOL))
                status = 0
            finally:
                os._exit(status)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as result:
            data = result.read()
        if os.waitpid(pid, 0)[1] != 0:
            raise RuntimeError("forked probe/decode failed")
        return pickle.loads(data)
    return forked


def _fresh_interpreter_per_clip(source: Any, kwargs: dict[str, Any]) -> Any:
    child = ChildProcess(CHILD_PRELOAD)
    try:
        return _through(lambda function, *args, **kw: child.call(function, args, kw, 120.0))(source, kwargs)
    finally:
        child.close()


def benchmark_isolation(paths: list[Path], config: MediaConfig, repeats: int = 3) -> dict[str, Any]:
    """Seconds per clip of the probe and decode stages' work (probe, decode, JPEG-encode the frames) in-process
    and isolated each way, from local paths and from in-memory bytes (what a remote clip is), on the same clips
    in the same process; per clip the fastest of `repeats` tries, the ways taking turns clip by clip so that a
    busy spell hits every way alike. `long_lived_child_raw_frames` sends the raw frames back and encodes them
    here (what the child saves by encoding them itself). Clips the media code rejects are left out.
    """
    kwargs = {"fps": config.fps, "max_frames": config.max_frames, "max_side": config.max_frame_side,
              "sample_rate": AUDIO_SAMPLE_RATE, "jpeg_quality": config.jpeg_quality}
    in_process = _engine_calls("none", config)
    usable, reference = [], []
    for path in paths:  # also warms the page cache and this process's imports
        try:
            reference.append(in_process(str(path), kwargs))
            usable.append(path)
        except MediaError:
            continue
    started = time.perf_counter()
    child = _engine_calls("process", config)
    child(str(usable[0]), kwargs)  # starts this process's media child
    child_start_s = time.perf_counter() - started
    blobs = [path.read_bytes() for path in usable]
    ways: dict[str, tuple[ProbeDecode, str]] = {
        "in_process": (in_process, "path"),
        "long_lived_child": (child, "path"),
        "long_lived_child_raw_frames": (_raw_frames_back(_native("process", config)), "path"),
        "fork_per_clip": (_forked(in_process), "path"),
        "fresh_interpreter_per_clip": (_fresh_interpreter_per_clip, "path"),
        "in_process_bytes": (in_process, "bytes"),
        "long_lived_child_bytes": (child, "bytes"),
    }
    best = {name: [float("inf")] * len(usable) for name in ways}  # per way, per clip: the fastest pass
    identical = dict.fromkeys(ways, True)
    for _ in range(repeats):
        for i, path in enumerate(usable):
            for name, (run, kind) in ways.items():
                source = str(path) if kind == "path" else io.BytesIO(blobs[i])
                started = time.perf_counter()
                result = run(source, kwargs)
                best[name][i] = min(best[name][i], time.perf_counter() - started)
                identical[name] &= result == reference[i]  # ProbeResult, EncodedClip: every field, bytes included
    mean = {name: sum(times) / len(times) for name, times in best.items()}
    base = {"path": mean["in_process"], "bytes": mean["in_process_bytes"]}
    return {"clips": len(usable), "repeats": repeats, "child_start_s": round(child_start_s, 3),
            "cpus": os.cpu_count(),
            "ways": {name: {"ms_per_clip": round(mean[name] * 1000, 2),
                            "ratio_to_in_process": round(mean[name] / base[kind], 3),
                            "same_result_as_in_process": identical[name]}
                     for name, (_, kind) in ways.items()}}


# ---- batched ASR ----------------------------------------------------------------------------------------------
def benchmark_asr(config: EngineConfig, repeats: int = 2, batch_sizes: tuple[int, ...] = (4, 16)) -> dict[str, Any]:
    """Clips/s of Whisper on the same decoded clips, one by one (WhisperModel.transcribe: the ASR actor before
    batching), batched (transcribe_batch, `size` clips per call, one 30 s window each) and packed (`size` clips per
    call sharing windows of asr.pack_seconds, 30 when the config has packing off; the actor with packing on) at
    each batch size, with one model object in one process; the best of `repeats` passes each, passes interleaved so
    that a busy spell hits every way alike. The process's CPU time per pass is reported beside the wall time: on a
    shared machine it shows the work each way does apart from what other processes take. Also how many transcripts
    and WER verdicts (asr.max_wer) the other ways share with the one-by-one way."""
    rows = _decoded_rows(config)
    clips = [audio_from_row(row) for row in rows]
    model = load_whisper(config.asr)
    language = (config.asr.language or "en") if model.model.is_multilingual else None
    beam = config.asr.beam_size
    transcribe(model, clips[0], language, beam)  # warm-up: first-call allocations and caches
    ways: dict[str, Callable[[], list[str]]] = {
        "one_by_one": lambda: [transcribe(model, clip, language, beam).text for clip in clips]}
    for size in batch_sizes:
        ways[f"batched_{size}"] = lambda size=size: [
            t.text for start in range(0, len(clips), size)
            for t in transcribe_batch(model, clips[start:start + size], language, beam, size)]
    pack, gap = config.asr.pack_seconds or 30.0, config.asr.pack_gap_seconds
    for size in batch_sizes:
        ways[f"packed_{size}"] = lambda size=size: [
            t.text for start in range(0, len(clips), size)
            for t in transcribe_batch(model, clips[start:start + size], language, beam, size, pack, gap)]
    best, cpu = dict.fromkeys(ways, float("inf")), dict.fromkeys(ways, float("inf"))
    texts: dict[str, list[str]] = {}
    for _ in range(repeats):
        for name, run in ways.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            texts[name] = run()
            best[name] = min(best[name], time.perf_counter() - started)
            cpu[name] = min(cpu[name], time.process_time() - started_cpu)
    audio_s = sum(clip.size for clip in clips) / AUDIO_SAMPLE_RATE
    rates = {name: _rates(rows, found) for name, found in texts.items()}
    verdicts = {name: [None if rate is None else rate > config.asr.max_wer for rate in found]
                for name, found in rates.items()}
    return {"clips": len(clips), "audio_seconds": round(audio_s, 2), "repeats": repeats, "cpus": os.cpu_count(),
            "model": config.asr.model, "device": config.asr.device, "compute_type": config.asr.compute_type,
            "cpu_threads": config.asr.cpu_threads, "beam_size": beam, "pack_seconds": pack, "pack_gap_seconds": gap,
            "ways": {name: {"seconds": round(best[name], 3), "clips_per_s": round(len(clips) / best[name], 3),
                            "audio_s_per_s": round(audio_s / best[name], 2),
                            "ratio_to_one_by_one": round(best["one_by_one"] / best[name], 3),
                            "cpu_seconds": round(cpu[name], 3),
                            "cpu_ratio_to_one_by_one": round(cpu["one_by_one"] / cpu[name], 3),
                            "same_transcript_as_one_by_one": sum(
                                a == b for a, b in zip(texts[name], texts["one_by_one"], strict=True)),
                            "same_verdict_as_one_by_one": sum(
                                a == b for a, b in zip(verdicts[name], verdicts["one_by_one"], strict=True)),
                            "rejected_by_wer": sum(v is True for v in verdicts[name]),
                            "mean_wer_of_accepted": _mean_of_accepted(rates[name], verdicts["one_by_one"])}
                     for name in ways}}


def _decoded_rows(config: EngineConfig) -> list[dict]:
    """The source's clips through the media stages (as the engine runs them): the live rows, audio decoded."""
    source = list_source(config.input, config.dataset, config.lang, config.source_video_pattern)
    rows = source_to_rows(source.slice(0, config.limit) if config.limit else source)
    for factory in media_stages(config):
        rows = factory()(rows)
    live = [row for row in rows if is_alive(row)]
    if not live:
        raise ValueError(f"no clip of {config.input} survives the media stages")
    return live


def _rates(rows: list[dict], texts: list[str]) -> list[float | None]:
    """The WER (CER for Chinese) of each transcript against the annotated speech, None where there is none."""
    rates: list[float | None] = []
    for row, text in zip(rows, texts, strict=True):
        reference, lang = row["speech_content"], row["lang"]
        checked = bool(reference) and bool(normalise(reference, lang))
        rates.append(error_rate(reference, text, lang)[1] if checked else None)
    return rates


def _mean_of_accepted(rates: list[float | None], accepted: list[bool | None]) -> float | None:
    """Mean error rate over the clips the one-by-one way accepted (its verdict False): on correctly annotated speech
    it measures the transcripts themselves, apart from the planted wrong ones."""
    kept = [rate for rate, ok in zip(rates, accepted, strict=True) if ok is False and rate is not None]
    return round(sum(kept) / len(kept), 4) if kept else None
