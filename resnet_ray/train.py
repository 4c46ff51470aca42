"""Data-parallel training on Ray Train: `train_loop_per_worker` and the driver that runs it.

Each worker builds the model inside a MultiWorkerMirroredStrategy scope (a lone worker: the
default strategy, see make_strategy), trains on its own
shard of the data (the global batch split evenly), and at every epoch end all workers read the
synchronised weights, validate on the test file and report; rank 0 attaches a checkpoint.
A restarted worker group, or a re-run of the same command with the same storage and name,
continues from the latest checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import MALLOC_KEEP, worker_env_vars
from .config import TrainConfig
from .data import Signs, load_data_dir, split_validation
from .errors import CheckpointError, ConfigError, RunFailed

WEIGHTS_FILE = "model.weights.h5"
OPTIMIZER_FILE = "optimizer.npz"
STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
REPORTS_FILE = "reports.jsonl"
# Test-only fault injection: "EPOCH:RANK:MARKER" makes that rank's process exit at the start
# of that epoch (1-based), once: the marker file records that it already happened.
FAULT_ENV = "RESNET_RAY_FAIL_AT_EPOCH"
# Test-only: "STEP:RANK:MARKER" SIGKILLs rank RANK after its STEP-th training step (counted
# from 1 over the whole run), once (MARKER records it): a crash no Python code can soften.
KILL_ENV = "RESNET_RAY_KILL_AT_STEP"


# ---------------------------------------------------------------- worker side

def make_dataset_fn(train: Signs, cfg: TrainConfig, first_epoch: int):
    """Per-worker input: one shuffled order shared by all workers, each taking its own shard,
    augmented on the worker (cfg.augment) with seeds that depend on the shard and the step."""
    from .keras_backend import tf

    x, y = train.x, train.y.astype(np.int32)
    classes = len(train.classes)
    seed = cfg.seed + first_epoch  # a resumed run does not replay the first epochs' order

    def dataset_fn(input_context):
        # A worker's batch holds all its micro-batches; the train step splits it.
        per_replica = input_context.get_per_replica_batch_size(cfg.update_batch_size)
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).repeat()
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        ds = ds.batch(per_replica, drop_remainder=True)
        ds = ds.map(lambda xb, yb: (tf.cast(xb, tf.float32) / 255.0, tf.one_hot(yb, classes)),
                    num_parallel_calls=tf.data.AUTOTUNE)
        if cfg.augment > 0:
            stream = seed * 1009 + input_context.input_pipeline_id
            ds = ds.enumerate().map(
                lambda i, batch: (augment_batch(batch[0], cfg.augment,
                                                tf.stack([tf.cast(stream, tf.int64), i])),
                                  batch[1]),
                num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    return dataset_fn


def augment_batch(images, strength: float, seed):
    """Random shift, zoom, rotation, brightness and contrast of a batch of [0, 1] images.

    Stateless ops with an explicit seed: the same run sees the same augmentation, and no
    random-generator variables end up inside the distribution strategy."""
    from .keras_backend import tf

    shape = tf.shape(images)
    n, h, w = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    u = tf.random.stateless_uniform([n, 6], seed=seed, minval=-1.0, maxval=1.0)
    angle = u[:, 0] * strength * (10.0 * np.pi / 180.0)
    zoom = 1.0 + u[:, 1] * strength * 0.1
    tx, ty = u[:, 2] * strength * 0.1 * w, u[:, 3] * strength * 0.1 * h
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    # Output pixel -> input pixel: rotate and zoom about the centre, then shift.
    a0, a1, b0, b1 = cos, sin, -sin, cos
    a2 = cx - a0 * cx - a1 * cy - tx
    b2 = cy - b0 * cx - b1 * cy - ty
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=shape[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="NEAREST")
    brightness = u[:, 4] * strength * 0.2
    contrast = 1.0 + u[:, 5] * strength * 0.2
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = (images - mean) * contrast[:, None, None, None] + mean
    images = images + brightness[:, None, None, None]
    return tf.clip_by_value(images, 0.0, 1.0)


def weights_digest(weights: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for w in weights:
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def _fault_marker(var: str, at: int, rank: int) -> Path | None:
    """The marker file if the test-only fault spec "AT:RANK:MARKER" in `var` is due now
    (once: an existing marker means it already happened)."""
    spec = os.environ.get(var)
    if not spec:
        return None
    at_value, at_rank, marker = spec.split(":", 2)
    if int(at_value) == at and int(at_rank) == rank and not os.path.exists(marker):
        return Path(marker)
    return None


def _maybe_inject_fault(epoch: int, rank: int) -> None:
    marker = _fault_marker(FAULT_ENV, epoch, rank)
    if marker:
        marker.write_text(f"rank {rank} exited at epoch {epoch}\n")
        print(f"[fault injection] rank {rank} exits at the start of epoch {epoch}", flush=True)
        os._exit(1)


def _maybe_kill(step: int, rank: int) -> None:
    marker = _fault_marker(KILL_ENV, step, rank)
    if marker:
        marker.write_text(f"rank {rank} killed after step {step}\n")
        print(f"[fault injection] SIGKILL rank {rank} after step {step}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(directory: Path, model_local, optimizer, cfg: TrainConfig,
                    state: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model_local.save_weights(directory / WEIGHTS_FILE)
    np.savez(directory / OPTIMIZER_FILE, *[v.numpy() for v in optimizer.variables])
    cfg.save(directory / CONFIG_FILE)
    (directory / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def restore_checkpoint(directory: Path, model, optimizer) -> dict[str, Any]:
    """Load weights and optimizer state into a (possibly distributed) model; return its state."""
    part = directory / WEIGHTS_FILE
    try:
        model.load_weights(part)
        part = directory / OPTIMIZER_FILE
        # Arrays only (allow_pickle=False): a checkpoint can't make us run code.
        with np.load(part, allow_pickle=False) as saved:
            values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        part = directory / STATE_FILE
        state = json.loads(part.read_text())
    except Exception as exc:  # h5py, numpy and json raise many types for a damaged file
        raise CheckpointError(f"{part}: cannot be read ({type(exc).__name__}: {exc}); the "
                              f"checkpoint is damaged: remove {directory} to resume from an "
                              f"earlier one") from None
    optimizer.build(model.trainable_variables)
    if len(values) != len(optimizer.variables):
        raise CheckpointError(f"{directory / OPTIMIZER_FILE}: holds {len(values)} optimizer "
                              f"variables, the model needs {len(optimizer.variables)}")
    for var, value in zip(optimizer.variables, values):
        var.assign(value)
    return state


def check_checkpoints(run_dir: str) -> None:
    """Refuse to resume from a damaged checkpoint, naming it, before any worker starts.

    Ray Train would hand the latest one to every worker, each would fail to load it, and the
    run would burn its --max-failures on a file that will never load."""
    import h5py

    for directory in sorted(Path(run_dir).glob("checkpoint_epoch_*")):
        if not (directory / STATE_FILE).exists():
            continue  # never completed; resume ignores it
        part = directory / WEIGHTS_FILE
        try:
            with h5py.File(part, "r"):
                pass
            part = directory / OPTIMIZER_FILE
            with np.load(part, allow_pickle=False) as saved:
                for key in saved.files:
                    saved[key]
            part = directory / STATE_FILE
            json.loads(part.read_text())["epoch"]
        except Exception as exc:
            raise CheckpointError(f"{part}: cannot be read ({type(exc).__name__}: {exc}); "
                                  f"the checkpoint is damaged: move {directory} away to "
                                  f"resume from an earlier one") from None


def build_compiled(cfg: TrainConfig, steps_per_epoch: int | None = None):
    """Model and optimizer. steps_per_epoch sets a learning-rate schedule's length; without
    it (export, evaluation) the rate is constant, which only matters for training."""
    from .keras_backend import keras
    from .model import build_model

    model = build_model(cfg.model, cfg.input_shape, len(cfg.classes), cfg.bn_momentum)
    if cfg.accumulate > 1 and steps_per_epoch is not None:
        model = accumulating(model, cfg.accumulate)
    optimizer = optimizer_class(cfg)(learning_rate=learning_rate(cfg, steps_per_epoch),
                                     weight_decay=cfg.weight_decay or None)
    if cfg.weight_decay:
        # BatchNormalization's scale and shift and the biases set levels, not features;
        # shrinking them towards 0 only fights the data.
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    return model, optimizer


def summed_gradients(model, x, y, micro_batches: int, loss_fn):
    """The sum over micro_batches equal slices of (x, y) of loss_fn(y, model(x))'s gradients,
    one slice after the other, and the training-mode predictions of each."""
    from .keras_backend import tf

    total, preds = None, []
    for xs, ys in zip(tf.split(x, micro_batches), tf.split(y, micro_batches)):
        # Nothing orders the slices' passes in the graph: without this the executor may
        # interleave them and hold several slices' activations at once.
        with tf.control_dependencies(total or []):
            xs = tf.identity(xs)
        with tf.GradientTape() as tape:
            pred = model(xs, training=True)
            loss = loss_fn(ys, pred)
        grads = tape.gradient(loss, model.trainable_variables)
        total = grads if total is None else [a + g for a, g in zip(total, grads)]
        preds.append(pred)
    return total, preds


def accumulating(model, micro_batches: int):
    """The same layers (and weights, names, files) in a model whose train step splits each
    batch into micro_batches, sums their gradients, and applies the mean once: one gradient
    all-reduce per micro_batches forward and backward passes, and BatchNormalization's batch
    statistics over a micro-batch, as without accumulation."""
    from .keras_backend import keras, tf

    class Accumulating(keras.Model):
        def train_step(self, data):
            x, y = data
            total, preds = summed_gradients(
                self, x, y, micro_batches, lambda ys, pred: self.compute_loss(None, ys, pred))
            self.optimizer.apply_gradients(
                zip([g / micro_batches for g in total], self.trainable_variables))
            # As Keras' own step: the metrics see the training-mode predictions.
            return self.compute_metrics(x, y, tf.concat(preds, 0), None)

    return Accumulating(inputs=model.inputs, outputs=model.outputs, name=model.name)


# float16 keeps 5 exponent bits: gradients of a loss averaged over the batch are small enough
# to fall below its smallest normal number (6e-5), so they travel scaled by this power of two
# (exact in any float format) and are scaled back after the sum.
FLOAT16_GRADIENT_SCALE = 2.0 ** 10
# Bytes per gradient element on the wire, for each --allreduce-dtype.
ALLREDUCE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def optimizer_class(cfg: TrainConfig):
    """Adam, or Adam whose gradient all-reduce sends cfg.allreduce_dtype instead of float32:
    half the bytes on the wire; the summed gradients come back as float32 for the update."""
    from .keras_backend import keras, tf

    if cfg.allreduce_dtype == "float32" or cfg.num_workers <= 1:
        # One worker all-reduces with nobody: rounding its gradients would only change them.
        return keras.optimizers.Adam
    dtype = tf.as_dtype(cfg.allreduce_dtype)
    scale = FLOAT16_GRADIENT_SCALE if dtype == tf.float16 else 1.0

    class CompressedAllReduceAdam(keras.optimizers.Adam):
        def aggregate_gradients(self, grads_and_vars):
            sent = [(None if g is None else tf.cast(g * scale, dtype), v)
                    for g, v in grads_and_vars]
            return [(None if g is None else tf.cast(g, v.dtype) / scale, v)
                    for g, v in super().aggregate_gradients(sent)]

    return CompressedAllReduceAdam


def communication_options(cfg: TrainConfig):
    from .keras_backend import tf

    return tf.distribute.experimental.CommunicationOptions(
        bytes_per_pack=int(cfg.allreduce_pack_mb * 2 ** 20))


def communication_line(cfg: TrainConfig, model, world: int) -> str:
    """What each all-reduce sends, for the worker log (issue 10: say which settings ran)."""
    grad_mb = sum(int(np.prod(v.shape)) for v in model.trainable_variables) * \
        ALLREDUCE_BYTES[cfg.allreduce_dtype] / 2 ** 20
    packs = "one pack" if not cfg.allreduce_pack_mb else \
        f"packs of {cfg.allreduce_pack_mb:g} MiB"
    micro = f" x {cfg.accumulate} micro-batches" if cfg.accumulate > 1 else ""
    return (f"communication: {world} workers, {grad_mb:.1f} MiB of {cfg.allreduce_dtype} "
            f"gradients per update in {packs}, per-worker batch {cfg.per_worker_batch_size}"
            f"{micro}, update batch {cfg.update_batch_size} at lr {cfg.update_lr:g}")


def learning_rate(cfg: TrainConfig, steps_per_epoch: int | None):
    """cfg.lr, or a schedule over the optimizer's step count (restored with its state, so a
    resumed run continues the schedule where it stopped)."""
    from .keras_backend import keras

    lr = cfg.update_lr
    if steps_per_epoch is None or (cfg.lr_schedule == "constant" and not cfg.warmup_epochs):
        return lr
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total - 1, cfg.warmup_steps(steps_per_epoch))
    if cfg.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=lr / 10 if warmup else lr, decay_steps=total - warmup,
            warmup_target=lr if warmup else None, warmup_steps=warmup)
    # constant after a linear warm-up: a cosine that decays to alpha = 1, i.e. not at all
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr / 10, decay_steps=total - warmup, alpha=1.0,
        warmup_target=lr, warmup_steps=warmup)


def lr_at(cfg: TrainConfig, steps_per_epoch: int, step: int) -> float:
    """The learning rate the schedule gives at an optimizer step (for reports)."""
    schedule = learning_rate(cfg, steps_per_epoch)
    return float(schedule(step)) if callable(schedule) else float(schedule)


def limit_threads(cpus: int) -> None:
    """Size TensorFlow's thread pools to the CPUs Ray gave this worker. TensorFlow sizes them
    by the host's cores, so N workers of one CPU each on an N-core host run N times as many
    threads as cores, and they get in each other's way: two ResNet-50 processes on this
    2-core host computed 25.2 images/s with TensorFlow's pools, 31.4 with one thread each
    (issue 10, bench/results/scaling-*)."""
    from .keras_backend import tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(cpus)
    except RuntimeError:
        # TensorFlow already ran something in this process and its pools are fixed; say so
        # rather than train with a setting other than the one the log claims.
        print(f"warning: TensorFlow's thread pools were already set up; this worker keeps "
              f"{tf.config.threading.get_intra_op_parallelism_threads() or 'one per core'} "
              f"intra-op threads instead of {cpus}", flush=True)


def make_strategy(world: int, local: bool, cfg: TrainConfig):
    """(strategy, its name for reports and the log). MultiWorkerMirroredStrategy when there is
    someone to all-reduce with. A single worker gets TensorFlow's default strategy, i.e. plain
    Keras: with one worker MWMS has nothing to exchange, yet its collective-op runtime made
    each ResNet-50 step about 1.5x slower on CPU (measured outside Ray, issue 10), and the
    gradients are the same either way."""
    from .keras_backend import tf

    if local or world == 1:
        return tf.distribute.get_strategy(), "default (one worker, no all-reduce)"
    return (tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=communication_options(cfg)), "MultiWorkerMirroredStrategy")


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
                             checkpoint_dir_name=f"checkpoint_epoch_{metrics['epoch']:04d}")


class LocalCheckpoints:
    """Checkpoints of a single-process run (Ray Train's local mode persists none): written
    atomically into the run directory, best `keep` by val_accuracy plus the latest kept."""

    def __init__(self, run_dir: str, keep: int):
        self.run_dir, self.keep = Path(run_dir), keep

    def _complete(self) -> list[Path]:
        return sorted(p for p in self.run_dir.glob("checkpoint_epoch_*")
                      if (p / STATE_FILE).is_file())

    def latest(self):
        import contextlib

        done = self._complete()
        return (done[-1], contextlib.nullcontext(str(done[-1]))) if done else None

    def report(self, metrics: dict[str, Any], write, rank: int) -> None:
        import ray.train
        import shutil

        final = self.run_dir / f"checkpoint_epoch_{metrics['epoch']:04d}"
        tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.", dir=self.run_dir))
        try:
            write(tmp)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        done = self._complete()
        score = {p: json.loads((p / STATE_FILE).read_text())["metrics"]["val_accuracy"]
                 for p in done}
        kept = set(sorted(done, key=lambda p: (score[p], p.name), reverse=True)[:self.keep])
        for p in done:
            if p not in kept and p != final:
                shutil.rmtree(p, ignore_errors=True)
        ray.train.report(metrics)

    def best(self) -> Path | None:
        return best_checkpoint_dir(str(self.run_dir), "val_accuracy", "max")


def best_checkpoint_dir(run_dir: str, metric: str, mode: str) -> Path | None:
    """The best complete checkpoint of a run directory, by the metric in its state.json."""
    best, best_score = None, None
    for ckpt in sorted(Path(run_dir).glob("checkpoint_epoch_*")):
        try:
            score = json.loads((ckpt / STATE_FILE).read_text())["metrics"][metric]
        except (OSError, KeyError, ValueError):
            continue  # incomplete: its run stopped mid-write
        if best is None or (score > best_score if mode == "max" else score < best_score):
            best, best_score = ckpt, score
    return best


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One worker's training: the same function for N Ray workers and for one local process."""
    import ray
    import ray.train

    from .evaluate import metrics_from_probs
    from .keras_backend import check_keras_flavour, keras, tf
    from .predict import predict_probs

    check_keras_flavour()
    cfg = TrainConfig.from_dict(loop_config["config"])
    data = loop_config["data"]
    train, val = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    local = cfg.num_workers == 0
    if not local:
        limit_threads(cfg.cpus_per_worker)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    store = LocalCheckpoints(cfg.run_dir, cfg.keep_checkpoints) if local else RayCheckpoints()
    keras.utils.set_random_seed(cfg.seed)

    strategy, strategy_name = make_strategy(world, local, cfg)
    tf_threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    if rank == 0 and not local:
        print(f"strategy: {strategy_name}, {world} worker(s) x {cfg.cpus_per_worker} CPU "
              f"({tf_threads} TensorFlow thread(s) each"
              f"{', freed memory kept' if MALLOC_KEEP in os.environ else ''}), "
              f"global batch {cfg.batch_size}",
              flush=True)
    steps = len(train) // cfg.update_batch_size
    with strategy.scope():
        model, optimizer = build_compiled(cfg, steps)
    if rank == 0 and world > 1:
        print(communication_line(cfg, model, world), flush=True)
    # A plain copy outside the strategy: validation and checkpoint writing then run on
    # this worker alone, with no collective ops that the other workers would have to join.
    local_model, _ = build_compiled(cfg)

    state: dict[str, Any] = {"epoch": 0, "history": []}
    found = store.latest()
    if found is not None:
        checkpoint, as_directory = found
        with as_directory as d, strategy.scope():
            state = restore_checkpoint(Path(d), model, optimizer)
        if rank == 0:
            print(f"resumed from {getattr(checkpoint, 'path', checkpoint)} after epoch "
                  f"{state['epoch']}", flush=True)
    if state["epoch"] >= cfg.epochs:
        return

    dataset = strategy.distribute_datasets_from_function(
        make_dataset_fn(train, cfg, state["epoch"]))
    tb_dir = _tensorboard_dir(cfg) if rank == 0 else None
    writer = tf.summary.create_file_writer(tb_dir) if tb_dir else None

    class EpochEnd(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            _maybe_inject_fault(epoch + 1, rank)
            self.epoch = epoch
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            _maybe_kill(self.epoch * steps + batch + 1, rank)

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.start
            weights = model.get_weights()  # synchronised values, identical on every worker
            local_model.set_weights(weights)
            scores = metrics_from_probs(predict_probs(local_model, val.x), val.y, val.classes)
            metrics = {
                "epoch": epoch + 1, "loss": float(logs["loss"]),
                "accuracy": float(logs["accuracy"]), "val_loss": scores["loss"],
                "val_accuracy": scores["accuracy"], "epoch_time_s": seconds,
                "images_per_s": steps * cfg.update_batch_size / seconds,
                "lr": lr_at(cfg, steps, (epoch + 1) * steps - 1),
                "rank": rank,
                "world_size": world, "strategy": strategy_name, "node_id": node_id,
                "tf_threads": tf_threads,
                "weights_digest": weights_digest(weights),
            }
            state["epoch"] = epoch + 1
            state["history"].append({k: metrics[k] for k in (
                "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s")})
            state["metrics"] = metrics
            if rank == 0:
                print(f"epoch {epoch + 1}/{cfg.epochs}  loss {metrics['loss']:.4f}  "
                      f"acc {metrics['accuracy']:.4f}  val_loss {metrics['val_loss']:.4f}  "
                      f"val_acc {metrics['val_accuracy']:.4f}  {seconds:.1f}s  "
                      f"{metrics['images_per_s']:.1f} img/s", flush=True)
            if writer is not None:
                with writer.as_default(step=epoch + 1):
                    for key in ("loss", "accuracy", "val_loss", "val_accuracy",
                                "epoch_time_s", "images_per_s", "lr"):
                        tf.summary.scalar(key, metrics[key])
                writer.flush()
            store.report(metrics, lambda d: save_checkpoint(d, local_model, optimizer, cfg,
                                                            state), rank)

    model.fit(dataset, epochs=cfg.epochs, initial_epoch=state["epoch"], steps_per_epoch=steps,
              callbacks=[EpochEnd()], verbose=0)


def _tensorboard_dir(cfg: TrainConfig) -> str | None:
    if "://" in cfg.storage:
        return None  # event files go to local storage only; see README "Dashboards"
    return str(Path(cfg.run_dir) / "tensorboard")


# ---------------------------------------------------------------- driver side

def _report_log_callback(path: str):
    from ray.train import UserCallback

    class ReportLog(UserCallback):
        """Appends every worker's report to reports.jsonl: the record of which rank ran
        on which node, with which weights, and which epochs were reported."""

        def after_report(self, run_context, metrics, checkpoint):
            with open(path, "a") as f:
                for m in metrics:
                    f.write(json.dumps({**m, "time": time.time(),
                                        "checkpoint": checkpoint.path if checkpoint else None})
                            + "\n")

    return ReportLog()


CURRENT_CLUSTER_FILE = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"


def _reachable(address: str, timeout: float = 2.0) -> bool:
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def init_ray(address: str | None = None) -> None:
    """Connect to the cluster (RAY_ADDRESS, as inside `ray job submit`, or the one `ray start`
    started on this machine) or start a local one."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if not address and CURRENT_CLUSTER_FILE.exists():
        # Ray's state API, which Train uses to watch its controller, asks the cluster named
        # in this file. A live one is joined (two clusters on one host would answer each
        # other's queries); a stale one, left by a cluster that died without `ray stop`,
        # is removed, as it would otherwise hang both ray.init() and that watcher.
        current = CURRENT_CLUSTER_FILE.read_text().strip()
        if _reachable(current):
            address = current
            print(f"joining the Ray cluster already running at {current}", file=sys.stderr)
        else:
            CURRENT_CLUSTER_FILE.unlink(missing_ok=True)
    if address:
        # A job already carries its runtime_env (cluster/runtime_env.yaml); another one here
        # would conflict with it. Train workers get WORKER_ENV_VARS from the trainer itself.
        ray.init(address=address, logging_level="ERROR")
    else:
        # Listens on loopback only: Ray's APIs run arbitrary code for anyone reaching them.
        ray.init(address="local", runtime_env={"env_vars": worker_env_vars()},
                 logging_level="ERROR", _node_ip_address="127.0.0.1")


def prepare_config(cfg: TrainConfig) -> tuple[TrainConfig, Signs, Signs, Signs]:
    """Load and check the data and the config on the driver, before any worker starts.
    Returns (config, train, validation, test); workers get only train and validation."""
    train, test = load_data_dir(cfg.data)
    cfg.input_shape, cfg.classes = train.input_shape, list(train.classes)
    cfg.validate()
    if cfg.val_fraction:
        train, val = split_validation(train, cfg.val_fraction, cfg.seed)
    else:
        val = test
    if len(train) < cfg.update_batch_size:
        raise ConfigError(f"batch_size: {cfg.batch_size}"
                          f"{f' x accumulate {cfg.accumulate}' if cfg.accumulate > 1 else ''} "
                          f"is larger than the {len(train)} "
                          f"training images in {train.source}")
    return cfg, train, val, test


def build_trainer(cfg: TrainConfig, data, callbacks=()):
    """The project's TensorflowTrainer for a checked config; data = (train, validation)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer
    from ray.train.v2.api.config import LoggingConfig

    local = cfg.num_workers == 0
    env = worker_env_vars()
    for var in (FAULT_ENV, KILL_ENV):
        if os.environ.get(var):
            env[var] = os.environ[var]
    callbacks = list(callbacks)
    if "://" not in cfg.storage:
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        cfg.save(Path(cfg.run_dir) / CONFIG_FILE)
        if not local:
            callbacks.append(_report_log_callback(str(Path(cfg.run_dir) / REPORTS_FILE)))
    return TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "data": data if local else ray.put(data)},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(
            name=cfg.name, storage_path=cfg.storage,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints,
                                               checkpoint_score_attribute="val_accuracy",
                                               checkpoint_score_order="max"),
            worker_runtime_env={"env_vars": env},
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=callbacks),
    )


def run_training(cfg: TrainConfig, quiet: bool = False):
    """Train with Ray Train; export the best checkpoint if cfg.export is set. Returns Result."""
    import ray
    import ray.train

    cfg, train, val, test = prepare_config(cfg)
    local = cfg.num_workers == 0
    if local and "://" in cfg.storage:
        raise ConfigError(f"storage: a single-process run (num_workers 0) keeps checkpoints "
                          f"on a local path, got {cfg.storage!r}")
    if "://" not in cfg.storage:
        check_checkpoints(cfg.run_dir)
    if not local:
        init_ray()
    trainer = build_trainer(cfg, (train, val))
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise RunFailed(f"training run {cfg.run_dir} failed beyond --max-failures "
                        f"{cfg.max_failures}; its checkpoints are kept and the same command "
                        f"resumes from the latest one.\n{exc}") from None
    if cfg.export:
        if local:
            path = LocalCheckpoints(cfg.run_dir, cfg.keep_checkpoints).best()
            best = ray.train.Checkpoint.from_directory(str(path)) if path else None
        else:
            best = result.get_best_checkpoint("val_accuracy", "max") or result.checkpoint
        if best is None:
            raise ConfigError(f"{cfg.run_dir}: the run left no checkpoint to export")
        meta = export_checkpoint(best, cfg.export, extra={"run_dir": cfg.run_dir},
                                 data=(train, val, test))
        if not quiet:
            print(f"exported best checkpoint ({best.path}) to {cfg.export}", flush=True)
            print(test_score_line(meta), flush=True)
    return result


def test_score_line(meta: dict[str, Any]) -> str:
    t = meta["test"]
    return (f"held-out test ({t['source']}, {t['images']} images, used for nothing else): "
            f"accuracy {t['accuracy']:.4f}  loss {t['loss']:.4f}")


def data_record(train: Signs, val: Signs, test: Signs) -> dict[str, Any]:
    """What a run trained, validated and was tested on: enough to check a repeat used the
    same data (file digests) and the same split (sizes per class)."""
    def part(s: Signs, is_file: bool) -> dict[str, Any]:
        rec = {"source": s.source, "images": len(s),
               "per_class": np.bincount(s.y, minlength=len(s.classes)).tolist()}
        if is_file:  # the validation split's source names a share of the training file
            rec["sha256"] = _sha256(s.source)
        return rec

    return {"train": part(train, True), "validation": part(val, False),
            "test": part(test, True)}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_checkpoint(checkpoint, out_dir: str, extra: dict[str, Any] | None = None,
                      data: tuple[Signs, Signs, Signs] | None = None) -> dict[str, Any]:
    """A training checkpoint -> an exported model directory (model.keras + metadata.json).
    With data = (train, validation, test), the test score is measured here, once, on the
    model as exported, and recorded with what the run trained and validated on."""
    from .evaluate import metrics_from_probs
    from .export import read_metadata, save_model_dir
    from .predict import predict_probs

    with checkpoint.as_directory() as d:
        d = Path(d)
        cfg = TrainConfig.load(d / CONFIG_FILE)
        state = json.loads((d / STATE_FILE).read_text())
        model, _ = build_compiled(cfg)
        model.load_weights(d / WEIGHTS_FILE)
    metrics = {k: v for k, v in state.get("metrics", {}).items()
               if k in ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")}
    meta = {"classes": cfg.classes, "config": cfg.to_dict(), "metrics": metrics,
            "history": state.get("history", []), "checkpoint": str(checkpoint.path),
            **(extra or {})}
    if data is not None:
        train, val, test = data
        scores = metrics_from_probs(predict_probs(model, test.x), test.y, test.classes)
        meta["test"] = {"source": test.source, "images": len(test),
                        "accuracy": scores["accuracy"], "loss": scores["loss"]}
        meta["data"] = data_record(train, val, test)
    save_model_dir(model, out_dir, meta)
    return read_metadata(out_dir)


def main(argv: list[str] | None = None) -> int:
    """`python -m resnet_ray.train ...`: the entrypoint for `ray job submit`."""
    from .cli import main as cli_main

    return cli_main(["train", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
