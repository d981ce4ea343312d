"""engine.ops.launch.init_ray: what reaches ray.init when a job starts a local Ray and when it joins one, the dashboard
switch, and the in-process hint of a small local build.

Nothing here starts Ray: ray.init is replaced by a recorder, and Ray's lookup of a `ray start` cluster on this machine
is pinned (another session's may be running)."""

from __future__ import annotations

import json
import socket

import pytest
import ray
import ray._private.services as services

from engine.ops import launch
from engine.ops.launch import dashboard_line, engine_speedups, in_process_hint, init_ray, starts_local_cluster

START = {"address": None, "ignore_reinit_error": True, "include_dashboard": False,
         "_system_config": {"prestart_worker_first_driver": False}}


def _port_checked(kwargs: dict) -> dict:
    """The call without its dashboard port, after checking one is given exactly when the dashboard is off (a free
    port of its own, so that nothing answers on Ray's default 8265 for this cluster) and is free."""
    kwargs = dict(kwargs)
    port = kwargs.pop("dashboard_port", None)
    assert (port is not None) == (kwargs.get("include_dashboard") is False), kwargs
    if port is not None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # nothing holds it
    return kwargs


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """The keyword arguments of every ray.init call, on a machine with no Ray running and no RAY_ADDRESS."""
    seen: list[dict] = []
    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: seen.append(_port_checked(kwargs)) or "context")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: None)
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: [])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(launch.DASHBOARD_ENV, raising=False)
    return seen


def test_a_local_start_is_light_and_has_no_dashboard(calls):
    assert init_ray(None) == "context"
    assert calls == [START]


def test_local_always_starts_one_even_under_ray_address(calls, monkeypatch):
    """Ray's rule: "local" never reads RAY_ADDRESS."""
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    init_ray("local")
    assert calls == [{**START, "address": "local"}]


@pytest.mark.parametrize("address", ["10.0.0.1:6379", "auto", "ray://head:10001"])
def test_joining_a_cluster_passes_the_address_alone(calls, address):
    """ray.init raises on start options (num_cpus, _system_config, ...) when it connects."""
    init_ray(address, dashboard=True)
    assert calls == [{"address": address, "ignore_reinit_error": True}]


@pytest.mark.parametrize("env", ["10.0.0.1:6379", "http://127.0.0.1:8265"])
def test_under_ray_address_the_job_joins(calls, monkeypatch, env):
    """`ray job submit` sets it in the job; a shell may hold the submission client's http address (Ray Client)."""
    monkeypatch.setenv("RAY_ADDRESS", env)
    assert not starts_local_cluster(None)
    init_ray(None)
    assert calls == [{"address": None, "ignore_reinit_error": True}]


def test_a_cluster_ray_start_recorded_on_this_machine_is_joined(calls, monkeypatch):
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: "127.0.0.1:6379")
    init_ray(None)
    assert calls == [{"address": None, "ignore_reinit_error": True}]


def test_ray_already_up_in_this_process_is_joined(calls, monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    init_ray(None)
    assert calls == [{"address": None, "ignore_reinit_error": True}]


@pytest.mark.parametrize(("env", "argument", "included"), [
    ("1", None, True), ("true", None, True), ("YES", None, True), ("0", None, False), ("", None, False),
    (None, True, True), ("1", False, False),
])
def test_the_dashboard_switch(calls, monkeypatch, env, argument, included):
    if env is not None:
        monkeypatch.setenv(launch.DASHBOARD_ENV, env)
    init_ray(None, dashboard=argument)
    assert calls == [{**START, "include_dashboard": included}]


def test_a_bad_dashboard_switch_names_the_variable(calls, monkeypatch):
    monkeypatch.setenv(launch.DASHBOARD_ENV, "maybe")
    with pytest.raises(ValueError, match="SABER_RAY_DASHBOARD='maybe'"):
        init_ray(None)
    assert calls == []


class Context:
    dashboard_url = "127.0.0.1:8265"


def test_the_dashboard_line(monkeypatch):
    """A local start without the dashboard still has an API server address: not a dashboard to open."""
    monkeypatch.delenv(launch.DASHBOARD_ENV, raising=False)
    off = "Ray dashboard: off on this local Ray (SABER_RAY_DASHBOARD=1 starts it)"
    assert dashboard_line(Context(), local=True) == off
    assert dashboard_line(Context(), local=True, dashboard=True) == "Ray dashboard: http://127.0.0.1:8265"
    assert dashboard_line(Context(), local=False) == "Ray dashboard: http://127.0.0.1:8265"
    assert dashboard_line(object(), local=False) == "Ray dashboard: not running"


# ---- the in-process hint ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("local", "cpus", "gpus", "clips"), [
    (False, 2, 0, 48),  # a cluster
    (True, 4, 0, 48),  # more CPUs
    (True, 2, 1, 48),  # a GPU
    (True, 2, 0, 200),  # enough clips
    (True, 2, 0, 0),  # nothing to do
])
def test_no_hint_outside_a_small_local_run(local, cpus, gpus, clips):
    assert in_process_hint(local, cpus, gpus, clips, None) is None


def test_the_hint_without_a_measurement_says_how_to_measure():
    hint = in_process_hint(True, 2, 0, 48, None)
    assert hint.startswith("48 clips on a local Ray of 2 CPUs and no GPU: Ray's own processes are a large share")
    assert hint.endswith("`python jobs/benchmark.py engine` measures the plan against the same stages in-process")
    assert in_process_hint(True, 1.0, 0, 199, None).startswith("199 clips on a local Ray of 1 CPUs")


def test_the_hint_quotes_the_measured_ratios():
    hint = in_process_hint(True, 2, 0, 48, {"media": 0.41, "media+asr": 1.2})
    assert hint.endswith(": the plan ran at x0.41 (media), x1.2 (media+asr) the clips/s of the same stages "
                         "in-process (outputs/benchmarks/engine.json)")


def test_no_hint_where_the_measurement_says_the_plan_wins():
    assert in_process_hint(True, 2, 0, 48, {"media": 1.3, "media+asr": 1.0}) is None


def test_engine_speedups_averages_the_repeats(tmp_path):
    path = tmp_path / "engine.json"
    assert engine_speedups(path) is None
    runs = [{"stages": "media", "speedup": 0.5}, {"stages": "media", "speedup": 0.6},
            {"stages": "media+asr", "speedup": 0.9}]
    path.write_text(json.dumps({"clips": 48, "runs": runs}))
    assert engine_speedups(path) == {"media": 0.55, "media+asr": 0.9}
    path.write_text(json.dumps({"clips": 48, "runs": []}))
    assert engine_speedups(path) is None


def test_the_build_logs_the_hint_from_the_cluster_it_runs_on(monkeypatch, caplog):
    from engine.dataset import build

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "memory": 1e9})
    monkeypatch.setattr(launch, "engine_speedups", lambda: {"media": 0.5})
    with caplog.at_level("INFO", logger="engine.dataset.build"):
        build.hint_if_ray_overhead_dominates(48)
    assert [r.getMessage() for r in caplog.records] == [
        "[build_saber] 48 clips on a local Ray of 2 CPUs and no GPU: Ray's own processes are a large share of the "
        "work here: the plan ran at x0.5 (media) the clips/s of the same stages in-process "
        "(outputs/benchmarks/engine.json)"]
