"""The per-worker input pipeline: one shuffled order shared by all workers, each taking its
own shard of every global batch, with augmentation computed on the worker."""

from __future__ import annotations

import numpy as np

from . import testhooks
from .config import TrainConfig
from .data import Signs
from .folders import keep_if_small

REPEATED_BATCHES = 8  # a shard short of `steps` batches (skipped files) repeats its first ones


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
        return _model_input(ds, cfg, classes, seed * 1009 + input_context.input_pipeline_id)

    return dataset_fn


def make_stream_fn(shard, cfg: TrainConfig, steps: int, first_epoch: int):
    """Per-worker input from the worker's Ray Data shard of a photo folder: decoded batches
    (already this worker's share), shuffled, augmented as above.

    Each epoch is `steps` batches (the listed files' count; where skipped files made a shard
    shorter, the epoch's first few batches come again). A share of at most `cfg.keep_images`
    images is kept, decoded, after the first pass and reshuffled in memory each later epoch,
    since a Ray Data pass takes CPU from the model; a larger share streams every epoch, and
    no pass starts after the last epoch. The next pass starts while this epoch validates."""
    from .keras_backend import tf

    shape = tuple(cfg.input_shape)

    def dataset_fn(input_context):
        per_replica = input_context.get_per_replica_batch_size(cfg.update_batch_size)
        worker = input_context.input_pipeline_id

        def batches():
            memory = None  # this worker's share, decoded, once it is known to be small
            for epoch in range(first_epoch, cfg.epochs):
                kept: list = []
                source = _streamed(shard, per_replica, cfg.keep_images, kept) \
                    if memory is None else \
                    _from_memory(memory, per_replica, (cfg.seed, epoch, worker))
                taken, first = 0, []  # a few batches to repeat: memory stays flat
                for b in source:
                    if taken < steps:
                        testhooks.record_files(epoch + 1, worker, b["path"])
                        batch = (b["image"], b["label"].astype(np.int32))
                        if len(first) < REPEATED_BATCHES:
                            first.append(batch)
                        taken += 1
                        yield batch
                for i in range(steps - taken):
                    yield first[i % len(first)]
                if kept:
                    memory = {k: np.concatenate([b[k] for b in kept]) for k in kept[0]}

        ds = tf.data.Dataset.from_generator(batches, output_signature=(
            tf.TensorSpec((per_replica, *shape), tf.uint8),
            tf.TensorSpec((per_replica,), tf.int32)))
        stream = (cfg.seed + first_epoch) * 1009 + worker
        return _model_input(ds, cfg, len(cfg.classes), stream)

    return dataset_fn


def _streamed(shard, per_replica: int, keep: int, kept: list):
    """One Ray Data pass in full batches, kept as `keep_if_small` keeps them."""
    batches = shard.iter_batches(batch_size=per_replica, batch_format="numpy",
                                 prefetch_batches=2, local_shuffle_buffer_size=8 * per_replica)
    for b in keep_if_small(batches, keep, kept):
        if len(b["label"]) == per_replica:
            yield b


def _from_memory(memory: dict[str, np.ndarray], per_replica: int, seed: tuple[int, ...]):
    """A kept share in full batches, in a new order for every seed."""
    order = np.random.default_rng(seed).permutation(len(memory["label"]))
    for i in range(0, len(order) - per_replica + 1, per_replica):
        take = order[i:i + per_replica]
        yield {k: v[take] for k, v in memory.items()}


def _model_input(ds, cfg: TrainConfig, classes: int, stream: int):
    """uint8 batches -> [0, 1] floats and one-hot labels, augmented with seeds that depend
    on the stream (the epoch and the worker) and the step."""
    from .keras_backend import tf

    ds = ds.map(lambda xb, yb: (tf.cast(xb, tf.float32) / 255.0, tf.one_hot(yb, classes)),
                num_parallel_calls=tf.data.AUTOTUNE)

    def recipe(i, batch):
        images, labels = batch
        if cfg.augment > 0:
            images = augment_batch(images, cfg.augment, tf.stack([tf.cast(stream, tf.int64), i]))
        if cfg.mixup > 0:
            # Streams are never negative: mixup's seeds never repeat augmentation's.
            images, labels = mixup_batch(images, labels, cfg.mixup,
                                         tf.stack([tf.cast(-1 - stream, tf.int64), i]))
        return images, labels

    if cfg.augment > 0 or cfg.mixup > 0:
        ds = ds.enumerate().map(recipe, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def mixup_batch(images, labels, alpha: float, seed):
    """mixup (Zhang et al., 2018): each image and its one-hot label blended with those of its
    partner in the reversed batch (batches come shuffled, so partners are random) by a weight
    drawn from Beta(alpha, alpha) per image, with stateless ops as in augment_batch."""
    from .keras_backend import tf

    g = tf.random.stateless_gamma([2, tf.shape(images)[0]], seed=seed, alpha=alpha)
    # Beta(a, a) from two gammas; both underflow to 0 only for tiny alphas (then: the partner).
    lam = tf.math.divide_no_nan(g[0], g[0] + g[1])
    w = lam[:, None, None, None]
    images = w * images + (1.0 - w) * tf.reverse(images, [0])
    labels = lam[:, None] * labels + (1.0 - lam[:, None]) * tf.reverse(labels, [0])
    return images, labels


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
