"""Native media code in a child process: a real SIGSEGV, abort or hang costs one clip; results equal in-process.

`faulty_decode` is the decoder the tests (and the SIGKILL build in tests/jobs/test_build_saber.py) name in
`media.decoder`: it crashes or hangs for marked file names and is engine.core.media.decode otherwise.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from engine.core import isolation, media
from engine.core.media import CHILD_PRELOAD, MediaError, NativeCalls

FAULTS = {"crash_me": "segv", "abort_me": "abort", "hang_me": "hang"}


def faulty_decode(source, probed, **kwargs):
    """engine.core.media.decode, except for a file whose name holds a FAULTS mark: each call is logged to
    `<file>.calls` (the child dies, so it cannot count in memory), then it faults for real."""
    name = Path(source).name if isinstance(source, str) else ""
    fault = next((kind for mark, kind in FAULTS.items() if mark in name), None)
    if fault is not None:
        with open(f"{source}.calls", "a") as log:
            log.write(f"{os.getpid()}\n")
    if fault == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif fault == "abort":
        os.abort()
    elif fault == "hang":
        time.sleep(3600)
    return media.decode(source, probed, **kwargs)


def _calls(path: Path) -> list[str]:
    calls = Path(f"{path}.calls")
    return calls.read_text().split() if calls.exists() else []


# ---- the child process itself ----------------------------------------------------------------------------------
def test_errors_come_back_as_themselves_with_the_childs_traceback():
    child = isolation.ChildProcess()
    try:
        assert child.call("os.getpid") == child.pid != os.getpid()
        with pytest.raises(MediaError) as info:
            child.call("engine.core.media.probe", ("/nonexistent/clip.mp4",))
        assert info.value.reason == "unreadable_container" and "No such file" in info.value.detail
        with pytest.raises(ZeroDivisionError) as info:
            child.call("operator.truediv", (1, 0))
        cause = info.value.__cause__
        assert isinstance(cause, isolation.ChildTraceback) and "in media child" in str(cause)
        assert "ZeroDivisionError" in str(cause)
        with pytest.raises(TypeError, match="cannot pickle '_thread.lock'"):
            child.call("threading.Lock")  # a result that cannot cross: an error, not a crash
        pid = child.pid
        assert child.call("operator.add", (2, 3)) == 5 and child.pid == pid  # errors do not cost the child
    finally:
        child.close()
    with pytest.raises(ModuleNotFoundError, match="no_such_media_module"):
        isolation.ChildProcess(preload=("no_such_media_module",)).call("os.getpid")


def test_a_crash_names_the_signal_and_the_next_call_gets_a_fresh_child():
    child = isolation.ChildProcess()
    try:
        first = child.call("os.getpid")
        with pytest.raises(isolation.ChildCrashed, match="killed by SIGABRT") as info:
            child.call("os.abort")
        assert info.value.returncode == -signal.SIGABRT
        assert child.call("os.getpid") != first
    finally:
        child.close()


def test_a_hang_is_killed_at_its_time_limit():
    child = isolation.ChildProcess()
    try:
        pid = child.call("os.getpid")
        started = time.monotonic()
        with pytest.raises(isolation.ChildTimedOut, match="after 0.5 s"):
            child.call("time.sleep", (60,), timeout_s=0.5)
        assert 0.5 <= time.monotonic() - started < 5
        assert not _alive(pid)
        assert child.call("operator.add", (1, 1)) == 2
    finally:
        child.close()


def test_a_child_that_died_while_idle_is_replaced_without_failing_a_call():
    child = isolation.ChildProcess()
    try:
        pid = child.call("os.getpid")
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)
        assert child.call("os.getpid") not in (pid, None)
    finally:
        child.close()


def test_the_child_dies_with_its_parent_even_when_hung(tmp_path):
    """SIGKILL the parent while its child hangs: the child must not live on as an orphan."""
    script = ("from engine.core.isolation import ChildProcess\nchild = ChildProcess()\n"
              "print(child.call('os.getpid'), flush=True)\nchild.call('time.sleep', (600,), timeout_s=600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        child_pid = int(parent.stdout.readline())
        time.sleep(0.3)  # the child is in its sleep
        assert _alive(child_pid)
    finally:
        parent.kill()
        parent.wait()
    gone = _wait_gone(child_pid)
    if not gone:
        os.kill(child_pid, signal.SIGKILL)
    assert gone, "the child outlived its parent"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"  # a zombie is dead, only not yet collected
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# ---- through the stages -------------------------------------------------------------------------------------------
def _media_config(**fields):
    from engine.core.config import MediaConfig

    return MediaConfig(**fields)


def _through_stages(uris, config):
    from engine.core.schema import new_row
    from engine.stages.decode import DecodeStage
    from engine.stages.probe import ProbeStage

    rows = [new_row(uri) for uri in uris]
    for stage in (ProbeStage(config), DecodeStage(config)):
        rows = stage(rows)
    for row in rows:
        row.pop("_media", None)
    return rows


def test_isolated_rows_equal_in_process_rows_for_every_planted_file(small_set):
    """Every column of every row, frames and audio bytes included, from paths and from in-memory bytes (a remote
    clip): the child changes where the work runs, nothing else."""
    folder, clips = small_set
    uris = [str(folder / clip.name) for clip in clips]
    memory = fsspec.filesystem("memory")
    for clip in clips[:6]:
        memory.pipe_file(f"/isolation/{clip.name}", (folder / clip.name).read_bytes())
    uris += [f"memory://isolation/{clip.name}" for clip in clips[:6]]
    in_process = _through_stages(uris, _media_config(isolation="none"))
    isolated = _through_stages(uris, _media_config(isolation="process"))
    for a, b in zip(in_process, isolated, strict=True):
        a.pop("processed_at", None)
        b.pop("processed_at", None)
        assert a == b, a["source_uri"]
    kept = [row for row in isolated if row["status"] == "kept"]
    assert len(kept) >= 6 and all(row["audio_pcm"] and row["frames_jpeg"] for row in kept)
    assert {row["reject_reason"] for row in isolated} >= {"unreadable_container", "decode_failed"}


def test_a_crash_or_hang_rejects_that_clip_only_after_its_attempts(small_set, tmp_path):
    folder, clips = small_set
    good = [c for c in clips if c.kind == "good"][:2]
    marked = {}
    for mark in FAULTS:
        marked[mark] = tmp_path / f"{mark}_{good[0].name}"
        marked[mark].symlink_to(folder / good[0].name)
    uris = [str(folder / good[0].name), str(marked["crash_me"]), str(marked["hang_me"]),
            str(folder / good[1].name), str(marked["abort_me"])]
    config = _media_config(decoder=f"{__name__}.faulty_decode", decode_timeout_s=1.0, decode_attempts=2)
    started = time.monotonic()
    rows = _through_stages(uris, config)
    took = time.monotonic() - started
    verdicts = [(r["status"], r["reject_stage"], r["reject_reason"]) for r in rows]
    assert verdicts == [("kept", None, None), ("rejected", "decode", "decode_crashed"),
                        ("rejected", "decode", "decode_timeout"), ("kept", None, None),
                        ("rejected", "decode", "decode_crashed")]
    assert "killed by SIGSEGV, attempt 2 of 2" in rows[1]["reject_detail"]
    assert "killed by SIGABRT, attempt 2 of 2" in rows[4]["reject_detail"]
    assert "still busy after 1 s" in rows[2]["reject_detail"]
    for mark in FAULTS:  # two attempts each, each in its own (fresh) child
        pids = _calls(marked[mark])
        assert len(pids) == len(set(pids)) == 2, (mark, pids)
    assert 2.0 <= took < 30  # the hang: two 1 s limits
    # The clips after a crash decode as they do in-process.
    reference = _through_stages([uris[0], uris[3]], _media_config(isolation="none"))
    for got, want in zip([rows[0], rows[3]], reference, strict=True):
        assert (got["frames_jpeg"], got["audio_pcm"]) == (want["frames_jpeg"], want["audio_pcm"])


def test_probe_crash_and_hang_have_their_own_reasons():
    calls = NativeCalls("probe", "process", timeout_s=0.5, attempts=1)
    with pytest.raises(MediaError) as info:
        calls.run("clip", "os.abort")
    assert info.value.reason == "probe_crashed" and "SIGABRT, attempt 1 of 1" in info.value.detail
    with pytest.raises(MediaError) as info:
        calls.run("clip", "time.sleep", 60)
    assert info.value.reason == "probe_timeout"
    assert isolation.shared_child(CHILD_PRELOAD).call("operator.mul", (6, 7)) == 42  # shared child is back


# ---- size limit ----------------------------------------------------------------------------------------------------
class CountingMemoryFS(MemoryFileSystem):
    """An in-memory filesystem that counts reads of file contents."""

    protocol = "countingmem"
    store: dict = {}
    pseudo_dirs = [""]
    opened: list[str] = []

    def _open(self, path, *args, **kwargs):
        self.opened.append(path)
        return super()._open(path, *args, **kwargs)

    def cat_file(self, path, *args, **kwargs):
        self.opened.append(path)
        return super().cat_file(path, *args, **kwargs)


def test_a_remote_clip_over_max_bytes_is_rejected_without_being_read(small_set):
    folder, clips = small_set
    good = next(c for c in clips if c.kind == "good")
    data = (folder / good.name).read_bytes()
    fsspec.register_implementation("countingmem", CountingMemoryFS, clobber=True)
    fs = fsspec.filesystem("countingmem")
    fs.pipe_file("/clips/big.mp4", data)
    CountingMemoryFS.opened.clear()
    uri = "countingmem://clips/big.mp4"
    [row] = _through_stages([uri], _media_config(max_bytes=len(data) - 1))
    assert (row["reject_stage"], row["reject_reason"]) == ("probe", "too_large")
    assert row["reject_detail"] == f"{len(data)} bytes > max_bytes {len(data) - 1}"
    assert CountingMemoryFS.opened == []
    # At the limit it is read, once, and kept: the counter does see reads.
    [row] = _through_stages([uri], _media_config(max_bytes=len(data)))
    assert row["status"] == "kept" and len(CountingMemoryFS.opened) == 1


def test_a_local_clip_over_max_bytes_is_rejected_before_probing(small_set, monkeypatch):
    import engine.stages.probe as probe_module

    folder, clips = small_set
    good = next(c for c in clips if c.kind == "good")
    path = folder / good.name
    monkeypatch.setattr(probe_module, "open_source", lambda uri: pytest.fail("opened a clip over the limit"))
    [row] = _through_stages([str(path)], _media_config(max_bytes=1000))
    assert (row["reject_stage"], row["reject_reason"], row["duration_s"]) == ("probe", "too_large", None)
    assert row["reject_detail"] == f"{path.stat().st_size} bytes > max_bytes 1000"
    monkeypatch.undo()
    [row] = _through_stages([str(path)], _media_config(max_bytes=0))  # 0: no limit
    assert row["status"] == "kept"


# ---- config and plan -----------------------------------------------------------------------------------------------
def test_decoder_must_name_an_importable_module():
    from engine.core.config import ConfigError, EngineConfig, load_config

    with pytest.raises(ConfigError) as info:
        load_config(EngineConfig, None, ["input=i", "output=o", "media.decoder=nowhere_at_all.decode"])
    assert "media.decoder" in str(info.value) and "'nowhere_at_all' not found" in str(info.value)
    with pytest.raises(ConfigError, match="media.decoder: .*expected package.module.function"):
        load_config(EngineConfig, None, ["input=i", "output=o", "media.decoder=decode"])
    config = load_config(EngineConfig, None, ["input=i", "output=o", f"media.decoder={__name__}.faulty_decode"])
    assert config.media.decoder.endswith("test_media_isolation.faulty_decode")


def test_the_plan_is_made_under_the_configured_errored_block_budget_and_block_size(monkeypatch):
    """A dataset copies the DataContext it is created under: the budget and the output block size must be in force
    when the first one is made, and the process-wide context left as it was."""
    import ray.data

    from engine.core.config import EngineConfig, load_config
    from engine.dataset import pipeline

    class Recording:
        def map_batches(self, *args, **kwargs):
            return self

        def select_columns(self, columns):
            return self

    def context() -> tuple[int, int]:
        current = ray.data.DataContext.get_current()
        return current.max_errored_blocks, current.target_max_block_size

    seen = []
    monkeypatch.setattr(pipeline, "table_blocks", lambda table, rows: seen.append(context()) or Recording())
    before = context()
    for value, block_mb in ((7, 1), (-1, 0.5)):
        config = load_config(EngineConfig, None, ["input=i", "output=o", f"media.max_errored_blocks={value}",
                                                  f"output_block_mb={block_mb}"])
        pipeline.build_plan(None, config)
    assert seen == [(7, 1_048_576), (-1, 524_288)]  # what the dataset is made under, and so keeps
    assert context() == before
    assert EngineConfig(input="i", output="o").media.max_errored_blocks == 3
    assert EngineConfig(input="i", output="o").output_block_mb == 1
