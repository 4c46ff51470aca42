"""How weights are updated: the compiled model and optimizer, the learning-rate schedule,
gradient accumulation, the all-reduce's dtype and packs, and the distribution strategy."""

from __future__ import annotations

import numpy as np

from .config import TrainConfig

# float16 keeps 5 exponent bits: gradients of a loss averaged over the batch can fall below
# its smallest normal number (6e-5), so they travel scaled by this power of two (exact in
# any float format) and are scaled back after the sum.
FLOAT16_GRADIENT_SCALE = 2.0 ** 10
# Bytes per gradient element on the wire, for each --allreduce-dtype.
ALLREDUCE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
ONE_WORKER_STRATEGY = "default (one worker, no all-reduce)"


def build_compiled(cfg: TrainConfig, steps_per_epoch: int | None = None,
                   precision: str = "float32"):
    """Model and optimizer. steps_per_epoch sets a learning-rate schedule's length; without
    it (export, evaluation) the rate is constant, which only matters for training.
    precision: a Keras mixed-precision policy for the layers' compute; the weights stay
    float32 whatever it is, so checkpoints and exports are the same files."""
    from .keras_backend import keras
    from .model import build_model

    # Keras reads the global policy when a layer is built, not when it runs.
    keras.mixed_precision.set_global_policy(precision)
    try:
        model = build_model(cfg.model, cfg.input_shape, len(cfg.classes), cfg.bn_momentum)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    if cfg.accumulate > 1 and steps_per_epoch is not None:
        model = accumulating_model(model, cfg.accumulate)
    optimizer = optimizer_class(cfg)(learning_rate=learning_rate(cfg, steps_per_epoch),
                                     weight_decay=cfg.weight_decay or None,
                                     use_ema=cfg.ema > 0, ema_momentum=cfg.ema or 0.99)
    if cfg.weight_decay:
        # BatchNormalization's scale and shift and the biases set levels, not features;
        # shrinking them towards 0 only fights the data.
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    # Under mixed_float16, compile wraps the optimizer in Keras' dynamic loss scaling;
    # `optimizer` stays the inner one, whose variables are what checkpoints hold.
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    return model, optimizer


def averaged_weights(model, optimizer) -> list[np.ndarray]:
    """model.get_weights(), with the optimizer's moving averages in place of the trainable
    weights when it keeps them (--ema): what is validated, checkpointed and exported. The
    BatchNormalization statistics are the model's own, already averages of their kind."""
    if not optimizer.use_ema:
        return model.get_weights()
    # The optimizer indexes the variables it was built on: the trainable ones.
    averages, index = optimizer._model_variables_moving_average, optimizer._index_dict
    return [(averages[index[key]] if (key := optimizer._var_key(v)) in index else v).numpy()
            for v in model.weights]


def summed_gradients(model, x, y, micro_batches: int, loss_fn, scaler=None):
    """The sum over micro_batches equal slices of (x, y) of loss_fn(y, model(x))'s gradients,
    one slice after the other, and the training-mode predictions of each. scaler: a loss
    scale optimizer (float16), whose scale keeps small gradients from flushing to zero."""
    from .keras_backend import tf

    total, preds = None, []
    for xs, ys in zip(tf.split(x, micro_batches), tf.split(y, micro_batches)):
        # Nothing else orders the slices' passes: the executor could interleave them and
        # hold several slices' activations at once.
        with tf.control_dependencies(total or []):
            xs = tf.identity(xs)
        with tf.GradientTape() as tape:
            pred = model(xs, training=True)
            loss = loss_fn(ys, pred)
            if scaler is not None:
                loss = scaler.get_scaled_loss(loss)
        grads = tape.gradient(loss, model.trainable_variables)
        if scaler is not None:
            grads = scaler.get_unscaled_gradients(grads)
        total = grads if total is None else [a + g for a, g in zip(total, grads)]
        preds.append(pred)
    return total, preds


def accumulating_model(model, micro_batches: int):
    """The same layers (and weights, names, files) in a model whose train step splits each
    batch into micro_batches, sums their gradients, and applies the mean once: one all-reduce
    per micro_batches passes, BatchNormalization's statistics over one micro-batch."""
    from .keras_backend import keras, tf

    class Accumulating(keras.Model):
        def train_step(self, data):
            x, y = data
            scaler = self.optimizer if hasattr(self.optimizer, "get_scaled_loss") else None
            total, preds = summed_gradients(
                self, x, y, micro_batches, lambda ys, pred: self.compute_loss(None, ys, pred),
                scaler)
            self.optimizer.apply_gradients(
                zip([g / micro_batches for g in total], self.trainable_variables))
            # As Keras' own step: the metrics see the training-mode predictions.
            return self.compute_metrics(x, y, tf.concat(preds, 0), None)

    return Accumulating(inputs=model.inputs, outputs=model.outputs, name=model.name)


def optimizer_class(cfg: TrainConfig):
    """Adam, or Adam whose gradient all-reduce sends cfg.allreduce_dtype instead of float32:
    half the bytes on the wire; the summed gradients come back as float32 for the update."""
    from .keras_backend import keras, tf

    if cfg.allreduce_dtype in ("float32", "auto") or (cfg.num_workers or 0) <= 1:
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


def make_strategy(world: int, cfg: TrainConfig):
    """(strategy, its name for reports and the log). MultiWorkerMirroredStrategy when there is
    someone to all-reduce with; a single worker (or this process) gets TensorFlow's default
    strategy, whose gradients are the same without the collective runtime's cost."""
    from .keras_backend import tf

    if world == 1:
        return tf.distribute.get_strategy(), ONE_WORKER_STRATEGY
    return (tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=communication_options(cfg)), "MultiWorkerMirroredStrategy")


def communication_options(cfg: TrainConfig):
    """The all-reduce's options: packs of --allreduce-pack-mb, and NCCL between GPUs, which
    sums gradients on the GPUs instead of copying them to host memory (gRPC/ring)."""
    from .keras_backend import tf

    impl = tf.distribute.experimental.CommunicationImplementation
    return tf.distribute.experimental.CommunicationOptions(
        bytes_per_pack=int(cfg.allreduce_pack_mb * 2 ** 20),
        implementation=impl.NCCL if cfg.use_gpu else impl.AUTO)


def communication_line(cfg: TrainConfig, model, world: int) -> str:
    """What each all-reduce sends, for the worker log."""
    grad_mb = sum(int(np.prod(v.shape)) for v in model.trainable_variables) * \
        ALLREDUCE_BYTES[cfg.allreduce_dtype] / 2 ** 20
    packs = "one pack" if not cfg.allreduce_pack_mb else \
        f"packs of {cfg.allreduce_pack_mb:g} MiB"
    micro = f" x {cfg.accumulate} micro-batches" if cfg.accumulate > 1 else ""
    return (f"communication: {world} workers, {grad_mb:.1f} MiB of {cfg.allreduce_dtype} "
            f"gradients per update in {packs}, per-worker batch {cfg.per_worker_batch_size}"
            f"{micro}, update batch {cfg.update_batch_size} at lr {cfg.update_lr:g}")
