"""What the console shows: for each step a header, a progress bar and one result line.

Ray's and TensorFlow's own log lines are for `--verbose` (or RESNET_RAY_VERBOSE=1); without it
Ray workers keep theirs in the Ray session's log files and this process's TensorFlow start-up
lines go to DRIVER_LOG, and the first line of a run says where both are.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

VERBOSE_ENV = "RESNET_RAY_VERBOSE"
DRIVER_LOG = Path(tempfile.gettempdir()) / "resnet-ray" / "driver.log"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def set_verbose(flag: bool) -> None:
    """--verbose: set in the environment, so that every module and child process sees it."""
    if flag:
        os.environ[VERBOSE_ENV] = "1"


def add_verbose_flag(parser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help=f"show Ray's and TensorFlow's own log lines (or {VERBOSE_ENV}=1)")


def interactive() -> bool:
    """A terminal redraws a progress bar in place; a log file (or a terminal that reports
    no width) gets one line per update."""
    return sys.stderr.isatty() and shutil.get_terminal_size((0, 0)).columns >= 40


def in_ray_worker() -> bool:
    """Inside a Ray worker process, whose output Ray already keeps in its session logs."""
    ray = sys.modules.get("ray")
    try:
        return ray is not None and ray._private.worker.global_worker.mode == ray.WORKER_MODE
    except AttributeError:
        return False


@contextlib.contextmanager
def quiet_stderr():
    """Without --verbose, what native code writes to file descriptor 2 in the driver
    (TensorFlow's start-up lines come before its log level is read) goes to DRIVER_LOG."""
    if verbose() or in_ray_worker():
        yield
        return
    DRIVER_LOG.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(DRIVER_LOG, "ab") as log:
            os.dup2(log.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def tf_log_level() -> str:
    """TensorFlow's C++ log level: errors too are hidden by default (on a machine without a
    GPU the CUDA probe logs one)."""
    return "2" if verbose() else "3"


def logs_line(session_dir: str | None) -> str:
    ray_logs = f"Ray: {session_dir}/logs, " if session_dir else ""
    return f"logs: {ray_logs}this process: {DRIVER_LOG} (--verbose prints them here)"


def header(text: str) -> None:
    print(f"\n== {text}", flush=True)


def result(text: str) -> None:
    print(text, flush=True)
