"""Native media code in a child process, so that a crash or a hang costs one clip instead of the worker.

PyAV and decord run C code on untrusted bytes; decord is known to abort or segfault on some corrupt files
and can hang. Run in the Ray task's own process, one such clip kills the worker, and Ray Data retries the
task (system failures without limit), so the same clip kills the next worker too. `ChildProcess` keeps
one long-lived Python child per worker process that calls named functions (`package.module.function`)
on request, over a pair of pipes; when the child dies during a call the caller gets `ChildCrashed` with
the signal, when a call outlives its time limit the child is killed and the caller gets `ChildTimedOut`.
The next call starts a fresh child.

Why a long-lived child: `python jobs/benchmark.py isolation --clips .cache/test_clips/asr --repeats 7`, the
probe and decode stages' work per clip (probe, decode, JPEG-encode the frames) on the 24 generated clips of
the tests' asr set (320x240, 6 to 11 frames at 2 fps, 16 kHz audio), per clip the fastest of 7 tries with
the ways taking turns, on this project's 2-core machine while other jobs ran (load average 3 to 7):

    in-process (no isolation)               25.4 ms/clip   1.00
    long-lived child (this module)          25.0 ms/clip   0.98   + 0.5 s to start, once per worker process
      the same, raw frames sent back        26.6 ms/clip   1.05
    fork per clip                           66.6 ms/clip   2.62
    fresh interpreter per clip             356   ms/clip  14.0
    from in-memory bytes (a remote clip): in-process 29.4 ms, long-lived child 26.2 ms (0.89)

Two earlier runs of the same code gave the long-lived child 1.13 and 1.03, a fork per clip 2.46 and 2.66:
within this machine's noise the child costs nothing measurable (an empty call's round trip is 0.05 ms). The
child JPEG-encodes the frames itself (the parent would do it anyway), so a thirtieth of the bytes cross the
pipe (7 KB instead of 230 KB a frame); raw frames cost 1.1 to 1.6 ms more per clip here, and 40 frames at 448
pixels would be 13.5 MB. A fork per clip copies the page tables of a large process (a Ray worker; here the
benchmark, with torch loaded) and forks a multi-threaded Ray worker (unsafe: a lock another thread holds at
the fork stays held in the child); a fresh interpreter pays Python and the PyAV/decord imports per clip. The
long-lived child pays those once, and again only after a crash or a timeout. It holds about 190 MB (PyAV,
decord, numpy, Pillow) per media worker.

The child is a plain `python -m engine.core.isolation` (not multiprocessing, which re-imports the parent's
main module: in a Ray worker that is Ray's own, in jobs/benchmark.py it is torch). It dies with its
parent (PR_SET_PDEATHSIG on Linux, and end-of-file on its request pipe elsewhere).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">Q")  # the byte length of the pickle that follows
_START_TIMEOUT_S = 120.0  # a busy node may take a while to import PyAV and decord


class ChildCrashed(Exception):
    """The child died during a call (a signal such as SIGSEGV/SIGABRT, or an exit)."""

    def __init__(self, returncode: int | None) -> None:
        self.returncode = returncode
        super().__init__(f"child process {describe_exit(returncode)}")


class ChildTraceback(Exception):
    """The traceback of an exception raised in the child, chained as the re-raised exception's cause."""


class ChildTimedOut(Exception):
    """The call ran past its time limit; the child was killed."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(f"child process still busy after {timeout_s:g} s, killed")


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "closed its pipe without exiting"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


_resolved: dict[str, Callable[..., Any]] = {}


def resolve(path: str) -> Callable[..., Any]:
    """`package.module.function` -> the function (imported once per process)."""
    if path not in _resolved:
        module, _, name = path.rpartition(".")
        _resolved[path] = getattr(importlib.import_module(module), name)
    return _resolved[path]


class _Timeout(Exception):
    pass


class ChildProcess:
    """One child Python process that runs `function(*args, **kwargs)` calls sent to it, one at a time."""

    def __init__(self, preload: tuple[str, ...] = ()) -> None:
        self.preload = preload
        self._proc: subprocess.Popen | None = None
        self._to_child = self._from_child = -1
        self._owner = os.getpid()
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def call(self, function: str, args: tuple = (), kwargs: dict[str, Any] | None = None,
             timeout_s: float = 60.0) -> Any:
        """The function's return value, or its exception re-raised here; ChildCrashed / ChildTimedOut when the
        child dies or overruns (it is then gone and the next call starts a new one)."""
        with self._lock:
            self._ensure_running()
            try:
                _send(self._to_child, (function, args, kwargs or {}))
                status, value, child_traceback = _receive(self._from_child, time.monotonic() + timeout_s)
            except _Timeout:
                self._kill()
                raise ChildTimedOut(timeout_s) from None
            except (EOFError, BrokenPipeError):
                raise ChildCrashed(self._reap()) from None
        if status == "error":
            raise value from ChildTraceback(child_traceback)
        return value

    def close(self) -> None:
        """End-of-file on its request pipe: the child exits (killed if it does not within 5 s)."""
        if self._proc is None or os.getpid() != self._owner:
            return
        os.close(self._to_child)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._from_child)
        self._proc = None

    def _ensure_running(self) -> None:
        if os.getpid() != self._owner:  # a forked copy of the parent must not share the parent's child
            self._proc, self._owner = None, os.getpid()
        if self._proc is not None and self._proc.poll() is not None:  # died between calls: not a clip's fault
            log.warning("media child %d %s while idle; starting a new one", self._proc.pid,
                        describe_exit(self._proc.returncode))
            self._reap()
        if self._proc is None:
            self._start()

    def _start(self) -> None:
        request_read, self._to_child = os.pipe()
        self._from_child, reply_write = os.pipe()
        _widen(self._to_child, self._from_child)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "engine.core.isolation", str(os.getpid()), str(request_read), str(reply_write),
             *self.preload],
            pass_fds=(request_read, reply_write), env=_child_env(), stdin=subprocess.DEVNULL)
        os.close(request_read)
        os.close(reply_write)
        try:
            status, value, child_traceback = _receive(self._from_child, time.monotonic() + _START_TIMEOUT_S)
        except _Timeout:
            self._kill()
            raise RuntimeError(f"media child process not ready within {_START_TIMEOUT_S:g} s") from None
        except EOFError:
            raise RuntimeError(f"media child process {describe_exit(self._reap())} before it was ready") from None
        if status == "error":
            self._reap()
            raise value from ChildTraceback(child_traceback)

    def _kill(self) -> None:
        self._proc.kill()
        self._reap()

    def _reap(self) -> int | None:
        """Closes the pipes and collects the exit status of a child that is gone (or going)."""
        proc, self._proc = self._proc, None
        os.close(self._to_child)
        os.close(self._from_child)
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # closed its pipe but lives on: not a child we can trust
            proc.kill()
            proc.wait()
            return None


def _child_env() -> dict[str, str]:
    """The parent's import path (a Ray worker's holds the job's working dir) ahead of the interpreter's own."""
    own = (sys.prefix + os.sep, sys.base_prefix + os.sep)
    paths = [os.getcwd() if p == "" else p for p in sys.path if not p.startswith(own)]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths))


def _send(fd: int, message: Any) -> None:
    _send_pickle(fd, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _send_pickle(fd: int, data: bytes) -> None:
    for part in (_HEADER.pack(len(data)), data):
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view):]


def _receive(fd: int, deadline: float | None) -> Any:
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    return pickle.loads(_read_exact(fd, size, deadline))


def _read_exact(fd: int, size: int, deadline: float | None) -> bytearray:
    data = bytearray(size)
    view, done = memoryview(data), 0
    while done < size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise _Timeout
        got = os.readv(fd, [view[done:]])
        if not got:
            raise EOFError
        done += got
    return data


def _widen(*fds: int) -> None:
    """1 MiB pipe buffers (Linux; 64 KiB by default): a clip's frames cross in a few writes, not dozens."""
    if sys.platform.startswith("linux"):
        for fd in fds:
            with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size: the default stays
                fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ


_shared: dict[tuple[str, ...], ChildProcess] = {}


def shared_child(preload: tuple[str, ...] = ()) -> ChildProcess:
    """This process's child for `preload` (probe and decode stages built per batch share one)."""
    child = _shared.get(preload)
    if child is None:
        child = _shared[preload] = ChildProcess(preload)
        atexit.register(child.close)
    return child


# ---- the child's side ----------------------------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """SIGKILL when the parent goes, even while stuck in native code (Linux). Strictly, when the parent's thread
    that started the child ends: a Ray task runs on its worker's main thread, and a child killed that way while
    idle is replaced without failing a call. Elsewhere end-of-file on the request pipe ends an idle child."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent was gone before the line above
        os._exit(0)


def _reply_error(fd: int, err: BaseException) -> None:
    """The exception itself when it survives a pickle round trip (MediaError does), else its text; and the
    traceback as text."""
    text = f"in media child {os.getpid()}:\n{''.join(traceback.format_exception(err)).rstrip()}"
    try:
        data = pickle.dumps(("error", err, text), protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(data)
    except Exception:  # noqa: BLE001 - one that does not (un)pickle is sent as a RuntimeError with its text
        data = pickle.dumps(("error", RuntimeError(f"{type(err).__name__}: {err}"), text))
    _send_pickle(fd, data)


def serve(parent: int, request_fd: int, reply_fd: int, preload: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes or kills us
    _die_with_parent(parent)
    try:
        for module in preload:
            importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - reported to the parent, which raises it
        _reply_error(reply_fd, err)
        return
    _send(reply_fd, ("ready", os.getpid(), None))
    while True:
        try:
            function, args, kwargs = _receive(request_fd, None)
        except EOFError:
            return
        try:
            reply = pickle.dumps(("ok", resolve(function)(*args, **kwargs), None), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as err:  # noqa: BLE001 - every failure of a call (or of pickling its result) goes back
            _reply_error(reply_fd, err)
            continue
        _send_pickle(reply_fd, reply)


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
