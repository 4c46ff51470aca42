"""Where the code runs: joining or starting Ray, the environment every Ray worker starts with,
and TensorFlow's thread pools sized to the CPUs Ray gave a worker."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

# Set before TensorFlow is imported in a worker: os.environ inside a train loop is too late.
WORKER_ENV_VARS = {
    # Keras 3 fails inside MultiWorkerMirroredStrategy; every process uses tf-keras.
    "TF_USE_LEGACY_KERAS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # Ray Train tees print() into its logger, which shows every progress line twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # TensorFlow enables oneDNN by default only on AVX-512-class CPUs; on AVX2 it falls back
    # to slower Eigen kernels (docs/performance.md). A value the user set wins.
    "TF_ENABLE_ONEDNN_OPTS": "1",
    # glibc's malloc keeps what TensorFlow frees for the next step instead of returning it
    # to the kernel and faulting it back in (docs/performance.md). Read at process start only.
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2 ** 20),  # the largest glibc allows on 64-bit
    "MALLOC_TRIM_THRESHOLD_": str(16 * 2 ** 30),
    "MALLOC_TOP_PAD_": str(256 * 2 ** 20),
}
# The name of the variable that is set in a worker which started with the malloc settings.
MALLOC_KEEP_VAR = "MALLOC_TRIM_THRESHOLD_"

LOCAL_SYSTEM_CONFIG = {
    # Idle task workers survive between epochs for the next Ray Data pass (by default, past
    # one per CPU, they are killed after a second and restarted at a cost of seconds each).
    "num_workers_soft_limit": 16,
    # Workers at Ray's default niceness 15 lose a core to every wake-up of Ray's own
    # processes, and TensorFlow's threads then wait for the preempted one (docs/performance.md).
    "worker_niceness": 0,
}
# What a local cluster for one training run leaves out. Every Ray process wakes a core
# 100-200 times a second, which costs the training steps beside TensorFlow on all of a host's
# cores (docs/performance.md); a one-host cluster is never drained, so Train's preemption
# watcher has nothing to see. The variable is read by Train's controller.
LEAN_SYSTEM_CONFIG = {"prestart_worker_first_driver": False}
LEAN_ENV_VARS = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}

# Where `ray start` records the cluster that a bare `ray.init()` joins.
CURRENT_CLUSTER_FILE = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"


def worker_env_vars() -> dict[str, str]:
    """WORKER_ENV_VARS, with any of them already set in this process's environment kept."""
    return {k: os.environ.get(k, v) for k, v in WORKER_ENV_VARS.items()}


def _reachable(address: str, timeout: float = 2.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def init_ray(address: str | None = None, lean: bool = False) -> bool:
    """Connect to the cluster (RAY_ADDRESS, as inside `ray job submit`, or the one `ray start`
    started on this machine) or start a local one; True when it started one, whose processes
    inherit this process's environment. Without --verbose the workers' output stays in the
    session's log files, and the first line printed says where they are.

    lean: a local cluster started here serves one training run, so it goes without the
    processes such a run never uses: the idle workers started ahead of any task, Train's
    preemption watcher and, unless --verbose, Ray's dashboard (without it, Train's
    placement-group cleaner logs each second that it cannot ask for the run's state)."""
    import ray

    from . import console
    from .errors import ClusterError

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    shown = f"RAY_ADDRESS {address}"
    if not address and CURRENT_CLUSTER_FILE.exists():
        # Ray's state API, which Train uses to watch its controller, asks the cluster named
        # in this file: a live one is joined (two clusters on one host answer each other's
        # queries); a stale one would hang ray.init() and that watcher, so it is removed.
        current = CURRENT_CLUSTER_FILE.read_text().strip()
        if _reachable(current):
            # "auto" is that same cluster; unlike its address, it also takes up the token a
            # cluster with token authentication wrote on this machine.
            address, shown = "auto", f"the Ray cluster at {current} (started by `ray start`)"
            print(f"joining the Ray cluster already running at {current}", file=sys.stderr)
        else:
            CURRENT_CLUSTER_FILE.unlink(missing_ok=True)
    quiet = {"logging_level": "ERROR", "log_to_driver": console.verbose()}
    with console.quiet_stderr():
        if address:
            # A job already carries its runtime_env (cluster/runtime_env.yaml); another one
            # here would conflict with it. Train workers get WORKER_ENV_VARS from the trainer.
            try:
                context = ray.init(address=address, **quiet)
            except ConnectionError as exc:
                first = str(exc).strip().splitlines()[0]
                raise ClusterError(
                    f"{shown}: cannot join it ({first}); for a "
                    f"cluster with token authentication set RAY_AUTH_MODE=token, with its "
                    f"token in ~/.ray/auth_token or RAY_AUTH_TOKEN") from None
        else:
            system, options = dict(LOCAL_SYSTEM_CONFIG), {}
            if lean:
                system.update(LEAN_SYSTEM_CONFIG)
                for key, value in LEAN_ENV_VARS.items():
                    os.environ.setdefault(key, value)
                if not console.verbose():
                    options["include_dashboard"] = False
            # Loopback only: Ray's APIs run arbitrary code for anyone who reaches them.
            context = ray.init(address="local", runtime_env={"env_vars": worker_env_vars()},
                               _node_ip_address="127.0.0.1", _system_config=system,
                               **options, **quiet)
    if not console.verbose():
        _raylet_messages_to_log()
        print(console.logs_line(context.address_info.get("session_dir")), flush=True)
    return not address


def _raylet_messages_to_log() -> None:
    """Without --verbose, the warnings the raylet pushes to every driver (how many worker
    processes started, a retried task) go to console.DRIVER_LOG as well: Ray prints them
    through this one function, whatever log_to_driver says."""
    import ray._private.worker as ray_worker

    from . import console

    show = ray_worker.print_to_stdstream

    def print_or_log(data, ignore_prefix: bool):
        if data.get("pid") != "raylet":
            return show(data, ignore_prefix)
        with open(console.DRIVER_LOG, "a") as log:
            log.writelines(f"(raylet) {line}\n" for line in data.get("lines", []))

    ray_worker.print_to_stdstream = print_or_log


def limit_threads(cpus: int) -> None:
    """Size TensorFlow's thread pools to the CPUs Ray gave this worker: TensorFlow sizes them
    by the host's cores, so N one-CPU workers on N cores would run N times too many threads."""
    from .keras_backend import tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(cpus)
    except RuntimeError:
        # The pools are fixed once TensorFlow ran something: say so rather than let the log
        # claim a setting that did not take effect.
        print(f"warning: TensorFlow's thread pools were already set up; this worker keeps "
              f"{tf.config.threading.get_intra_op_parallelism_threads() or 'one per core'} "
              f"intra-op threads instead of {cpus}", flush=True)
