"""One worker's training: `train_loop_per_worker`, the same function for N Ray Train workers
and for one local process (num_workers 0); the driver's plan says which (resnet_ray/plan.py).

Each worker builds the model inside its strategy's scope, trains on its shard of every
global batch, and at every epoch end validates the synchronised weights and reports; rank 0
attaches a checkpoint. A restarted worker group continues from the latest checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import console, testhooks
from .checkpoints import restore_checkpoint, save_checkpoint
from .config import TrainConfig, is_remote
from .keras_backend import check_keras_flavour, keras, tf
from .optim import (averaged_weights, build_compiled, communication_line, lr_at,
                    make_strategy)
from .progress import epoch_line, step_sender
from .runtime import MALLOC_KEEP_VAR, limit_threads

HISTORY_KEYS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s")
SUMMARY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s",
                "images_per_s", "lr")


def weights_digest(weights: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for w in weights:
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def private_memory_mb() -> float | None:
    """Memory only this process holds (Linux's Private_Clean + Private_Dirty), or None."""
    try:
        text = Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return None
    return sum(int(line.split()[1]) for line in text.splitlines()
               if line.startswith(("Private_Clean:", "Private_Dirty:"))) / 1024


class EpochReporter(keras.callbacks.Callback):
    """At each epoch end: validate the synchronised weights on a plain local copy (no
    collective ops the other workers would have to join), print rank 0's line, write
    TensorBoard scalars, and report the metrics and checkpoint to the store."""

    def __init__(self, cfg: TrainConfig, state: dict[str, Any], validate, local_model,
                 optimizer, store, run_info: dict[str, Any], steps: int, writer=None,
                 board=None):
        super().__init__()
        self.cfg, self.state, self.validate = cfg, state, validate
        self.local_model = local_model
        self.optimizer, self.store, self.run_info = optimizer, store, run_info
        self.steps, self.writer, self.rank = steps, writer, run_info["rank"]
        self.board = board if self.rank == 0 else None

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        from .evaluate import metrics_from_probs

        cfg, seconds = self.cfg, time.perf_counter() - self.start
        # Synchronised values, identical on every worker (with --ema, their averages).
        weights = averaged_weights(self.model, self.optimizer)
        self.local_model.set_weights(weights)
        scores = metrics_from_probs(*self.validate(self.local_model), cfg.classes)
        metrics = {
            "epoch": epoch + 1, "loss": float(logs["loss"]),
            "accuracy": float(logs["accuracy"]), "val_loss": scores["loss"],
            "val_accuracy": scores["accuracy"], "epoch_time_s": seconds,
            "images_per_s": self.steps * cfg.update_batch_size / seconds,
            "lr": lr_at(cfg, self.steps, (epoch + 1) * self.steps - 1),
            **self.run_info, "weights_digest": weights_digest(weights),
            # This worker's memory: what streaming data must bound. RSS also counts the
            # object store's shared pages it read; private memory is its own alone.
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "private_mb": private_memory_mb(),
        }
        self.state["epoch"] = epoch + 1
        self.state["history"].append({k: metrics[k] for k in HISTORY_KEYS})
        self.state["metrics"] = metrics
        if self.rank == 0:
            print(epoch_line(metrics, cfg.epochs), flush=True)
            if self.board is not None:
                self.board.put.remote({"metrics": {k: metrics[k] for k in SUMMARY_KEYS
                                                   + ("epoch",)}})
        if self.writer is not None:
            with self.writer.as_default(step=epoch + 1):
                for key in SUMMARY_KEYS:
                    tf.summary.scalar(key, metrics[key])
            self.writer.flush()
        self.store.report(metrics, lambda d: save_checkpoint(
            d, self.local_model, self.optimizer, cfg, self.state), self.rank)


def tensorboard_dir(cfg: TrainConfig) -> str | None:
    """Event files go to local storage only (docs/training.md)."""
    return None if is_remote(cfg.storage) else str(Path(cfg.run_dir) / "tensorboard")


def _log_layout(cfg: TrainConfig, strategy_name: str, world: int, tf_threads: int) -> None:
    kept = ", freed memory kept" if MALLOC_KEEP_VAR in os.environ else ""
    print(f"strategy: {strategy_name}, {world} worker(s) x {cfg.cpus_per_worker} CPU "
          f"({tf_threads} TensorFlow thread(s) each{kept}), global batch {cfg.batch_size}, "
          f"precision {cfg.precision}", flush=True)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray
    import ray.train

    check_keras_flavour()
    cfg = TrainConfig.from_dict(loop_config["config"])  # the plan's: nothing left open
    board = loop_config.get("board")  # the driver's progress view, when it shows one
    in_process, store = loop_config["in_process"], loop_config["store"]
    train_images, make_fn, validate = loop_config["feed"].inputs(cfg)
    if loop_config["threads"]:
        limit_threads(loop_config["threads"])
    if in_process and not console.verbose():
        # Ray Train's local mode logs every report at INFO on this console.
        logging.getLogger("ray.train").setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    keras.utils.set_random_seed(cfg.seed)

    strategy, strategy_name = make_strategy(world, cfg)
    tf_threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    steps = train_images // cfg.update_batch_size
    with strategy.scope():
        model, optimizer = build_compiled(cfg, steps, cfg.precision)
    if rank == 0 and world > 1:
        print(communication_line(cfg, model, world), flush=True)
    # Validation in float32 scores the weights as they are exported and served.
    local_model, _ = build_compiled(cfg)

    state: dict[str, Any] = {"epoch": 0, "history": []}
    found = store.latest()
    if found is not None:
        checkpoint, as_directory = found
        with as_directory as d, strategy.scope():
            state = restore_checkpoint(Path(d), model, optimizer)
        if rank == 0:
            note = (f"resumed from {getattr(checkpoint, 'path', checkpoint)} after epoch "
                    f"{state['epoch']}")
            print(note, flush=True)
            if board is not None:
                board.put.remote({"note": note})
    if state["epoch"] >= cfg.epochs:
        return
    if rank == 0 and not in_process:
        _log_layout(cfg, strategy_name, world, tf_threads)

    tb_dir = tensorboard_dir(cfg) if rank == 0 else None
    run_info = {"rank": rank, "world_size": world, "strategy": strategy_name,
                "node_id": ray.get_runtime_context().get_node_id()
                if ray.is_initialized() else "local", "tf_threads": tf_threads,
                "precision": cfg.precision}
    reporter = EpochReporter(cfg, state, validate, local_model, optimizer, store, run_info,
                             steps, tf.summary.create_file_writer(tb_dir) if tb_dir else None, board)
    senders = [step_sender(board)] if board is not None and rank == 0 else []
    model.fit(strategy.distribute_datasets_from_function(make_fn(state["epoch"])),
              epochs=cfg.epochs, initial_epoch=state["epoch"], steps_per_epoch=steps,
              callbacks=[*testhooks.fault_callbacks(rank, steps), *senders, reporter], verbose=0)

