"""The training recipe's options: on-the-fly augmentation, mixup and the learning-rate
schedule."""

import json

import numpy as np
import pytest

from resnet_ray.config import TrainConfig
from resnet_ray.errors import ConfigError

from conftest import assert_user_error


def _augment(x, strength, seed):
    from resnet_ray.keras_backend import tf
    from resnet_ray.input_pipeline import augment_batch

    return augment_batch(tf.constant(x), strength, tf.constant(seed, tf.int64)).numpy()


def test_augmentation_is_seeded_bounded_and_off_at_zero(synth_dir):
    from resnet_ray.data import load_signs

    x = load_signs(synth_dir / "test_signs.h5").x[:8].astype(np.float32) / 255.0
    a, b = _augment(x, 1.0, [3, 7]), _augment(x, 1.0, [3, 7])
    np.testing.assert_array_equal(a, b)  # same seed, same augmentation: runs repeat
    assert not np.allclose(a, _augment(x, 1.0, [3, 8]))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    np.testing.assert_allclose(_augment(x, 0.0, [3, 7]), x, atol=1e-6)
    # Mild at strength 1: the picture moves, it is not replaced.
    diff = np.abs(a - x).mean()
    assert 0.005 < diff < np.abs(x - x[::-1]).mean(), diff


def test_mixup_blends_images_and_labels_alike(synth_dir):
    from resnet_ray.data import load_signs
    from resnet_ray.input_pipeline import mixup_batch
    from resnet_ray.keras_backend import tf

    signs = load_signs(synth_dir / "test_signs.h5")
    x, y = signs.x[:8].astype(np.float32) / 255.0, np.eye(len(signs.classes))[signs.y[:8]]

    def mix(alpha, seed):
        xm, ym = mixup_batch(tf.constant(x), tf.constant(y, tf.float32), alpha,
                             tf.constant(seed, tf.int64))
        return xm.numpy(), ym.numpy()

    xm, ym = mix(0.4, [3, 7])
    np.testing.assert_array_equal(xm, mix(0.4, [3, 7])[0])  # seeded: runs repeat
    assert not np.allclose(xm, mix(0.4, [3, 8])[0])
    np.testing.assert_allclose(ym.sum(1), 1, atol=1e-6)  # still a distribution
    # Each image is its own and its partner's (the reversed batch's) pixels in the label's
    # proportions: solve for the weight from the labels and check the pixels against it.
    pairs = [(i, len(x) - 1 - i) for i in range(len(x)) if y[i].argmax() != y[-1 - i].argmax()]
    assert pairs, "the batch needs partners of different classes"
    for i, j in pairs:
        lam = ym[i, y[i].argmax()]
        assert 0 <= lam <= 1
        np.testing.assert_allclose(xm[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5)
    assert not np.allclose(xm, x)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_ema_scores_the_moving_average_of_every_steps_weights(precision):
    """With --ema, the weights validated, checkpointed and exported (averaged_weights) are
    the moving average of the weights after each step; the BatchNormalization statistics
    are the model's own; without it they are the model's weights."""
    from resnet_ray.keras_backend import keras
    from resnet_ray.optim import averaged_weights, build_compiled

    cfg = TrainConfig(data="-", model="tiny", epochs=1, ema=0.5, lr_schedule="constant",
                      warmup_epochs=0)
    model, optimizer = build_compiled(cfg, 4, precision)
    x = np.random.default_rng(0).random((32, 64, 64, 3), dtype=np.float32)
    y = keras.utils.to_categorical(np.arange(32) % 6, 6)
    trainable = [i for i, w in enumerate(model.weights) if w.trainable]
    expected = model.get_weights()
    after = []  # every step's weights, as Keras has just updated them

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            after.append(model.get_weights())

    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[Record()])
    assert len(after) == 4
    for weights in after:
        expected = [0.5 * e + 0.5 * w for e, w in zip(expected, weights)]
    scored = averaged_weights(model, optimizer)
    last = after[-1]
    for i, (got, want) in enumerate(zip(scored, expected)):
        if i in trainable:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(got, last[i])
    assert not all(np.allclose(a, b) for a, b in zip(scored, last))
    plain, plain_optimizer = build_compiled(TrainConfig(data="-", model="tiny"), 4)
    assert all(np.array_equal(a, b) for a, b in
               zip(averaged_weights(plain, plain_optimizer), plain.get_weights()))


def test_learning_rate_schedules():
    from resnet_ray.optim import lr_at

    cfg = TrainConfig(epochs=5, lr=1e-3, lr_schedule="cosine", warmup_epochs=1)
    rates = [lr_at(cfg, 10, s) for s in range(50)]
    assert rates[0] == pytest.approx(1e-4) and rates[10] == pytest.approx(1e-3)
    assert all(b > a for a, b in zip(rates[:10], rates[1:11]))      # linear warm-up
    assert all(b < a for a, b in zip(rates[10:49], rates[11:50]))   # then cosine decay
    assert rates[-1] < 1e-5
    flat = TrainConfig(epochs=5, lr=1e-3, lr_schedule="constant", warmup_epochs=1)
    assert [lr_at(flat, 10, s) for s in (10, 25, 49)] == pytest.approx([1e-3] * 3)
    seed = TrainConfig(lr=3e-4, lr_schedule="constant", warmup_epochs=0)  # the seed's recipe
    assert lr_at(seed, 10, 7) == pytest.approx(3e-4)


def test_recipe_is_the_default_and_short_runs_keep_it():
    d = TrainConfig()
    assert (d.augment, d.lr_schedule, d.warmup_epochs) == (1.0, "cosine", 1.0)
    # A 1-epoch run (tests, smoke searches) is valid with the default warm-up, which is cut
    # to a fifth of the run so that most steps train at the full rate and then decay.
    short = TrainConfig(epochs=1).validate()
    assert short.warmup_steps(10) == 2
    assert TrainConfig(epochs=20).warmup_steps(10) == 10


@pytest.mark.parametrize("field, value, fragment", [
    ("lr_schedule", "linear", "lr_schedule"),
    ("augment", -0.5, "augment"),
    ("warmup_epochs", 21, "warmup_epochs"),
    ("warmup_epochs", -1, "warmup_epochs"),
    ("weight_decay", -0.1, "weight_decay"),
    ("weight_decay", 1.0, "weight_decay"),
    ("mixup", -0.2, "mixup"),
    ("ema", 1.0, "ema"),
])
def test_bad_recipe_values_are_named(field, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        TrainConfig(**{field: value}).validate()


def test_cli_recipe_flags_reach_the_run_and_its_export(cli, synth_dir, tmp_path):
    proc = cli("train", "--data", synth_dir, "--model", "tiny", "--epochs", 2,
                   "--num-workers", 0, "--augment", 1, "--lr-schedule", "cosine",
                   "--warmup-epochs", 0.5, "--weight-decay", 0.05, "--mixup", 0.2,
                   "--ema", 0.9,
                   "--storage", tmp_path,
                   "--name", "r",
                   "--export", tmp_path / "model")
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "model" / "metadata.json").read_text())
    assert meta["config"]["augment"] == 1 and meta["config"]["lr_schedule"] == "cosine"
    assert meta["config"]["warmup_epochs"] == 0.5 and meta["config"]["weight_decay"] == 0.05
    assert meta["config"]["mixup"] == 0.2 and meta["config"]["ema"] == 0.9
    bad = cli("train", "--data", synth_dir, "--augment", "-1", "--num-workers", 0,
                  "--storage", tmp_path)
    assert_user_error(bad, "augment")


def test_weight_decay_shrinks_kernels_only():
    """One step from the same weights on the same batch: with decay, each kernel is smaller
    by exactly lr x decay x its old value; BatchNormalization's scale and shift and the
    biases take the same step as without."""
    from resnet_ray.keras_backend import keras
    from resnet_ray.optim import build_compiled

    rng = np.random.default_rng(0)
    x = rng.random((8, 64, 64, 3), np.float32)
    y = np.eye(6, dtype=np.float32)[rng.integers(0, 6, 8)]
    after = {}
    for wd in (0.0, 0.5):
        keras.utils.set_random_seed(0)
        model, _ = build_compiled(TrainConfig(model="tiny", data="-", lr=0.01, weight_decay=wd,
                                              lr_schedule="constant", warmup_epochs=0))
        before = {v.name: v.numpy() for v in model.trainable_variables}
        model.run_eagerly = True  # the same update, without seconds of graph tracing
        model.train_on_batch(x, y)
        after[wd] = {v.name: v.numpy() for v in model.trainable_variables}
    kernels = [n for n in before if "kernel" in n]
    others = [n for n in before if "kernel" not in n]
    assert kernels and any("gamma" in n for n in others) and any("bias" in n for n in others)
    for n in kernels:
        np.testing.assert_allclose(after[0.0][n] - after[0.5][n], 0.01 * 0.5 * before[n],
                                   atol=1e-6)
    for n in others:
        np.testing.assert_allclose(after[0.0][n], after[0.5][n], atol=1e-7)
