"""Training overhead of Ray Train against plain Keras `fit`.

python -m bench.train_overhead [--quick] [--images 256] [--epochs 3] [--rounds 2] [--out PATH]
    [--allreduce-dtype float16 --accumulate 4 ...] [--setups "ray 1x2,ray 2x1 float16"]

Three setups train the same model on the same data with the same global batch and epochs:
plain Keras `fit` in one process (no Ray), Ray Train with 1 worker using every CPU, and Ray
Train with one worker per CPU. Each run is a fresh process (a fresh Ray instance, a fresh
TensorFlow), and the setups alternate round by round so that a noisy machine slows all of them
alike. Steady state is the median epoch time from epoch 2 on, as fit measures it (validation
and checkpoint writing, done between epochs, are not in it); the fixed cost is everything else
in the process's wall time: imports, Ray and worker start, the first epoch's graph tracing
beyond a steady epoch, validation, checkpoints, shutdown.

--cpus C below the machine's count gives every setup C CPUs (plain Keras as many TensorFlow
threads), so Ray's own processes have the other cores to wake on.

Communication options add a fourth setup, one worker per CPU with those options,
and the ratio of every setup to Ray Train's 1 worker x all CPUs; --setups keeps only the named
setups (each name as printed, or its start).

--quick trains the tiny model on a few images for 2 epochs: seconds, to keep the harness
working (tests/test_bench.py), not to measure anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from .common import epoch_timer, result_path, write_report

ROOT = Path(__file__).resolve().parent.parent


def _setups(cpus: int, options: dict | None = None) -> list[dict]:
    setups = [{"setup": "keras", "num_workers": 0, "cpus_per_worker": cpus},
              {"setup": f"ray 1x{cpus}", "num_workers": 1, "cpus_per_worker": cpus}]
    if cpus > 1:
        setups.append({"setup": f"ray {cpus}x1", "num_workers": cpus, "cpus_per_worker": 1})
    if options:
        name = ", ".join(str(v) if k == "allreduce_dtype" else f"{k.replace('_', ' ')} {v}"
                         for k, v in options.items())
        setups.append({"setup": f"ray {cpus}x1 {name}", "num_workers": cpus,
                       "cpus_per_worker": 1, "options": options})
    return setups


def select(setups: list[dict], names: str | None) -> list[dict]:
    if not names:
        return setups
    chosen = []
    for want in (n.strip() for n in names.split(",") if n.strip()):
        # "ray 2x1" is a setup of its own and the start of the one with options.
        found = [s for s in setups if s["setup"] == want] or \
            [s for s in setups if s["setup"].startswith(want)]
        if not found:
            raise SystemExit(f"--setups: no setup {want!r} among {[s['setup'] for s in setups]}")
        chosen += [s for s in found if s not in chosen]
    return sorted(chosen, key=setups.index)


def child_keras(cfg_dict: dict) -> dict:
    """Plain Keras: the project's model, optimizer and input pipeline, no Ray at all."""
    from resnet_ray.config import TrainConfig
    from resnet_ray.data import load_data_dir
    from resnet_ray.keras_backend import keras, tf
    from resnet_ray.input_pipeline import make_dataset_fn
    from resnet_ray.layout import resolve_precision
    from resnet_ray.optim import build_compiled
    from resnet_ray.runtime import limit_threads

    cfg = TrainConfig.from_dict(cfg_dict)
    # The thread pools a Ray worker with these CPUs gets: with --cpus below the machine's
    # count, both sides leave the other cores to Ray's own processes.
    limit_threads(cfg.cpus_per_worker)
    train, _ = load_data_dir(cfg.data)
    keras.utils.set_random_seed(cfg.seed)
    steps = len(train) // cfg.batch_size
    strategy = tf.distribute.get_strategy()
    # The precision a Ray worker on this machine would choose.
    model, _ = build_compiled(cfg, steps, resolve_precision(cfg.precision, cfg.use_gpu))
    dataset = strategy.distribute_datasets_from_function(make_dataset_fn(train, cfg, 0))
    times: list[float] = []
    model.fit(dataset, epochs=cfg.epochs, steps_per_epoch=steps,
              callbacks=[epoch_timer(keras, times)], verbose=0)
    return {"epoch_times_s": times, "images_per_epoch": steps * cfg.batch_size}


def child_ray(cfg_dict: dict) -> dict:
    """Ray Train: the project's own run, timed from the reports its workers send."""
    from resnet_ray.config import TrainConfig
    from resnet_ray.train import REPORTS_FILE, run_training

    cfg = TrainConfig.from_dict(cfg_dict)
    run_training(cfg, quiet=True)
    reports = [json.loads(line) for line in
               (Path(cfg.run_dir) / REPORTS_FILE).read_text().splitlines()]
    rank0 = sorted((r for r in reports if r["rank"] == 0), key=lambda r: r["epoch"])
    return {"epoch_times_s": [r["epoch_time_s"] for r in rank0],
            "images_per_epoch": round(rank0[0]["images_per_s"] * rank0[0]["epoch_time_s"])}


def run_setup(setup: dict, base: dict, work: Path) -> dict:
    """One setup in a fresh process; its wall time includes every start-up cost."""
    cfg = {**base, **setup.get("options", {}), "num_workers": setup["num_workers"],
           "cpus_per_worker": setup["cpus_per_worker"],
           "storage": str(work / "runs"), "name": f"{setup['setup'].replace(' ', '-')}-"
                                                 f"{time.time_ns()}"}
    begin = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.train_overhead", "--child",
                           json.dumps(cfg)], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - begin
    if proc.returncode != 0:
        raise RuntimeError(f"{setup['setup']} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    times = out["epoch_times_s"]
    steady = statistics.median(times[1:]) if len(times) > 1 else times[0]
    return {"setup": setup["setup"], "wall_s": wall, "epoch_times_s": times,
            "steady_epoch_s": steady, "steady_images_per_s": out["images_per_epoch"] / steady,
            "fixed_s": wall - steady * len(times), "first_epoch_extra_s": times[0] - steady}


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for name in dict.fromkeys(r["setup"] for r in runs):
        mine = [r for r in runs if r["setup"] == name]
        rows.append({"setup": name, "runs": len(mine),
                     "steady_images_per_s": statistics.median(
                         r["steady_images_per_s"] for r in mine),
                     "fixed_s": statistics.median(r["fixed_s"] for r in mine),
                     "first_epoch_extra_s": statistics.median(
                         r["first_epoch_extra_s"] for r in mine)})
    rates = {r["setup"]: r["steady_images_per_s"] for r in rows}
    ray_one = next((r for r in rates if r.startswith("ray 1x")), None)
    for row in rows:
        if "keras" in rates:
            row["vs_keras"] = row["steady_images_per_s"] / rates["keras"]
        if ray_one:
            row["vs_ray_one_worker"] = row["steady_images_per_s"] / rates[ray_one]
            # Side by side: each round's ratio, the two runs next to each other in time, so a
            # slow patch of a shared machine (CPU steal) hits both sides of one ratio.
            by_round = [mine["steady_images_per_s"] / one["steady_images_per_s"]
                        for mine in runs if mine["setup"] == row["setup"]
                        for one in runs if one["setup"] == ray_one
                        and one.get("round") == mine.get("round")]
            if by_round:
                row["vs_ray_one_worker_by_round"] = by_round
                row["vs_ray_one_worker_round_median"] = statistics.median(by_round)
    return rows


def markdown(rows: list[dict]) -> str:
    def ratio(r, key):
        return f"{r[key]:.2f}" if key in r else "-"

    def rounds(r):
        return " / ".join(f"{x:.2f}" for x in r.get("vs_ray_one_worker_by_round", [])) or "-"

    lines = ["| setup | steady images/s | x plain Keras | x Ray 1 worker | x Ray 1 worker by "
             "round (median) | fixed start-up s | first-epoch extra s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        median = f" ({r['vs_ray_one_worker_round_median']:.2f})" \
            if "vs_ray_one_worker_round_median" in r else ""
        lines.append(f"| {r['setup']} | {r['steady_images_per_s']:.1f} | "
                     f"{ratio(r, 'vs_keras')} | {ratio(r, 'vs_ray_one_worker')} | "
                     f"{rounds(r)}{median} | "
                     f"{r['fixed_s']:.0f} | {r['first_epoch_extra_s']:.1f} |")
    return "\n".join(lines)


def run(quick: bool = False, images: int | None = None, epochs: int | None = None,
        rounds: int | None = None, batch_size: int = 32, cpus: int | None = None,
        out: str | None = None, options: dict | None = None, setups: str | None = None,
        weight_decay: float | None = None) -> dict:
    from resnet_ray.data import write_signs_dir
    from resnet_ray.synth import synth_data

    cpus = cpus or os.cpu_count() or 1
    images = images or (64 if quick else 256)
    epochs = epochs or (2 if quick else 3)
    rounds = rounds or (1 if quick else 2)
    if batch_size % cpus:
        raise SystemExit(f"--batch-size {batch_size} must divide over {cpus} workers")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        # The project's embedded default data: the speed does not depend on what it shows.
        train, test = synth_data(images, 12, seed=0)
        write_signs_dir(work / "data", train, test)
        base = {"data": str(work / "data"), "model": "tiny" if quick else "resnet50",
                "epochs": epochs, "batch_size": batch_size, "keep_checkpoints": 1,
                "val_fraction": 0.0}
        if weight_decay is not None:  # for every setup, unlike the communication options
            base["weight_decay"] = weight_decay
        runs = []
        for round_ in range(rounds):
            for setup in select(_setups(cpus, options), setups):
                result = run_setup(setup, base, work)
                result["round"] = round_ + 1
                print(json.dumps(result), flush=True)
                runs.append(result)
    rows = summarize(runs)
    report = {"part": "train_overhead", "date": str(date.today()), "quick": quick,
              "model": base["model"], "images_per_epoch": images, "epochs": epochs,
              "global_batch": batch_size, "cpus": cpus, "rounds": rounds,
              "options": options or {}, "weight_decay": base.get("weight_decay"),
              "summary": rows, "runs": runs}
    write_report(report, result_path(out, "train-overhead", quick), markdown(rows))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, help="training images per epoch (default 256)")
    parser.add_argument("--epochs", type=int, help="per run (default 3)")
    parser.add_argument("--rounds", type=int, help="alternations of the setups (default 2)")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch")
    parser.add_argument("--cpus", type=int, help="default: this machine's CPU count")
    parser.add_argument("--out", help="JSON path (a .md table is written beside it)")
    parser.add_argument("--allreduce-dtype", choices=("float16", "bfloat16"))
    parser.add_argument("--allreduce-pack-mb", type=float)
    parser.add_argument("--accumulate", type=int)
    parser.add_argument("--lr-scaling", choices=("linear", "sqrt", "none"))
    parser.add_argument("--setups", help="comma-separated setup names to run (default: all)")
    parser.add_argument("--weight-decay", type=float, help="for every setup (default: the "
                        "training default)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    options = {k: getattr(args, k) for k in ("allreduce_dtype", "allreduce_pack_mb",
                                             "accumulate", "lr_scaling")
               if getattr(args, k) is not None}
    if args.child:
        cfg = json.loads(args.child)
        result = child_keras(cfg) if cfg["num_workers"] == 0 else child_ray(cfg)
        print(json.dumps(result), flush=True)
        return
    run(args.quick, args.images, args.epochs, args.rounds, args.batch_size, args.cpus, args.out,
        options, args.setups, args.weight_decay)


if __name__ == "__main__":
    main()
