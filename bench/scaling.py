"""Data-parallel scaling: each training step split into compute, all-reduce and
the rest (the weight update and idle time) on real Ray Train workers, and a model that predicts
images/s for N workers.

python -m bench.scaling [--quick] [--workers 2,3,4] [--batch 16] [--out PATH]

Each setup runs split_loop on its Ray Train workers: the forward and backward pass alone, the
optimizer's gradient all-reduce alone, and the whole step as fit runs it, timed on the worker
in turn, round after round (median of 7 after 2 warm-ups). 1 worker x all cores at the same
global batch is the reference; 3 and 4 workers share this host's cores on purpose, to check
the model where the compute per worker shrinks. Two workers are also measured with the
communication options (float16 gradients, 8 MiB packs) and with TensorFlow's own thread pools
(the state before train.limit_threads).

The model: an update takes a worker's compute (b images x t_img) plus a ring all-reduce of S
gradient bytes, 2 (N-1)/N x S / bandwidth + 2 (N-1) x latency, plus an overhead per update
(Adam's update, the runtime). A worker with a share of a core (3 and 4 workers here) does all
three that much slower. Calibrated on the measured multi-worker rows (medians of loopback's
bandwidth and the overhead, per whole core), it predicts each multi-worker setup, calibrated
without it, from that setup's compute time, bytes and core share (3 and 4 workers, float16,
accumulation) and, from one core's t_img, N = 1..64 workers on 1, 10 and 100 Gbit/s links,
for this CPU and for a GPU worker.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

from resnet_ray.optim import ALLREDUCE_BYTES

from .common import result_path, write_report

LINKS_GBIT = (1, 10, 100)
WORKERS = (1, 2, 4, 8, 16, 32, 64)
LATENCY_S = 50e-6  # per ring hop on a data-centre network; loopback's is fitted away
# A GPU worker for the "what if": a V100-class GPU trains ResNet-50 at 224x224 at about 400
# images/s in float32; at 64x64 the work per image is (64/224)^2 of that.
GPU_IMAGES_PER_S = 400 * (224 / 64) ** 2
# What the predictions are for: (images per worker per all-reduce, share of float32's bytes).
PREDICTION_SETTINGS = {
    "per-worker batch 16 (the default 32 over 2), float32 gradients": (16, 1.0),
    "per-worker batch 16 x accumulate 4, float16 gradients": (64, 0.5),
    "per-worker batch 256 (a GPU's usual), float16 gradients": (256, 0.5),
}


def ring_allreduce_s(n: int, grad_bytes: float, gbit_per_s: float, latency_s: float) -> float:
    if n <= 1:
        return 0.0
    return 2 * (n - 1) / n * grad_bytes * 8 / (gbit_per_s * 1e9) + 2 * (n - 1) * latency_s


def predict(n: int, batch: int, s_per_image: float, grad_bytes: float, gbit_per_s: float,
            latency_s: float = LATENCY_S, overlap: float = 0.0,
            overhead_s: float = 0.0) -> dict:
    """images/s and efficiency of n workers at per-worker batch `batch`; `overlap` is the
    share of the compute time that can hide communication (the backward pass's part);
    `overhead_s` is what an update of several workers costs beyond compute and all-reduce.
    Efficiency is images/s over n x one worker's."""
    compute = batch * s_per_image
    comm = ring_allreduce_s(n, grad_bytes, gbit_per_s, latency_s)
    step = compute + max(0.0, comm - overlap * compute) + (overhead_s if n > 1 else 0.0)
    rate = n * batch / step
    return {"workers": n, "step_s": step, "comm_s": comm, "images_per_s": rate,
            "efficiency": rate / (n * batch / compute)}


def fitted_gbit_per_s(n: int, grad_bytes: float, comm_s: float) -> float:
    """The bandwidth a ring all-reduce of grad_bytes over n workers must have had to take
    comm_s (latency folded in)."""
    return 2 * (n - 1) / n * grad_bytes * 8 / comm_s / 1e9


def core_share(row: dict) -> float:
    """The share of a core a measured worker had: 3 and 4 workers on 2 cores get 2/3 and 1/2."""
    return min(1.0, row["cpus_per_worker"])


def sent_bytes(row: dict, grad_bytes: float) -> float:
    return grad_bytes * ALLREDUCE_BYTES[row.get("allreduce_dtype") or "float32"] / 4


def calibrate(rows: list[dict], grad_bytes: float) -> tuple[float, float]:
    """Loopback's all-reduce bandwidth and the overhead per update, each for a whole core, as
    the medians over the given multi-worker rows of their measured all-reduce and rest.
    On loopback a worker's core moves the bytes (gRPC copies them) and runs Adam's update, so
    a worker with half a core takes twice as long at both; scaled to a whole core, rows with
    2, 3 and 4 workers measure the same two numbers. Medians, because one phase timed in a
    burst of the VM's steal time must not set the model (2026-12-02's 2 x 1 row did)."""
    if not rows:
        raise ValueError("the scaling model needs at least one measured multi-worker row")
    gbit = float(np.median([fitted_gbit_per_s(r["workers"], sent_bytes(r, grad_bytes),
                                              r["allreduce_s"] * core_share(r)) for r in rows]))
    overhead = max(0.0, float(np.median([r["rest_s"] * core_share(r) for r in rows])))
    return gbit, overhead


def split_loop(config: dict) -> None:
    """One Ray Train worker: time, on this worker, (a) the forward and backward pass alone,
    (b) the gradient all-reduce alone (the optimizer's own, so the communication options and
    dtype are the product's), (c) the whole training step as fit runs it. What (c) has beyond
    (a) + (b) is the rest: Adam's update of the weights, waiting for the slower worker, the
    runtime's own overhead; a negative rest is communication hidden behind the backward pass."""
    import json
    import statistics
    import time

    import ray.train

    from resnet_ray.config import TrainConfig
    from resnet_ray.keras_backend import tf
    from resnet_ray.optim import build_compiled, make_strategy, summed_gradients
    from resnet_ray.runtime import limit_threads

    cfg = TrainConfig.from_dict(config["config"])
    if config["limit_threads"]:
        limit_threads(cfg.cpus_per_worker)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    strategy, strategy_name = make_strategy(world, False, cfg)
    k = cfg.accumulate
    b = cfg.per_worker_batch_size * k  # a worker's images per update, all micro-batches
    with strategy.scope():
        model, optimizer = build_compiled(cfg, 1000)
    x = tf.random.uniform((b, *cfg.input_shape), seed=rank)
    y = tf.one_hot(tf.random.uniform((b,), maxval=len(cfg.classes), dtype=tf.int32, seed=rank),
                   len(cfg.classes))
    variables = model.trainable_variables
    fixed = [tf.ones_like(v) for v in variables]

    def checksum(tensors):
        return tf.add_n([tf.reduce_sum(t) for t in tensors])

    def gradients():
        return summed_gradients(model, x, y, k, model.compiled_loss)[0]

    phases = {
        "compute": tf.function(lambda: strategy.run(lambda: checksum(gradients()))),
        "allreduce": tf.function(lambda: strategy.run(lambda: checksum(
            [g for g, _ in optimizer.aggregate_gradients(list(zip(fixed, variables)))]))),
        "step": tf.function(lambda: strategy.run(lambda: model.train_step((x, y))["loss"])),
    }
    result = {"rank": rank, "workers": world, "images_per_update": b, "accumulate": k,
              "strategy": strategy_name, "intra_op_threads":
              tf.config.threading.get_intra_op_parallelism_threads()}
    # Warm up every phase, then time them in turn, round after round: a phase timed in a
    # burst of steal time would otherwise skew the rest, which is step - compute - all-reduce.
    for fn in phases.values():
        for _ in range(config["warmup"]):
            strategy.experimental_local_results(fn())[0].numpy()
    times: dict[str, list[float]] = {name: [] for name in phases}
    for _ in range(config["repeats"]):
        for name, fn in phases.items():
            begin = time.perf_counter()
            strategy.experimental_local_results(fn())[0].numpy()
            times[name].append(time.perf_counter() - begin)
    for name in phases:
        result[f"{name}_s"] = statistics.median(times[name])
        result[f"{name}_times_s"] = times[name]
    # (d) The same update as `resnet-ray train` runs it: Keras fit on the project's
    # distributed input pipeline (shuffle, shards, augmentation), timed per step.
    from resnet_ray.data import Signs
    from resnet_ray.keras_backend import keras
    from resnet_ray.input_pipeline import make_dataset_fn

    rng = np.random.default_rng(0)  # the same images on every worker; each takes its shard
    n = b * world * 2
    images = Signs(x=rng.integers(0, 256, (n, *cfg.input_shape), dtype=np.uint8),
                   y=rng.integers(0, len(cfg.classes), n), classes=list(cfg.classes))
    fit_times: list[float] = []

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.begin = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            fit_times.append(time.perf_counter() - self.begin)

    model.fit(strategy.distribute_datasets_from_function(make_dataset_fn(images, cfg, 0)),
              epochs=1, steps_per_epoch=config["warmup"] + config["repeats"],
              callbacks=[StepTimer()], verbose=0)
    result["fit_step_times_s"] = fit_times
    result["fit_step_s"] = statistics.median(fit_times[config["warmup"]:])
    with open(f"{config['out_dir']}/rank-{rank}.json", "w") as f:
        json.dump(result, f)


def measure_split(model: str, workers: int, cpus_per_worker: float, per_worker_batch: int,
                  limit: bool = True, warmup: int = 2, repeats: int = 5, **comm) -> dict:
    """split_loop on `workers` Ray Train workers; rank 0's times and every rank's."""
    import json

    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from resnet_ray.runtime import worker_env_vars
    from resnet_ray.config import TrainConfig

    cfg = TrainConfig(data="-", model=model, num_workers=workers,
                      cpus_per_worker=max(1, round(cpus_per_worker)),
                      batch_size=per_worker_batch * workers, **comm)
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        TensorflowTrainer(
            split_loop,
            train_loop_config={"config": cfg.to_dict(), "out_dir": tmp, "warmup": warmup,
                               "repeats": repeats, "limit_threads": limit},
            scaling_config=ScalingConfig(num_workers=workers,
                                         resources_per_worker={"CPU": cpus_per_worker}),
            run_config=RunConfig(name="split", storage_path=f"{tmp}/runs",
                                 worker_runtime_env={"env_vars": worker_env_vars()}),
        ).fit()
        ranks = [json.loads(Path(tmp, f"rank-{r}.json").read_text()) for r in range(workers)]
    row = {"workers": workers, "cpus_per_worker": cpus_per_worker,
           "per_worker_batch": per_worker_batch, "limit_threads": limit, **comm}
    for key in ("compute_s", "allreduce_s", "step_s"):
        row[key] = ranks[0][key]
    row["rest_s"] = row["step_s"] - row["compute_s"] - row["allreduce_s"]
    images = workers * per_worker_batch * cfg.accumulate  # per update, all workers
    row["images_per_s"] = images / row["step_s"]
    row["fit_step_s"] = ranks[0]["fit_step_s"]
    row["fit_images_per_s"] = images / row["fit_step_s"]
    row["ranks"] = ranks
    return row


def local_setups(quick: bool, workers: list[int], batch: int, cores: int) -> list[dict]:
    """The measured setups: the 1 x all-cores reference at the same global batch as 2 x 1,
    one 1-CPU worker (compute alone), then 2..N workers sharing the cores, and for two
    workers the communication variants and TensorFlow's own thread pools (the pre-fix state)."""
    setups = [{"label": f"1x{cores}", "workers": 1, "cpus_per_worker": cores,
               "per_worker_batch": batch * 2},
              {"label": "1x1", "workers": 1, "cpus_per_worker": 1, "per_worker_batch": batch}]
    for n in workers:
        if n > 1:
            setups.append({"label": f"{n}x{cores / n:g}", "workers": n,
                           "cpus_per_worker": min(1, cores / n), "per_worker_batch": batch})
    two = {"workers": 2, "cpus_per_worker": 1, "per_worker_batch": batch}
    if 2 in workers:
        setups.append({"label": "2x1 accumulate 2", **two, "accumulate": 2})
    if 2 in workers and not quick:
        setups += [{"label": "2x1 float16", **two, "allreduce_dtype": "float16"},
                   {"label": "2x1 packs of 8 MiB", **two, "allreduce_pack_mb": 8.0},
                   {"label": "2x1 accumulate 4", **two, "accumulate": 4},
                   {"label": "2x1 float16, accumulate 2", **two, "allreduce_dtype": "float16",
                    "accumulate": 2},
                   {"label": "2x1 float16, accumulate 4", **two, "allreduce_dtype": "float16",
                    "accumulate": 4},
                   {"label": "2x1 float16, packs of 8 MiB, accumulate 4", **two,
                    "allreduce_dtype": "float16", "allreduce_pack_mb": 8.0, "accumulate": 4},
                   {"label": "2x1 TF default threads", **two, "limit": False}]
    return setups


def scaling_model(rows: list[dict], grad_bytes: float) -> dict:
    """Predict every measured multi-worker setup from its own compute time, its gradient
    bytes, its worker count and its share of a core, with the model calibrated on the other
    multi-worker setups (leave one out: no row predicts itself). The same prediction from
    1x1's compute time alone shows what sharing the cores costs: workers beyond the cores
    compute slower than the share of a core they get."""
    one = next(r for r in rows if r["label"] == "1x1")
    s_per_image = one["compute_s"] / one["per_worker_batch"]
    multi = [r for r in rows if r["workers"] > 1 and r.get("limit_threads", True)]
    checks = []
    for r in multi:
        others = [o for o in multi if o is not r]
        if not others:
            continue
        gbit, overhead = calibrate(others, grad_bytes)
        n, share = r["workers"], core_share(r)
        images = r["per_worker_batch"] * r.get("accumulate", 1)
        rest = (ring_allreduce_s(n, sent_bytes(r, grad_bytes), gbit, 0.0) + overhead) / share
        predicted = n * images / (r["compute_s"] + rest)
        naive = n * images / (images * s_per_image / share + rest)
        checks.append({"setup": r["label"], "measured_images_per_s": r["images_per_s"],
                       "predicted_images_per_s": predicted,
                       "error": predicted / r["images_per_s"] - 1,
                       "predicted_from_one_core": naive,
                       "error_from_one_core": naive / r["images_per_s"] - 1,
                       "calibration_gbit_per_s": gbit, "calibration_overhead_s": overhead})
    gbit, overhead = calibrate(multi, grad_bytes)
    return {"s_per_image_one_core": s_per_image, "loopback_gbit_per_s": gbit,
            "overhead_s_per_step": overhead, "calibrated_on": [r["label"] for r in multi],
            "max_abs_error": max((abs(c["error"]) for c in checks), default=None),
            "checks": checks}


def run(quick: bool = False, workers: list[int] | None = None, batch: int = 16,
        out: str | None = None) -> dict:
    import ray

    from resnet_ray.runtime import worker_env_vars
    from resnet_ray.model import build_model

    model_name = "tiny" if quick else "resnet50"
    workers = workers or ([2] if quick else [2, 3, 4])
    cores = os.cpu_count() or 1
    grad_bytes = 4 * sum(int(np.prod(v.shape)) for v in
                         build_model(model_name).trainable_variables)
    # Enough logical CPUs for every worker; beyond the cores they share them, on purpose.
    ray.init(address="local", num_cpus=max(cores, *workers), logging_level="ERROR",
             runtime_env={"env_vars": worker_env_vars()}, _node_ip_address="127.0.0.1")
    rows = []
    try:
        for setup in local_setups(quick, workers, batch, cores):
            setup = dict(setup)
            label = setup.pop("label")
            row = {"label": label, **measure_split(
                model_name, repeats=2 if quick else 7, warmup=1 if quick else 2, **setup)}
            print(json.dumps({k: v for k, v in row.items() if k != "ranks"}), flush=True)
            rows.append(row)
    finally:
        ray.shutdown()
    report = analyse(rows, cores, model_name, grad_bytes, quick)
    write_report(report, result_path(out, "scaling", quick), markdown(report))
    return report


def analyse(rows: list[dict], cores: int, model_name: str, grad_bytes: float,
            quick: bool = False, measured_on: str | None = None) -> dict:
    """The report: the measured rows, the scaling model calibrated on them, its predictions."""
    model = scaling_model(rows, grad_bytes)
    reference = next(r for r in rows if r["label"] == f"1x{cores}")
    for r in rows:
        r["vs_one_worker_all_cores"] = r["images_per_s"] / reference["images_per_s"]
    table = []
    cpu = model["s_per_image_one_core"]
    for worker, s_per_image in (("this CPU core", cpu),
                                ("GPU (V100-class)", 1 / GPU_IMAGES_PER_S)):
        # The overhead is mostly Adam's update, work like the rest: it scales with the
        # worker's speed (about 1 ms on the GPU).
        overhead = model["overhead_s_per_step"] * s_per_image / cpu
        for gbit in LINKS_GBIT:
            for n in WORKERS:
                for setting, (images, bytes_share) in PREDICTION_SETTINGS.items():
                    table.append({"worker": worker, "link_gbit": gbit, "setting": setting,
                                  "images_per_update": images, **predict(
                                      n, images, s_per_image, grad_bytes * bytes_share, gbit,
                                      overhead_s=overhead)})
    return {"part": "scaling", "date": measured_on or str(date.today()), "quick": quick,
            "cores": cores, "model": model_name, "gradient_mb": grad_bytes / 2 ** 20,
            "measured": rows, "scaling_model": model, "predictions": table}


def remodel(path: str, out: str | None) -> dict:
    """Re-derive the model and predictions from an earlier run's measurements (no Ray)."""
    old = json.loads(Path(path).read_text())
    rows = old["measured"]
    for r in rows:
        if "idle_s" in r:  # the name before 2026-11-29's second run
            r["rest_s"] = r.pop("idle_s")
    report = analyse(rows, old["cores"], old["model"], old["gradient_mb"] * 2 ** 20,
                     old["quick"], old["date"])
    report["remodelled_from"] = path
    write_report(report, Path(out) if out else Path(path), markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = [f"Gradients: {report['gradient_mb']:.1f} MiB float32 per step. Median of each "
             "phase on rank 0; rest = step - compute - all-reduce: Adam's update, waiting for "
             "the slower worker, the runtime.", "",
             "fit step: the same update in Keras fit on the input pipeline, as training runs "
             "it (not in older results).", "",
             "| setup | per-worker batch | compute s | all-reduce s | rest s | step s | "
             "images/s | x 1 worker | fit step s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["measured"]:
        batch = f"{r['per_worker_batch']}" + (f" x {r['accumulate']}"
                                              if r.get("accumulate", 1) > 1 else "")
        fit = f"{r['fit_step_s']:.2f}" if "fit_step_s" in r else "-"
        lines.append(f"| {r['label']} | {batch} | {r['compute_s']:.2f} | "
                     f"{r['allreduce_s']:.2f} | {r['rest_s']:.2f} | {r['step_s']:.2f} | "
                     f"{r['images_per_s']:.1f} | {r['vs_one_worker_all_cores']:.2f} | {fit} |")
    m = report["scaling_model"]
    lines += ["", f"Scaling model, calibrated on the multi-worker rows (medians, per whole "
                  f"core): loopback all-reduce at {m['loopback_gbit_per_s']:.2f} Gbit/s, "
                  f"{m['overhead_s_per_step']:.2f} s overhead per update. Each setup is "
                  "predicted with the model calibrated on the other rows (leave one out), "
                  "from its own compute time, and from one core's "
                  f"({1000 * m['s_per_image_one_core']:.0f} ms per image); a worker with a "
                  "share of a core computes, copies and updates that much slower.", "",
              "| setup | measured images/s | predicted | error | from one core | error |",
              "|---|---|---|---|---|---|"]
    for c in m["checks"]:
        lines.append(f"| {c['setup']} | {c['measured_images_per_s']:.1f} | "
                     f"{c['predicted_images_per_s']:.1f} | {100 * c['error']:+.0f}% | "
                     f"{c['predicted_from_one_core']:.1f} | "
                     f"{100 * c['error_from_one_core']:+.0f}% |")
    for title in PREDICTION_SETTINGS:
        lines += ["", f"Predicted efficiency (images/s as a share of N x one worker's), {title}:",
                  "", "| worker | link | " + " | ".join(f"N={n}" for n in WORKERS) + " |",
                  "|---|---|" + "---|" * len(WORKERS)]
        for worker in dict.fromkeys(r["worker"] for r in report["predictions"]):
            for gbit in LINKS_GBIT:
                cells = [r for r in report["predictions"] if r["worker"] == worker and
                         r["link_gbit"] == gbit and r["setting"] == title]
                lines.append(f"| {worker} | {gbit} Gbit/s | " +
                             " | ".join(f"{100 * c['efficiency']:.0f}%" for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", help="worker counts beyond one, e.g. 2,3,4 (default)")
    parser.add_argument("--batch", type=int, default=16,
                        help="per-worker batch (16: the default global batch 32 over 2)")
    parser.add_argument("--out", help="JSON path (a .md table is written beside it)")
    parser.add_argument("--remodel", metavar="JSON",
                        help="measure nothing: recompute the model and predictions from an "
                             "earlier run's JSON (rewritten in place unless --out)")
    args = parser.parse_args(argv)
    if args.remodel:
        remodel(args.remodel, args.out)
        return
    run(args.quick, [int(w) for w in args.workers.split(",")] if args.workers else None,
        args.batch, args.out)


if __name__ == "__main__":
    main()
