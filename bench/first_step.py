"""Why the first epoch is slow: the first training steps of the ResNet-50, one at a time.

python -m bench.first_step --data DIR [--steps 6] [--threads 2] [--jit] [--no-grappler]

Builds the model as a worker does (same config, optimizer, input pipeline) in this process,
without Ray, and prints how long each of the first steps takes, then the first and second
validation pass over 96 images. --jit compiles the step with XLA; --no-grappler turns off
TensorFlow's graph optimizer, to see whether either shortens the first step.
"""

from __future__ import annotations

import argparse
import time


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a SIGNS directory (data import)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jit", action="store_true")
    parser.add_argument("--no-grappler", action="store_true")
    args = parser.parse_args(argv)
    from resnet_ray.config import TrainConfig
    from resnet_ray.data import load_signs
    from resnet_ray.input_pipeline import make_dataset_fn
    from resnet_ray.keras_backend import keras, tf
    from resnet_ray.optim import build_compiled
    from resnet_ray.worker import predict_probs

    from .common import machine

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    if args.no_grappler:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    cfg = TrainConfig(data=args.data, model="resnet50", num_workers=1)
    train = load_signs(f"{args.data}/train_signs.h5")
    model, optimizer = build_compiled(cfg, len(train) // cfg.batch_size)
    if args.jit:
        model.compile(optimizer=optimizer, loss=model.loss, metrics=["accuracy"],
                      jit_compile=True)
    print(f"{machine()}; {args.threads} threads, jit {args.jit}, "
          f"grappler {not args.no_grappler}", flush=True)

    class StepTimes(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.last = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            print(f"step {batch + 1}: {now - self.last:.2f} s", flush=True)
            self.last = now

    data = tf.distribute.get_strategy().distribute_datasets_from_function(
        make_dataset_fn(train, cfg, 0))
    model.fit(data, epochs=1, steps_per_epoch=args.steps, callbacks=[StepTimes()], verbose=0)
    for label in ("first", "second"):
        start = time.perf_counter()
        predict_probs(model, train.x[:96])
        print(f"{label} validation pass (96 images): {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
