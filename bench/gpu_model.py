"""The ResNet-50's own speed on a GPU at each precision, where TensorFlow and Ray are absent.

PYTHONPATH=. KERAS_BACKEND=jax python bench/gpu_model.py [--epochs 8] [--out gpu-model.json]

The GPU machines this project is lent have JAX but no TensorFlow or Ray, and cannot fetch
them; `bench/gpu_check.sh` (the product's own `--use-gpu` path) needs both. This script builds
the same architecture (`resnet_ray.model`, unchanged) under Keras 3's JAX backend and trains it
on the embedded 0-5 photos with plain `fit`, batch 32, Adam 1e-3, no augmentation, once per
precision. It reports steady training images/s, inference images/s at batch 1, 32 and 256,
and the test score, so the GPU's speed for this model and whether each precision holds
accuracy are known before the product path runs there. It says nothing about Ray's overhead,
tf.data or NCCL.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
import types

os.environ.setdefault("KERAS_BACKEND", "jax")
import keras  # noqa: E402
import numpy as np  # noqa: E402

# resnet_ray.model takes Keras from resnet_ray.keras_backend, which imports TensorFlow;
# here that module is Keras 3, so the model code is the product's, line for line.
sys.modules["resnet_ray.keras_backend"] = types.SimpleNamespace(keras=keras)
from resnet_ray.data import load_signs  # noqa: E402
from resnet_ray.embedded import resolve  # noqa: E402
from resnet_ray.model import ResNet50  # noqa: E402

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def infer_rate(model, x: np.ndarray, batch: int, seconds: float) -> float:
    """Images/s of the compiled forward pass at `batch`, after a warm-up call."""
    xb = np.resize(x, (batch, *x.shape[1:]))
    model.predict_on_batch(xb)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        np.asarray(model.predict_on_batch(xb))
        n += batch
    return n / (time.perf_counter() - start)


class EpochTimes(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)

    def on_train_begin(self, logs=None):
        self.times = []


def run(precision: str, train, test, epochs: int, seconds: float) -> dict:
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    model = ResNet50(classes=6, bn_momentum=0.9)  # the recipe's (TrainConfig.bn_momentum)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x, xt = train.x.astype("float32") / 255.0, test.x.astype("float32") / 255.0
    timer = EpochTimes()
    start = time.perf_counter()
    history = model.fit(x, train.y, batch_size=32, epochs=epochs, shuffle=True,
                        callbacks=[timer], verbose=0)
    wall = time.perf_counter() - start
    steady = statistics.median(timer.times[1:]) if len(timer.times) > 1 else timer.times[0]
    loss, acc = model.evaluate(xt, test.y, batch_size=32, verbose=0)
    row = {"precision": precision, "epochs": epochs, "fit_seconds": round(wall, 2),
           "first_epoch_s": round(timer.times[0], 2),
           "train_images_per_s": round(len(x) / steady, 1),
           "final_train_accuracy": round(float(history.history["accuracy"][-1]), 4),
           "test_correct": int(round(acc * len(xt))), "test_images": len(xt),
           "test_loss": round(float(loss), 4)}
    for batch in (1, 32, 256):
        row[f"infer_images_per_s_b{batch}"] = round(infer_rate(model, xt, batch, seconds), 1)
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0, help="per inference rate")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--out", default="gpu-model.json")
    parser.add_argument("--limit", type=int, help="train on the first N images (a quick check)")
    args = parser.parse_args(argv)
    data = resolve("builtin:sign-digits")
    train, test = load_signs(f"{data}/train_signs.h5"), load_signs(f"{data}/test_signs.h5")
    if args.limit:
        train = dataclasses.replace(train, x=train.x[:args.limit], y=train.y[:args.limit])
    import jax

    report = {"devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
              "keras": keras.__version__, "python": platform.python_version(),
              "train_images": len(train.x), "test_images": len(test.x), "rows": []}
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}), flush=True)
    for precision in args.precisions.split(","):
        report["rows"].append(run(precision, train, test, args.epochs, args.seconds))
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
