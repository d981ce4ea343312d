"""What every config-driven job shares: `--config YAML key=value ...`, all config errors at once (exit 2),
the resolved config logged, a Ray connection (local, or the cluster under `ray job submit`), the result as
JSON on stdout. Launchers in jobs/ stay a docstring and one call. `init_ray`: every job's start of Ray (a lighter
local cluster, or the address alone when joining one); `in_process_hint`: the line a small local build logs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from engine.core.config_base import ConfigError, dump_config, load_config


def run_config_job(doc: str, config_type: type[BaseModel], run: Callable[[Any], Any], config_help: str,
                   argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--config", type=Path, help=config_help)
    parser.add_argument("overrides", nargs="*", help="config overrides as dotted key=value")
    args = parser.parse_intermixed_args(argv)
    try:
        config = load_config(config_type, args.config, args.overrides)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    logging.getLogger(config_type.__module__).info("resolved config:\n%s", dump_config(config))
    init_ray(getattr(config, "ray_address", None))
    print(json.dumps(run(config), indent=2, default=str))
    return 0


# ---- starting or joining Ray ------------------------------------------------------------------------------------
DASHBOARD_ENV = "SABER_RAY_DASHBOARD"
# Options only a cluster this process starts accepts (ray.init raises on num_cpus, _system_config, ... when it
# connects). No dashboard UI (the API server still runs, minimal, for jobs and state), and no workers prestarted
# for the first driver: the engine's actor pools start their own processes, and tasks start what they need.
LIGHT_START = {"_system_config": {"prestart_worker_first_driver": False}}


def dashboard_wanted(dashboard: bool | None = None) -> bool:
    """`dashboard`, or else env SABER_RAY_DASHBOARD (1/true/yes, 0/false/no; unset: no)."""
    if dashboard is not None:
        return dashboard
    value = os.environ.get(DASHBOARD_ENV, "").strip().lower()
    if value not in ("", "0", "false", "no", "1", "true", "yes"):
        raise ValueError(f"{DASHBOARD_ENV}={value!r}: use 1/true/yes or 0/false/no")
    return value in ("1", "true", "yes")


def starts_local_cluster(address: str | None) -> bool:
    """Whether ray.init(address) starts a cluster instead of joining one, by Ray's own rule: "local" always starts
    one; None joins RAY_ADDRESS (set under `ray job submit`) or the cluster `ray start` recorded on this machine,
    and starts one only without either; any other address joins."""
    import ray

    if address == "local":
        return True
    if address is not None or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        return False
    from ray._private.services import canonicalize_bootstrap_address  # what ray.init asks: the `ray start` record

    return canonicalize_bootstrap_address(None) is None


def init_ray(address: str | None, *, dashboard: bool | None = None) -> Any:
    """Start or join Ray; the RayContext. Joining (an address, RAY_ADDRESS, a `ray start` cluster, or Ray already
    up in this process) passes the address alone. Starting a local cluster passes the light options above and
    no dashboard unless asked: `dashboard=True` or env SABER_RAY_DASHBOARD=1 (also what a local Prometheus needs:
    the dashboard writes Ray's service-discovery file; the metrics agent runs, and exports, either way).

    Measured on a shared 2-core box, CPU-seconds of Ray's processes (every descendant of the driver, sampled),
    2 runs each, interleaved, default -> these options: ray.init + ray.data.range(1000).map_batches + 20 s idle +
    shutdown 11.2, 10.2 -> 7.8, 7.1 (ray.init 21.9, 10.7 -> 11.4, 2.4 s); a 16-clip demo.yaml build 20.5, 19.0 ->
    16.6, 14.9."""
    import ray

    if not starts_local_cluster(address):
        return ray.init(address=address, ignore_reinit_error=True)
    if dashboard_wanted(dashboard):
        return ray.init(address=address, ignore_reinit_error=True, include_dashboard=True, **LIGHT_START)
    # No dashboard, but a dashboard port of its own where nothing listens: without one Ray advertises 127.0.0.1:8265,
    # where another Ray's dashboard on the machine may answer, and Ray Train's placement-group cleaner, asking that
    # one about this run's controller, takes "not found" for dead and removes a healthy worker group (seen in the
    # tests, tests/conftest.py::start_local_ray).
    return ray.init(address=address, ignore_reinit_error=True, include_dashboard=False,
                    dashboard_port=_free_port(), **LIGHT_START)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dashboard_line(context: Any, local: bool, dashboard: bool | None = None) -> str:
    """What a job prints about the dashboard. A local start without it still runs Ray's API server (minimal, for
    jobs and state), whose address the context carries: that is no dashboard to open."""
    if local and not dashboard_wanted(dashboard):
        return f"Ray dashboard: off on this local Ray ({DASHBOARD_ENV}=1 starts it)"
    url = getattr(context, "dashboard_url", None)
    return f"Ray dashboard: http://{url}" if url else "Ray dashboard: not running"


# ---- the in-process hint ----------------------------------------------------------------------------------------
ENGINE_BENCHMARK = Path(__file__).resolve().parents[2] / "outputs" / "benchmarks" / "engine.json"


def engine_speedups(path: Path = ENGINE_BENCHMARK) -> dict[str, float] | None:
    """Ray Data plan over in-process loop, clips/s, per stage set (the mean of its repeats), from
    `jobs/benchmark.py engine`'s results; None without them."""
    if not path.is_file():
        return None
    ratios: dict[str, list[float]] = {}
    for run in json.loads(path.read_text()).get("runs", []):
        ratios.setdefault(run["stages"], []).append(run["speedup"])
    return {stages: round(sum(r) / len(r), 2) for stages, r in ratios.items()} or None


def in_process_hint(local: bool, cpus: float, gpus: float, clips: int,
                    speedups: dict[str, float] | None) -> str | None:
    """A line for a small run on a local cluster of at most 2 CPUs and no GPU, where Ray's own processes are a
    large share of the work; None elsewhere, and when the measured speedups all say the plan wins here."""
    if not local or cpus > 2 or gpus > 0 or not 0 < clips < 200:
        return None
    if speedups and min(speedups.values()) >= 1:
        return None
    start = (f"{clips} clips on a local Ray of {cpus:g} CPUs and no GPU: Ray's own processes are a large share of "
             "the work here")
    if speedups is None:
        return f"{start}; `python jobs/benchmark.py engine` measures the plan against the same stages in-process"
    measured = ", ".join(f"x{ratio:g} ({stages})" for stages, ratio in speedups.items())
    return (f"{start}: the plan ran at {measured} the clips/s of the same stages in-process "
            "(outputs/benchmarks/engine.json)")
