"""Data-parallel scaling (issue 10): per-step time split into compute and communication,
measured, and a model that predicts images/s for N workers on other networks.

python -m bench.scaling [--quick] [--batches 16,32] [--out bench/results/scaling-DATE.json]

Measured by difference with the project's own training loop (each run a fresh process, as in
bench.train_overhead): 1 worker x 1 CPU at per-worker batch b does only compute; 2 workers x
1 CPU at the same per-worker batch do the same compute plus the gradient all-reduce and any
waiting. Their step-time difference is the communication the second worker costs.

The model: a step takes b x t_img of compute plus a ring all-reduce of S gradient bytes,
2 (N-1)/N x S / bandwidth + 2 (N-1) x latency, less what overlaps with the backward pass.
Calibrated here (t_img, and loopback's effective bandwidth from the 2-worker runs), it
predicts N = 1..64 workers on 1, 10 and 100 Gbit/s links, for this CPU and for a GPU worker.
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import date
from pathlib import Path

from .common import result_path, write_report

LINKS_GBIT = (1, 10, 100)
WORKERS = (1, 2, 4, 8, 16, 32, 64)
LATENCY_S = 50e-6  # per ring hop on a data-centre network; loopback's is fitted away
# A GPU worker for the "what if": a V100-class GPU trains ResNet-50 at 224x224 at about 400
# images/s in float32; at 64x64 the work per image is (64/224)^2 of that.
GPU_IMAGES_PER_S = 400 * (224 / 64) ** 2


def ring_allreduce_s(n: int, grad_bytes: float, gbit_per_s: float, latency_s: float) -> float:
    if n <= 1:
        return 0.0
    return 2 * (n - 1) / n * grad_bytes * 8 / (gbit_per_s * 1e9) + 2 * (n - 1) * latency_s


def predict(n: int, batch: int, s_per_image: float, grad_bytes: float, gbit_per_s: float,
            latency_s: float = LATENCY_S, overlap: float = 0.0) -> dict:
    """images/s and efficiency of n workers at per-worker batch `batch`; `overlap` is the
    share of the compute time that can hide communication (the backward pass's part)."""
    compute = batch * s_per_image
    comm = ring_allreduce_s(n, grad_bytes, gbit_per_s, latency_s)
    step = compute + max(0.0, comm - overlap * compute)
    rate = n * batch / step
    return {"workers": n, "step_s": step, "comm_s": comm, "images_per_s": rate,
            "efficiency": rate / (n / s_per_image)}


def fitted_gbit_per_s(n: int, grad_bytes: float, comm_s: float) -> float:
    """The bandwidth a ring all-reduce of grad_bytes over n workers must have had to take
    comm_s (latency folded in)."""
    return 2 * (n - 1) / n * grad_bytes * 8 / comm_s / 1e9


def measure(quick: bool, batches: list[int], images: int, epochs: int) -> list[dict]:
    from resnet_ray.data import write_signs_dir
    from resnet_ray.synth import synth_data

    from .train_overhead import run_setup

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        work = Path(tmp)
        write_signs_dir(work / "data", *synth_data(images, 12, seed=0))
        for b in batches:
            for workers in (1, 2):
                base = {"data": str(work / "data"), "model": "tiny" if quick else "resnet50",
                        "epochs": epochs, "batch_size": b * workers, "keep_checkpoints": 1,
                        "val_fraction": 0.0}
                run = run_setup({"setup": f"{workers}x1 b{b}", "num_workers": workers,
                                 "cpus_per_worker": 1}, base, work)
                steps = images // (b * workers)
                rows.append({"workers": workers, "per_worker_batch": b,
                             "step_s": run["steady_epoch_s"] / steps,
                             "images_per_s": run["steady_images_per_s"],
                             "epoch_times_s": run["epoch_times_s"]})
                print(rows[-1], flush=True)
    return rows


def run(quick: bool = False, batches: list[int] | None = None, out: str | None = None) -> dict:
    from resnet_ray.model import build_model

    model_name = "tiny" if quick else "resnet50"
    batches = batches or ([8] if quick else [16, 32])
    grad_bytes = 4 * build_model(model_name).count_params()
    rows = measure(quick, batches, 64 if quick else 256, 2 if quick else 3)
    split = []
    for b in batches:
        one = next(r for r in rows if r["workers"] == 1 and r["per_worker_batch"] == b)
        two = next(r for r in rows if r["workers"] == 2 and r["per_worker_batch"] == b)
        comm = max(1e-6, two["step_s"] - one["step_s"])
        split.append({"per_worker_batch": b, "compute_s": one["step_s"], "comm_and_idle_s": comm,
                      "comm_share": comm / two["step_s"],
                      "loopback_gbit_per_s": fitted_gbit_per_s(2, grad_bytes, comm),
                      "s_per_image": one["step_s"] / b})
    # Check: the model, with loopback's fitted bandwidth, against each measured 2-worker rate.
    for s in split:
        s["predicted_2_worker_images_per_s"] = predict(
            2, s["per_worker_batch"], s["s_per_image"], grad_bytes, s["loopback_gbit_per_s"],
            latency_s=0.0)["images_per_s"]
    s_img = min(s["s_per_image"] for s in split)
    table = []
    for worker, s_per_image in (("this CPU core", s_img), ("GPU (V100-class)",
                                                           1 / GPU_IMAGES_PER_S)):
        for gbit in LINKS_GBIT:
            for n in WORKERS:
                for b in (32, 128):
                    table.append({"worker": worker, "link_gbit": gbit, "per_worker_batch": b,
                                  **predict(n, b, s_per_image, grad_bytes, gbit)})
    report = {"part": "scaling", "date": str(date.today()), "quick": quick,
              "model": model_name, "gradient_mb": grad_bytes / 2 ** 20, "measured": rows,
              "split": split, "predictions": table}
    write_report(report, result_path(out, "scaling", quick), markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = [f"Gradients: {report['gradient_mb']:.1f} MiB float32 per step.", "",
             "| per-worker batch | compute s/step | all-reduce + idle s/step | share of the "
             "2-worker step | fitted loopback Gbit/s |", "|---|---|---|---|---|"]
    for s in report["split"]:
        lines.append(f"| {s['per_worker_batch']} | {s['compute_s']:.2f} | "
                     f"{s['comm_and_idle_s']:.2f} | {100 * s['comm_share']:.0f}% | "
                     f"{s['loopback_gbit_per_s']:.1f} |")
    lines += ["", "Predicted efficiency (images/s as a share of N x one worker's), per-worker "
                  "batch 32:", "", "| worker | link | " +
              " | ".join(f"N={n}" for n in WORKERS) + " |",
              "|---|---|" + "---|" * len(WORKERS)]
    for worker in dict.fromkeys(r["worker"] for r in report["predictions"]):
        for gbit in LINKS_GBIT:
            cells = [r for r in report["predictions"] if r["worker"] == worker and
                     r["link_gbit"] == gbit and r["per_worker_batch"] == 32]
            lines.append(f"| {worker} | {gbit} Gbit/s | " +
                         " | ".join(f"{100 * c['efficiency']:.0f}%" for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batches", help="per-worker batch sizes, e.g. 16,32")
    parser.add_argument("--out", help="JSON path (a .md table is written beside it)")
    args = parser.parse_args(argv)
    run(args.quick, [int(b) for b in args.batches.split(",")] if args.batches else None,
        args.out)


if __name__ == "__main__":
    main()
