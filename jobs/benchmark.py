"""Benchmarks, each a ratio against a baseline run in the same process on the same data.

    python jobs/benchmark.py engine [--clips .cache/demo_clips] [--repeats 1] [key=value ...]
    python jobs/benchmark.py engine --realistic 60 [--repeats 1] [key=value ...]
    python jobs/benchmark.py sweep [--realistic 60] [--grid KEY=V1,V2 ...] [--media-only] [--repeats 1] [key=value ...]
    python jobs/benchmark.py engine --peer data-juicer [--realistic 60] [--rounds 4] [--peer-python PY] [key=value ...]
    python jobs/benchmark.py sft [--steps 40] [--zero-stages 3,2] [key=value ...]
    python jobs/benchmark.py isolation [--clips .cache/test_clips/asr] [--repeats 3] [key=value ...]
    python jobs/benchmark.py asr [--clips .cache/test_clips/asr] [--repeats 2] [--batch-sizes 4,16] [key=value ...]
    python jobs/benchmark.py neardup [--clips .cache/demo_clips] [--repeats 3] [--scales 100000,600000]
    python jobs/benchmark.py models

`engine`: clips/s and media-seconds/s of the engine's Ray Data plan (media stages, then media + ASR)
against a plain sequential Python loop running the same stage objects. Writes
outputs/benchmarks/engine.json and engine.png. `--realistic N`: on N generated clips shaped like the corpora's
(H.264 1280x720, AAC 48 kHz stereo, 3-8 s of speech; engine.devkit.realistic_clips, cached in .cache/realistic_clips).
`--peer data-juicer`: instead, the probe stage (probe + technical filter) against Data-Juicer 1.6.1's
video_duration_filter + video_resolution_filter on the same clips and thresholds (media.*), Data-Juicer running in its
own venv (--peer-python), one worker a side, rounds taken in turns (engine.devkit.peer_benchmark). Writes
outputs/benchmarks/peer.json and peer.png.
`sweep`: the engine's clips/s (media + ASR, or media only) under every combination of the --grid settings (dotted
config keys, comma-separated values; default: media task CPUs x ASR actors x ASR clips per call), against the plain
loops measured before and after the sweep in the same process; the best setting is named. Writes
outputs/benchmarks/sweep.json and sweep.png (engine.devkit.sweep). The laptop preset in jobs/configs/demo.yaml came
from this sweep.
`sft`: mean and median step time and peak memory of the SED-SFT recipe (Ray Train, 2 workers, DeepSpeed over gloo,
tiny Omni thinker), once per ZeRO stage, each against a plain single-process PyTorch loop run just before it on the same
model and records (one torch thread and all cores; ratios against the faster); the recipe's first-step and
epoch-boundary waits on data. Writes outputs/benchmarks/sft.json.
`isolation`: milliseconds per clip of probe + decode run in-process against each way of isolating the native
media code (the engine's long-lived child process, a fork per clip, a fresh interpreter per clip), from paths
and from in-memory bytes. Writes outputs/benchmarks/isolation.json.
`asr`: clips/s of Whisper (the config's asr section) transcribing the same decoded clips one by one, batched
(faster-whisper's BatchedInferencePipeline, one 30 s window per clip) and packed (several clips to a window,
asr.pack_seconds, as the ASR actor runs it) at each batch size, and how many transcripts and WER verdicts each
shares with one by one. Writes outputs/benchmarks/asr.json.
`neardup`: milliseconds per clip of the near-duplicate fingerprint stage (frames, audio) on the decoded clips, and the
global step's time and peak memory on that many synthetic clips of the clips' mean length
(engine.devkit.neardup_benchmark). Writes outputs/benchmarks/neardup.json.
`models`: requests/s and requests in flight of an HTTP model stage's actor, one batch at a time against several at
once, on the tests' loopback fake server (200 ms answers, one of 3 s in each batch; engine.devkit.benchmark_models).
Writes outputs/benchmarks/models.json (jobs/plan.py --benchmark takes its window efficiency).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from engine.core.config import EngineConfig, load_config  # noqa: E402
from engine.devkit.benchmarking import benchmark_asr, benchmark_engine, benchmark_isolation  # noqa: E402
from engine.devkit.demo_data import generate_demo_set  # noqa: E402
from engine.devkit.realistic_clips import generate_realistic_set  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def plot(results: dict, path: Path) -> None:
    labels = [f"{r['stages']}\n(x{r['speedup']})" for r in results["runs"]]
    base = [r["baseline"]["clips_per_s"] for r in results["runs"]]
    engine = [r["engine"]["clips_per_s"] for r in results["runs"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], base, 0.4, label="sequential loop")
    ax.bar([x + 0.2 for x in xs], engine, 0.4, label="Ray Data engine")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("clips/s")
    ax.set_title(f"Engine throughput, {results['clips']} clips, {results['cpus']:.0f} CPUs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def benchmark_sft(args: argparse.Namespace) -> int:
    from transformers import AutoProcessor

    from engine.core.config import load_config as load
    from engine.ops.launch import init_ray
    from train.core.config import SftConfig
    from train.core.modeling import resolve_model_path
    from train.data.sed_data import SedEncoder, load_media
    from train.recipes.benchmarking import best_plain_loop, ratios, recipe_summary
    from train.recipes.sft import run

    work = args.out / "sft_work"
    sed_dir = _sed_records_from_demo(args.clips, work / "sed")
    runs = []
    for stage in (int(s) for s in args.zero_stages.split(",")):
        config = load(SftConfig, REPO / "jobs" / "configs" / "sft_demo.yaml", [
            f"data.sed={sed_dir}", f"storage_path={work / 'runs'}", f"name=bench-z{stage}-{int(time.time())}",
            "data.limit=8", f"optim.max_steps={args.steps}", f"checkpoint_every={args.steps}",
            f"report_every={args.steps}", f"distributed.zero_stage={stage}", *args.overrides])
        model_path = resolve_model_path(config.model.path)
        processor = AutoProcessor.from_pretrained(model_path)
        encoder = SedEncoder(processor, config.data)
        records = pq.read_table(sed_dir).to_pylist()[:8]
        examples = [encoder.encode(r, *load_media(r["source_uri"], config.data)) for r in records]
        # The baselines right before each recipe run: a busy machine's load drifts less between the two.
        baselines = best_plain_loop(config, examples, args.steps, processor.tokenizer.pad_token_id, os.cpu_count() or 1)
        init_ray(None)
        summary = run(config)
        rows = [json.loads(line) for line in Path(summary["run_dir"], "metrics.jsonl").read_text().splitlines()]
        recipe = recipe_summary(rows, config.optim.global_batch)
        runs.append({"zero_stage": config.distributed.zero_stage, "baseline_plain_torch": baselines,
                     "ray_train_deepspeed": recipe, **ratios(baselines[0], recipe),
                     "ratios_per_baseline": {f"threads_{b['threads']}": ratios(b, recipe) for b in baselines}})
    results = {"steps": args.steps, "records": 8, "global_batch": config.optim.global_batch,
               "workers": config.distributed.num_workers, "runs": runs}
    return save_results(args.out, "sft", results)


def save_results(out: Path, name: str, results: dict, plot_to: Callable[[dict, Path], None] | None = None) -> int:
    """OUT/<name>.json (and OUT/<name>.png when the benchmark has a plot), the results on stdout; exit status 0."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2))
    if plot_to is not None:
        plot_to(results, out / f"{name}.png")
    print(json.dumps(results, indent=2))
    print(f"wrote {out / name}.json" + (f" and {name}.png" if plot_to is not None else ""))
    return 0


def _sed_records_from_demo(clips: Path, out: Path) -> Path:
    """SED records for the demo set's correctly annotated clips (what build_saber would keep)."""
    from engine.core.schema import clip_id_for
    from engine.core.sed import SED_SCHEMA, sed_record
    from engine.devkit.demo_data import load_expected
    from engine.models.annotation import parse_annotation

    rows = []
    for clip in load_expected(clips):
        if clip.kind == "good":
            uri = str((clips / clip.name).resolve())
            fields = parse_annotation((clips / clip.name).with_suffix(".json").read_text())
            rows.append(sed_record({"clip_id": clip_id_for(uri), "source_uri": uri, "lang": "en", **fields}))
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SED_SCHEMA), out / "part-00000.parquet")
    return out


def write_isolation(args: argparse.Namespace, config: EngineConfig) -> int:
    results = benchmark_isolation(sorted(args.clips.glob("*.mp4")), config.media, max(args.repeats, 3))
    return save_results(args.out, "isolation", results)


def write_asr(args: argparse.Namespace, config: EngineConfig) -> int:
    sizes = tuple(int(size) for size in args.batch_sizes.split(","))
    results = benchmark_asr(config, max(args.repeats, 2), sizes)
    return save_results(args.out, "asr", results)


def write_neardup(args: argparse.Namespace, config: EngineConfig) -> int:
    from engine.devkit.neardup_benchmark import fingerprint_cost, step_cost

    stage = fingerprint_cost(sorted(args.clips.glob("*.mp4")), config, max(args.repeats, 3))
    scales = [int(n) for n in args.scales.split(",")]
    results = {"fingerprint": stage, "step": step_cost(scales, stage["mean_duration_s"])}
    return save_results(args.out, "neardup", results)


def write_models(args: argparse.Namespace) -> int:
    from engine.devkit.benchmark_models import benchmark_models
    from engine.devkit.fake_openai import FakeOpenAI

    results = benchmark_models(FakeOpenAI)
    return save_results(args.out, "models", results)


def write_sweep(args: argparse.Namespace, config: EngineConfig) -> int:
    from engine.dataset.sources import list_source
    from engine.devkit.sweep import DEFAULT_GRID, benchmark_sweep, parse_grid, plot_sweep

    source = list_source(config.input, config.dataset, config.lang, config.source_video_pattern)
    source = source.slice(0, config.limit) if config.limit else source
    grid = parse_grid(args.grid) if args.grid else DEFAULT_GRID
    results = benchmark_sweep(source, config, grid, with_asr=not args.media_only, repeats=args.repeats,
                              threads=os.cpu_count() or 1)
    results["clip_set"] = str(args.clips)
    return save_results(args.out, "sweep", results, plot_sweep)


def write_peer(args: argparse.Namespace, config: EngineConfig) -> int:
    from engine.devkit.peer_benchmark import benchmark_peer

    paths = sorted(args.clips.glob("*.mp4"))[: config.limit or None]
    results = benchmark_peer(paths, config.media, args.peer_python, args.out / "peer_work", args.rounds)
    results["clip_set"] = str(args.clips)
    return save_results(args.out, "peer", results, plot_peer)


def plot_peer(results: dict, path: Path) -> None:
    ways = results["ways"]
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = ["tab:blue" if w["side"] == "engine" else "tab:orange" for w in ways.values()]
    ax.bar(range(len(ways)), [w["clips_per_s_median"] for w in ways.values()], color=colours)
    ax.set_xticks(range(len(ways)), [name.replace("_", "\n", 1) for name in ways], fontsize=8)
    ax.set_ylabel("clips/s (median of rounds)")
    ax.set_title(f"Probe + technical filter vs Data-Juicer, {results['clips']} clips, one worker a side")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=["engine", "sweep", "sft", "isolation", "asr", "neardup", "models"],
                        help="what to benchmark")
    parser.add_argument("--steps", type=int, default=40, help="sft: optimizer steps on each side (4 per epoch)")
    parser.add_argument("--zero-stages", default="3,2", help="sft: DeepSpeed ZeRO stages to run, comma-separated")
    parser.add_argument("--clips", type=Path, default=REPO / ".cache" / "demo_clips",
                        help="clip folder; generated (the demo set) when missing")
    parser.add_argument("--config", type=Path, default=REPO / "jobs" / "configs" / "demo.yaml", help="engine config")
    parser.add_argument("--repeats", type=int, default=1,
                        help="engine: baseline/engine pairs per stage set; isolation: passes per way (best counts)")
    parser.add_argument("--batch-sizes", default="4,16", help="asr: clips per batched call, comma-separated")
    parser.add_argument("--scales", default="100000,600000", help="neardup: clip counts for the global step")
    parser.add_argument("--realistic", type=int, default=0, metavar="N",
                        help="engine: N generated 720p/48 kHz stereo clips (in .cache/realistic_clips unless --clips)")
    parser.add_argument("--peer", choices=["data-juicer"], help="engine: probe stage against a peer's filters instead")
    parser.add_argument("--peer-python", type=Path,
                        default=Path(os.environ.get("DJ_PYTHON", "/work/venvs/dj/bin/python")),
                        help="engine --peer: Python of the venv with Data-Juicer 1.6.1 (env DJ_PYTHON)")
    parser.add_argument("--rounds", type=int, default=4, help="engine --peer: timed rounds, sides taking turns")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="sweep: a config key and its values (repeatable; default: sweep.DEFAULT_GRID)")
    parser.add_argument("--media-only", action="store_true", help="sweep: the media stages only, no ASR")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmarks", help="where the JSON/PNG go")
    parser.add_argument("overrides", nargs="*", help="config overrides as dotted key=value")
    args = parser.parse_intermixed_args(argv)
    if args.target == "models":
        return write_models(args)
    if args.realistic:
        if args.clips == REPO / ".cache" / "demo_clips":
            args.clips = REPO / ".cache" / "realistic_clips"
        generate_realistic_set(args.clips, args.realistic)
    if not args.clips.exists():
        generate_demo_set(args.clips)
    if args.target == "sft":
        return benchmark_sft(args)
    config = load_config(EngineConfig, args.config, args.overrides,
                         {"input": str(args.clips.resolve()), "output": str(args.out.resolve())})
    if args.target == "isolation":
        return write_isolation(args, config)
    if args.target == "asr":
        return write_asr(args, config)
    if args.target == "neardup":
        return write_neardup(args, config)
    if args.peer:
        return write_peer(args, config)
    if args.target == "sweep":
        return write_sweep(args, config)
    return save_results(args.out, "engine", benchmark_engine(config, args.repeats), plot)


if __name__ == "__main__":
    sys.exit(main())
