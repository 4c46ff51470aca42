"""Ray Train against plain Keras `fit`: the same model, data, global batch and epochs.

python -m bench train [--quick] [--images 512] [--epochs 3] [--rounds 1] [--cpus C]
    [--setups keras,"ray 1x2"] [--allreduce-dtype float16 --accumulate 4 --lr-scaling sqrt]

Setups: plain Keras (no Ray), Ray Train with 1 worker x C CPUs, and with C workers x 1 CPU
(with the communication options given, a fourth). Each run is a fresh process and the setups
alternate round by round, so a noisy machine slows all alike. Steady images/s: the median
epoch from the second on; fixed cost: the rest of the wall time (imports, Ray, tracing,
validation, checkpoints). C defaults to the machine's CPUs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from .common import (alternate, by_round, fresh, parser, rank0_epochs, result_path, signs_dir,
                     steady, table, write_report)


def setups(cpus: int, options: dict) -> list[dict]:
    name = " ".join(f"{k.replace('_', ' ')} {v}" for k, v in options.items())
    out = [{"setup": "keras", "num_workers": 0}, {"setup": f"ray 1x{cpus}", "num_workers": 1},
           {"setup": f"ray {cpus}x1", "num_workers": cpus},
           {"setup": f"ray {cpus}x1 {name}", "num_workers": cpus, "options": options}]
    return out[:2] if cpus == 1 else out if options else out[:3]


def child(cfg_dict: dict) -> dict:
    """One run, timed epoch by epoch: plain Keras with the project's model, optimizer and
    input pipeline (num_workers 0), or the project's Ray Train run, from its reports."""
    from resnet_ray.config import TrainConfig

    cfg = TrainConfig.from_dict(cfg_dict)
    if cfg.num_workers:
        from resnet_ray.train import run_training

        run_training(cfg, quiet=True)
        rank0 = rank0_epochs(Path(cfg.run_dir))
        return {"epoch_times_s": [r["epoch_time_s"] for r in rank0],
                "images_per_epoch": round(rank0[0]["images_per_s"] * rank0[0]["epoch_time_s"])}
    from resnet_ray.input_pipeline import make_dataset_fn
    from resnet_ray.keras_backend import keras, tf
    from resnet_ray.layout import resolve_precision
    from resnet_ray.optim import build_compiled
    from resnet_ray.runtime import limit_threads
    from resnet_ray.sources import open_source

    limit_threads(cfg.cpus_per_worker)  # as a Ray worker with these CPUs gets
    train = open_source(cfg).train
    keras.utils.set_random_seed(cfg.seed)
    steps, times = len(train) // cfg.batch_size, []
    model, _ = build_compiled(cfg, steps, resolve_precision(cfg.precision, cfg.use_gpu))
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda e, logs: times.append(-time.perf_counter()),
        on_epoch_end=lambda e, logs: times.__setitem__(-1, times[-1] + time.perf_counter()))
    model.fit(tf.distribute.get_strategy().distribute_datasets_from_function(
        make_dataset_fn(train, cfg, 0)), epochs=cfg.epochs, steps_per_epoch=steps,
        callbacks=[timer], verbose=0)
    return {"epoch_times_s": times, "images_per_epoch": steps * cfg.batch_size}


def run_setup(setup: dict, base: dict, work: Path) -> dict:
    """One setup's run in a fresh process: its steady images/s and fixed cost."""
    cfg = {**base, **setup.get("options", {}), "num_workers": setup["num_workers"],
           "cpus_per_worker": 1 if setup["num_workers"] > 1 else base["cpus_per_worker"],
           "storage": str(work / "runs"), "name": f"run-{time.time_ns()}"}
    begin = time.perf_counter()
    out = fresh("train_overhead", "child", cfg)
    wall, times = time.perf_counter() - begin, out["epoch_times_s"]
    epoch = steady(times)
    return {"wall_s": wall, "epoch_times_s": times,
            "steady_images_per_s": out["images_per_epoch"] / epoch,
            "fixed_s": wall - epoch * len(times)}


def summarize(runs: list[dict]) -> list[dict]:
    """A row per setup (medians over its rounds) and its ratio to plain Keras, round by
    round: the two runs of a round sat next to each other in time."""
    rows = []
    for name in dict.fromkeys(r["side"] for r in runs):
        mine, ratios = [r for r in runs if r["side"] == name], by_round(runs, name, "keras")
        rows.append({"setup": name, "runs": len(mine), **{
            k: statistics.median(r[k] for r in mine) for k in ("steady_images_per_s", "fixed_s")},
            **({"vs_keras_by_round": ratios, "vs_keras": statistics.median(ratios)}
               if ratios else {})})
    return rows


def run(a: argparse.Namespace) -> dict:
    cpus = a.cpus or os.cpu_count() or 1
    options = {k: getattr(a, k) for k in ("allreduce_dtype", "accumulate", "lr_scaling")
               if getattr(a, k) is not None}
    chosen = setups(cpus, options)
    if a.setups:
        names = [n.strip() for n in a.setups.split(",")]
        chosen = [s for s in chosen if any(s["setup"].startswith(n) for n in names)]
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        base = {"data": signs_dir(Path(tmp) / "data", a.images), "model":
                "tiny" if a.quick else "resnet50", "epochs": a.epochs, "batch_size": 32,
                "keep_checkpoints": 1, "val_fraction": 0.0, "cpus_per_worker": cpus}
        runs = alternate({s["setup"]: s for s in chosen}, a.rounds,
                         lambda name, setup, r: run_setup(setup, base, Path(tmp)))
    rows = summarize(runs)
    text = table(["setup", "steady images/s", "x plain Keras (by round)", "fixed s"], [
        [r["setup"], f"{r['steady_images_per_s']:.1f}", f"{r.get('vs_keras', 0):.2f} (" +
         " / ".join(f"{x:.2f}" for x in r.get("vs_keras_by_round", [])) + ")",
         f"{r['fixed_s']:.0f}"] for r in rows])
    report = {"part": "train", "quick": a.quick, "model": base["model"], "images": a.images,
              "epochs": a.epochs, "cpus": cpus, "rounds": a.rounds, "options": options,
              "summary": rows, "runs": runs}
    return write_report(report, result_path(a.out, "train", a.quick), text)


def main(argv=None) -> dict:
    p = parser("train", __doc__)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--cpus", type=int)
    p.add_argument("--setups", help="comma-separated setup names (or their starts)")
    p.add_argument("--allreduce-dtype", choices=("float16", "bfloat16"))
    p.add_argument("--accumulate", type=int)
    p.add_argument("--lr-scaling", choices=("linear", "sqrt", "none"))
    return run(p.parse_args(argv))
