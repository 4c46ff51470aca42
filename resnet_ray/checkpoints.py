"""Training checkpoints: writing, reading and checking them, the Ray and local stores, and
the one rule that chooses the best (`ranked`).

A checkpoint directory holds the weights (Keras HDF5), the optimizer's variables (numpy
arrays, never pickles), the run's TrainConfig and state.json (epoch, history, metrics).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig
from .errors import CheckpointError

WEIGHTS_FILE = "model.weights.h5"
OPTIMIZER_FILE = "optimizer.npz"
STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
PREFIX = "checkpoint_epoch_"


def checkpoint_name(epoch: int) -> str:
    return f"{PREFIX}{epoch:04d}"


def save_checkpoint(directory: Path, model, optimizer, cfg: TrainConfig,
                    state: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_weights(directory / WEIGHTS_FILE)
    np.savez(directory / OPTIMIZER_FILE, *[v.numpy() for v in optimizer.variables])
    cfg.save(directory / CONFIG_FILE)
    (directory / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def read_checkpoint(directory: Path, model=None) -> tuple[list[np.ndarray], dict[str, Any]]:
    """(optimizer variables, state) of a checkpoint, with its weights loaded into `model`, or
    only opened when no model is given; a damaged file raises CheckpointError naming it."""
    import h5py

    part = directory / WEIGHTS_FILE
    try:
        if model is not None:
            model.load_weights(part)
        else:
            with h5py.File(part, "r"):
                pass
        part = directory / OPTIMIZER_FILE
        # Arrays only (allow_pickle=False): a checkpoint can't make us run code.
        with np.load(part, allow_pickle=False) as saved:
            values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        part = directory / STATE_FILE
        state = json.loads(part.read_text())
        state["epoch"]
    except Exception as exc:  # h5py, numpy and json raise many types for a damaged file
        raise CheckpointError(f"{part}: cannot be read ({type(exc).__name__}: {exc}); the "
                              f"checkpoint is damaged: move {directory} away to resume from "
                              f"an earlier one") from None
    return values, state


def restore_checkpoint(directory: Path, model, optimizer) -> dict[str, Any]:
    """Load weights and optimizer state into a (possibly distributed) model; return its state."""
    values, state = read_checkpoint(directory, model)
    optimizer.build(model.trainable_variables)
    if len(values) != len(optimizer.variables):
        raise CheckpointError(f"{directory / OPTIMIZER_FILE}: holds {len(values)} optimizer "
                              f"variables, the model needs {len(optimizer.variables)}")
    for var, value in zip(optimizer.variables, values):
        var.assign(value)
    return state


FILES = (WEIGHTS_FILE, OPTIMIZER_FILE, CONFIG_FILE, STATE_FILE)


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """A run directory's checkpoints that hold every file, oldest first. One that lacks a
    file was cut off while being written or pruned (a killed driver) and is ignored."""
    return sorted(p for p in Path(run_dir).glob(f"{PREFIX}*")
                  if all((p / name).is_file() for name in FILES))


def check_checkpoints(run_dir: str) -> None:
    """Refuse to resume from a damaged checkpoint, naming it, before any worker starts: Ray
    Train would hand it to every worker, and the run would spend its --max-failures on it."""
    for directory in complete_checkpoints(run_dir):
        try:
            read_checkpoint(directory)
        except CheckpointError:
            # One that lost a file while being read was being pruned (by the Ray of a run
            # killed moments ago): incomplete, so ignored like any other cut-off checkpoint.
            if directory in complete_checkpoints(run_dir):
                raise


def checkpoint_metrics(directory: Path) -> dict[str, Any]:
    """The metrics recorded in a checkpoint's state.json (empty if it has none)."""
    try:
        metrics = json.loads((directory / STATE_FILE).read_text())["metrics"]
    except (OSError, KeyError, ValueError, TypeError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def checkpoint_score(directory: Path, metric: str) -> float | None:
    """The metric recorded in a checkpoint's state.json, or None if it has none."""
    value = checkpoint_metrics(directory).get(metric)
    return None if value is None else float(value)


# What a run keeps and exports its checkpoints by: (metric, "max" or "min"). A search
# passes its own, so that a trial's exported checkpoint is its best by what the search ranks.
SCORE = ("val_accuracy", "max")


def ranked(candidates: list[tuple[Any, dict[str, Any]]], score: tuple[str, str] = SCORE
           ) -> list[Any]:
    """The one rule that chooses checkpoints, for keeping, pruning, resuming a search's best
    and exporting: of (checkpoint, metrics) pairs, those that record the score's metric, best
    first, and among equal scores the later epoch first, as Ray Train keeps them."""
    metric, mode = score
    sign = 1.0 if mode == "max" else -1.0

    def key(pair):
        value = float(pair[1][metric])
        return (value == value, sign * value if value == value else 0.0,
                float(pair[1].get("epoch", 0)))

    valid = [pair for pair in candidates if pair[1].get(metric) is not None]
    return [item for item, _ in sorted(valid, key=key, reverse=True)]


def best_checkpoint(run_dir: str, score: tuple[str, str] = SCORE, result=None):
    """The best checkpoint of a run by `ranked`, as a ray.train.Checkpoint, or None: from the
    run directory's complete checkpoints, or from Ray's record of them (`result`) when the
    run is stored at a URI."""
    import ray.train

    from .config import is_remote

    if is_remote(run_dir):
        pairs = list(result.best_checkpoints) if result is not None else []
    else:
        pairs = [(ray.train.Checkpoint.from_directory(str(p)), checkpoint_metrics(p))
                 for p in complete_checkpoints(run_dir)]
    best = ranked(pairs, score)
    return best[0] if best else None


class RayCheckpoints:
    """Checkpoints through Ray Train: rank 0 reports one each epoch; Ray persists and prunes."""

    def latest(self):
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        return (checkpoint, checkpoint.as_directory()) if checkpoint else None

    def report(self, metrics: dict[str, Any], write, rank: int) -> None:
        import ray.train

        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as d:
            write(Path(d))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                             checkpoint_dir_name=checkpoint_name(metrics["epoch"]))


class LocalCheckpoints:
    """Checkpoints of a single-process run (Ray Train's local mode persists none): written
    atomically into the run directory, the best `keep` by `score` plus the latest kept."""

    def __init__(self, run_dir: str, keep: int, score: tuple[str, str] = SCORE):
        self.run_dir, self.keep, self.score = Path(run_dir), keep, tuple(score)

    def latest(self):
        done = complete_checkpoints(self.run_dir)
        return (done[-1], contextlib.nullcontext(str(done[-1]))) if done else None

    def report(self, metrics: dict[str, Any], write, rank: int) -> None:
        import ray.train

        final = self.run_dir / checkpoint_name(metrics["epoch"])
        tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.", dir=self.run_dir))
        try:
            write(tmp)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        done = complete_checkpoints(self.run_dir)
        kept = set(ranked([(p, checkpoint_metrics(p)) for p in done], self.score)[:self.keep])
        for p in done:
            if p not in kept and p != final:
                shutil.rmtree(p, ignore_errors=True)
        ray.train.report(metrics)
