"""Test-only hooks. Nothing here runs unless its environment variable or argument is set:
the reliability tests use them to crash workers at a chosen moment and to hold Serve requests.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

# "EPOCH:RANK:MARKER": that rank's process exits at the start of that epoch (1-based), once:
# the marker file records that it already happened.
FAULT_ENV = "RESNET_RAY_FAIL_AT_EPOCH"
# "STEP:RANK:MARKER": SIGKILL rank RANK after its STEP-th training step (counted from 1 over
# the whole run), once: a crash no Python code can soften.
KILL_ENV = "RESNET_RAY_KILL_AT_STEP"


# A directory: every worker appends "EPOCH RANK PATH" for each photo-folder file it trained on
# to files-RANK.txt there, so a test can check that no file went to two workers in an epoch.
RECORD_ENV = "RESNET_RAY_RECORD_FILES"


def forwarded_env() -> dict[str, str]:
    """The hooks' variables set in this process, for the Train workers' environment."""
    return {var: os.environ[var] for var in (FAULT_ENV, KILL_ENV, RECORD_ENV)
            if os.environ.get(var)}


def record_files(epoch: int, rank: int, paths) -> None:
    folder = os.environ.get(RECORD_ENV)
    if folder:
        with open(Path(folder) / f"files-{rank}.txt", "a") as f:
            f.writelines(f"{epoch} {rank} {p}\n" for p in paths)


def _due(var: str, at: int, rank: int) -> Path | None:
    """The marker file if the spec "AT:RANK:MARKER" in `var` is due now."""
    spec = os.environ.get(var)
    if not spec:
        return None
    at_value, at_rank, marker = spec.split(":", 2)
    if int(at_value) == at and int(at_rank) == rank and not os.path.exists(marker):
        return Path(marker)
    return None


def fault_callbacks(rank: int, steps_per_epoch: int) -> list:
    """Keras callbacks that inject the faults asked for, or none."""
    if not any(os.environ.get(v) for v in (FAULT_ENV, KILL_ENV)):
        return []
    from .keras_backend import keras

    class InjectFaults(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            marker = _due(FAULT_ENV, epoch + 1, rank)
            if marker:
                marker.write_text(f"rank {rank} exited at epoch {epoch + 1}\n")
                print(f"[fault injection] rank {rank} exits at the start of epoch {epoch + 1}",
                      flush=True)
                os._exit(1)

        def on_train_batch_end(self, batch, logs=None):
            step = self.epoch * steps_per_epoch + batch + 1
            marker = _due(KILL_ENV, step, rank)
            if marker:
                marker.write_text(f"rank {rank} killed after step {step}\n")
                print(f"[fault injection] SIGKILL rank {rank} after step {step}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

    return [InjectFaults()]


async def pass_gate(gate) -> None:
    """Wait on a test's gate actor (an async wait() method), as Serve's own backpressure
    tests do, so that requests fill a replica's queue deterministically."""
    if gate is not None:
        await gate.wait.remote()
