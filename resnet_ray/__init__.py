"""resnet-ray: train, tune and serve a Keras ResNet-50 for hand-sign digits on Ray."""

import os

# Keras 3 (TensorFlow's default since 2.16) breaks inside MultiWorkerMirroredStrategy
# (keras-team/keras#20585, ray-project/ray#47464). The project uses tf-keras (Keras 2)
# directly, and also pins the flag so that any `tf.keras` import made after this one,
# e.g. by Ray's Keras helpers, resolves to the same flavour. Models saved by one
# flavour do not load in the other, so training and serving must agree.
os.environ["TF_USE_LEGACY_KERAS"] = "1"

__version__ = "0.1.0"

# Environment every Ray worker, Train worker, Tune trial and Serve replica must start
# with: set before TensorFlow is imported there, which os.environ inside a train loop
# is too late for.
WORKER_ENV_VARS = {
    "TF_USE_LEGACY_KERAS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # Ray Train tees print() into its logger, which shows every progress line twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX512-class
    # features; on AVX2 CPUs it falls back to Eigen, and ResNet-50 training was 2.67x
    # slower here (AMD EPYC, AVX2; `python -m bench compute`, README "Performance"). A value
    # the user set wins (see worker_env_vars).
    "TF_ENABLE_ONEDNN_OPTS": "1",
    # glibc's malloc: keep what TensorFlow frees for the next step. By default glibc serves
    # big blocks with mmap and trims freed heap, under thresholds it adapts to the process's
    # history, so the same 2 x 1 CPU training ran at 2.5-2.7 s a step or at 3.4-3.5 s, the
    # slow runs spending 20-30% of a worker in the kernel on 80,000 page faults a second
    # (issue 10, README "Scaling"). Read at process start: mallopt() from inside a running
    # worker helped less (measured). Other C libraries ignore these.
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2 ** 20),  # the largest glibc allows on 64-bit
    "MALLOC_TRIM_THRESHOLD_": str(16 * 2 ** 30),
    "MALLOC_TOP_PAD_": str(256 * 2 ** 20),
}
# Set in a worker's environment when it started with the settings above.
MALLOC_KEEP = "MALLOC_TRIM_THRESHOLD_"


def worker_env_vars() -> dict[str, str]:
    """WORKER_ENV_VARS, with any of them already set in this process's environment kept."""
    return {k: os.environ.get(k, v) for k, v in WORKER_ENV_VARS.items()}


# This process too (a --num-workers 0 run, evaluation, export) when it has not imported
# TensorFlow yet; a local Ray cluster's workers inherit it.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
