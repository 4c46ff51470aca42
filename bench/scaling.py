"""Data-parallel scaling: each training step split into compute, all-reduce and the rest on
real Ray Train workers, and a model that predicts images/s for N workers on real links.

python -m bench scaling [--quick] [--workers 2,3,4] [--batch 16]

Each setup's workers time, in turn round after round (median of 7 after 2 warm-ups), the
forward and backward pass, the gradient all-reduce and the whole step; rest = step - compute -
all-reduce. 1 worker x every core at the same global batch is the reference; 3 and 4 workers
share the cores on purpose, to check the model where a worker gets a share of a core.

The model: an update takes a worker's compute plus a ring all-reduce, 2 (N-1)/N x gradient
bytes / bandwidth + 2 (N-1) x latency, plus an overhead per update of several workers; a
worker with a share of a core does all three that much slower. Calibrated on the measured
multi-worker rows (medians, per whole core), each row is predicted by the model calibrated on
the others, and N = 2..64 workers on 1, 10 and 100 Gbit/s links from one core's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import parser, result_path, table, write_report

LINKS_GBIT = (1, 10, 100)
WORKERS = (2, 4, 8, 16, 64)
LATENCY_S = 50e-6  # per ring hop on a data-centre network; loopback's is fitted away
ALLREDUCE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# What the predictions are for: (images per worker per all-reduce, share of float32's bytes).
PREDICTION_SETTINGS = {"the defaults (16 per worker, float32)": (16, 1.0),
                       "float16, accumulate 4": (64, 0.5)}


def ring_allreduce_s(n: int, grad_bytes: float, gbit_per_s: float, latency_s: float) -> float:
    if n <= 1:
        return 0.0
    return 2 * (n - 1) / n * grad_bytes * 8 / (gbit_per_s * 1e9) + 2 * (n - 1) * latency_s


def predict(n: int, batch: int, s_per_image: float, grad_bytes: float, gbit_per_s: float,
            latency_s: float = LATENCY_S, overhead_s: float = 0.0) -> dict:
    """images/s and efficiency (over n x one worker's) of n workers at per-worker `batch`."""
    compute = batch * s_per_image
    comm = ring_allreduce_s(n, grad_bytes, gbit_per_s, latency_s)
    step = compute + comm + (overhead_s if n > 1 else 0.0)
    return {"workers": n, "step_s": step, "comm_s": comm, "images_per_s": n * batch / step,
            "efficiency": compute / step}


def core_share(row: dict) -> float:
    return min(1.0, row["cpus_per_worker"])


def sent_bytes(row: dict, grad_bytes: float) -> float:
    return grad_bytes * ALLREDUCE_BYTES[row.get("allreduce_dtype") or "float32"] / 4


def calibrate(rows: list[dict], grad_bytes: float) -> tuple[float, float]:
    """Loopback's all-reduce bandwidth and the overhead per update, each for a whole core: the
    medians over multi-worker rows, so that one phase timed in a burst of the VM's steal time
    does not set the model."""
    if not rows:
        raise ValueError("the scaling model needs at least one measured multi-worker row")
    # The bandwidth each all-reduce had: its time at 1 Gbit/s over its time (latency folded in).
    gbit = float(np.median([ring_allreduce_s(r["workers"], sent_bytes(r, grad_bytes), 1, 0)
                            / (r["allreduce_s"] * core_share(r)) for r in rows]))
    return gbit, max(0.0, float(np.median([r["rest_s"] * core_share(r) for r in rows])))


def split_loop(config: dict) -> None:
    """One Ray Train worker: the three phases of a step, timed in turn."""
    import ray.train

    from resnet_ray.config import TrainConfig
    from resnet_ray.keras_backend import tf
    from resnet_ray.optim import build_compiled, make_strategy, summed_gradients
    from resnet_ray.runtime import limit_threads

    cfg = TrainConfig.from_dict(config["config"])
    limit_threads(cfg.cpus_per_worker)
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    strategy, _ = make_strategy(world, cfg)
    b = cfg.per_worker_batch_size * cfg.accumulate
    with strategy.scope():
        model, optimizer = build_compiled(cfg, 1000)
    x = tf.random.uniform((b, *cfg.input_shape), seed=rank)
    y = tf.one_hot(tf.random.uniform((b,), maxval=6, dtype=tf.int32, seed=rank), 6)
    variables = model.trainable_variables
    ones = [tf.ones_like(v) for v in variables]

    def total(tensors):
        return tf.add_n([tf.reduce_sum(t) for t in tensors])

    phases = {
        "compute": tf.function(lambda: strategy.run(lambda: total(summed_gradients(
            model, x, y, cfg.accumulate, model.compiled_loss)[0]))),
        "allreduce": tf.function(lambda: strategy.run(lambda: total(
            [g for g, _ in optimizer.aggregate_gradients(list(zip(ones, variables)))]))),
        "step": tf.function(lambda: strategy.run(lambda: model.train_step((x, y))["loss"]))}
    times = {name: [] for name in phases}
    for round_ in range(config["warmup"] + config["repeats"]):
        for name, fn in phases.items():
            begin = time.perf_counter()
            strategy.experimental_local_results(fn())[0].numpy()
            if round_ >= config["warmup"]:
                times[name].append(time.perf_counter() - begin)
    Path(config["out_dir"], f"rank-{rank}.json").write_text(json.dumps(
        {f"{k}_s": statistics.median(v) for k, v in times.items()}))


def measure(model: str, label: str, workers: int, cpus_per_worker: float,
            per_worker_batch: int, quick: bool, **comm) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from resnet_ray.config import TrainConfig
    from resnet_ray.runtime import worker_env_vars
    from resnet_ray.tf_backend import TensorflowConfig

    cfg = TrainConfig(data="-", model=model, num_workers=workers,
                      cpus_per_worker=max(1, round(cpus_per_worker)),
                      batch_size=per_worker_batch * workers, **comm)
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        DataParallelTrainer(
            split_loop, backend_config=TensorflowConfig(),
            train_loop_config={"config": cfg.to_dict(), "out_dir": tmp,
                               "warmup": 1 if quick else 2, "repeats": 2 if quick else 7},
            scaling_config=ScalingConfig(num_workers=workers,
                                         resources_per_worker={"CPU": cpus_per_worker}),
            run_config=RunConfig(name="split", storage_path=f"{tmp}/runs",
                                 worker_runtime_env={"env_vars": worker_env_vars()})).fit()
        rank0 = json.loads(Path(tmp, "rank-0.json").read_text())
    row = {"label": label, "workers": workers, "cpus_per_worker": cpus_per_worker,
           "per_worker_batch": per_worker_batch, **comm, **rank0}
    row["rest_s"] = row["step_s"] - row["compute_s"] - row["allreduce_s"]
    row["images_per_s"] = workers * per_worker_batch * cfg.accumulate / row["step_s"]
    return row


def scaling_model(rows: list[dict], grad_bytes: float) -> dict:
    """The model calibrated on the multi-worker rows, and each of them predicted by the model
    calibrated on the others (leave one out: no row predicts itself)."""
    one = next(r for r in rows if r["label"] == "1x1")
    multi = [r for r in rows if r["workers"] > 1 and r.get("limit_threads", True)]
    checks = []
    for r in multi if len(multi) > 1 else []:
        gbit, overhead = calibrate([o for o in multi if o is not r], grad_bytes)
        n, images = r["workers"], r["per_worker_batch"] * r.get("accumulate", 1)
        rest = (ring_allreduce_s(n, sent_bytes(r, grad_bytes), gbit, 0.0) + overhead) \
            / core_share(r)
        predicted = n * images / (r["compute_s"] + rest)
        checks.append({"setup": r["label"], "measured_images_per_s": r["images_per_s"],
                       "predicted_images_per_s": predicted,
                       "error": predicted / r["images_per_s"] - 1})
    gbit, overhead = calibrate(multi, grad_bytes)
    return {"s_per_image_one_core": one["compute_s"] / one["per_worker_batch"],
            "loopback_gbit_per_s": gbit, "overhead_s_per_step": overhead,
            "max_abs_error": max((abs(c["error"]) for c in checks), default=None),
            "checks": checks}


def analyse(rows: list[dict], cores: int, model_name: str, grad_bytes: float) -> dict:
    """The measured rows against the reference, the model and its predictions."""
    reference = next(r for r in rows if r["label"] == f"1x{cores}")
    for r in rows:
        r["vs_one_worker_all_cores"] = r["images_per_s"] / reference["images_per_s"]
    model = scaling_model(rows, grad_bytes)
    predictions = [{"link_gbit": link, "setting": setting, **predict(
        n, images, model["s_per_image_one_core"], grad_bytes * share, link,
        overhead_s=model["overhead_s_per_step"])}
        for setting, (images, share) in PREDICTION_SETTINGS.items()
        for link in LINKS_GBIT for n in WORKERS]
    return {"part": "scaling", "cores": cores, "model": model_name,
            "gradient_mb": grad_bytes / 2 ** 20, "measured": rows, "scaling_model": model,
            "predictions": predictions}


def text(report: dict) -> str:
    m = report["scaling_model"]
    errors = {c["setup"]: f"{c['error']:+.0%}" for c in m["checks"]}
    keys = ("compute_s", "allreduce_s", "rest_s", "step_s", "images_per_s",
            "vs_one_worker_all_cores")
    measured = table(["setup", *keys, "model's error"], [[
        r["label"], *(f"{r[k]:.2f}" for k in keys), errors.get(r["label"], "-")]
        for r in report["measured"]])
    return (f"{measured}\n\nModel: loopback {m['loopback_gbit_per_s']:.2f} Gbit/s, "
            f"{m['overhead_s_per_step']:.2f} s per update, {m['s_per_image_one_core']:.3f} s "
            "per image on one core")


def run(a: argparse.Namespace) -> dict:
    import ray

    from resnet_ray.model import build_model
    from resnet_ray.runtime import worker_env_vars

    model_name, cores = "tiny" if a.quick else "resnet50", os.cpu_count() or 1
    workers = [int(w) for w in a.workers.split(",")] if a.workers else \
        ([2] if a.quick else [2, 3, 4])
    grad_bytes = 4 * sum(int(np.prod(v.shape)) for v in
                         build_model(model_name).trainable_variables)
    two = {"workers": 2, "cpus_per_worker": 1, "per_worker_batch": a.batch}
    setups = [{"label": f"1x{cores}", "workers": 1, "cpus_per_worker": cores,
               "per_worker_batch": a.batch * 2},
              {"label": "1x1", "workers": 1, "cpus_per_worker": 1, "per_worker_batch": a.batch},
              *({"label": f"{n}x{min(1, cores / n):g}", "workers": n, "cpus_per_worker":
                 min(1, cores / n), "per_worker_batch": a.batch} for n in workers if n > 1),
              {"label": "2x1 accumulate 2", **two, "accumulate": 2}]
    if not a.quick:
        setups += [{"label": "2x1 float16", **two, "allreduce_dtype": "float16"},
                   {"label": "2x1 float16, accumulate 4", **two, "allreduce_dtype": "float16",
                    "accumulate": 4}]
    # Enough logical CPUs for every worker; beyond the cores they share them, on purpose.
    ray.init(address="local", num_cpus=max(cores, *workers), logging_level="ERROR",
             runtime_env={"env_vars": worker_env_vars()}, _node_ip_address="127.0.0.1")
    try:
        rows = [measure(model_name, quick=a.quick, **s) for s in setups]
    finally:
        ray.shutdown()
    report = analyse(rows, cores, model_name, grad_bytes)
    return write_report(report, result_path(a.out, "scaling", a.quick), text(report))


def main(argv=None) -> dict:
    p = parser("scaling", __doc__)
    p.add_argument("--workers", help="worker counts beyond one, e.g. 2,3,4 (default)")
    p.add_argument("--batch", type=int, default=16, help="per-worker batch")
    return run(p.parse_args(argv))
