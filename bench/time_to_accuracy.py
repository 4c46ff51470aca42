"""Time to accuracy: wall time and epochs until a training run's validation
accuracy first reaches 95%, 98% and 99%.

python -m bench.time_to_accuracy --run RUN_DIR           # a finished `resnet-ray train` run
python -m bench.time_to_accuracy --data DIR [--epochs 20] # train the default recipe first
python -m bench.time_to_accuracy --quick                 # tiny model on synthetic data

It reads the run's reports.jsonl (rank 0, the first report of each epoch): wall time counts
from the start of epoch 1 (Ray and worker start-up are the training part's fixed cost) to the
report of the epoch that first reached the threshold, so a resumed run includes its downtime.
A full ResNet-50 run on the sign-language-digits 0-5 import takes about an hour on 2 cores,
which is why `bench all` reads a finished run instead of training one.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import date
from pathlib import Path

from .common import result_path, write_report

THRESHOLDS = (0.95, 0.98, 0.99)


def analyse(run_dir: str | Path) -> dict:
    from resnet_ray.checkpoints import CONFIG_FILE
    from resnet_ray.train import REPORTS_FILE

    run_dir = Path(run_dir)
    path = run_dir / REPORTS_FILE
    if not path.is_file():
        raise SystemExit(f"{path}: no such file; --run expects the directory of a "
                         "`resnet-ray train` run (it holds reports.jsonl)")
    epochs: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        report = json.loads(line)
        if report.get("rank", 0) == 0:
            epochs.setdefault(int(report["epoch"]), report)
    if not epochs:
        raise SystemExit(f"{path}: no epoch was reported")
    history = [epochs[e] for e in sorted(epochs)]
    start = history[0]["time"] - history[0]["epoch_time_s"]
    curve = [{"epoch": r["epoch"], "val_accuracy": r["val_accuracy"],
              "wall_s": r["time"] - start, "epoch_time_s": r["epoch_time_s"]} for r in history]
    reached = {}
    for threshold in THRESHOLDS:
        hit = next((c for c in curve if c["val_accuracy"] >= threshold), None)
        reached[f"{threshold:.2f}"] = hit and {"epoch": hit["epoch"], "wall_s": hit["wall_s"]}
    config = json.loads((run_dir / CONFIG_FILE).read_text()) \
        if (run_dir / CONFIG_FILE).is_file() else {}
    keys = ("data", "model", "epochs", "batch_size", "lr", "num_workers", "cpus_per_worker",
            "val_fraction", "augment", "lr_schedule", "warmup_epochs", "bn_momentum",
            "label_smoothing", "seed", "classes")
    return {"run_dir": str(run_dir), "config": {k: config.get(k) for k in keys if k in config},
            "epochs_run": len(curve), "best_val_accuracy": max(c["val_accuracy"] for c in curve),
            "median_epoch_s": sorted(c["epoch_time_s"] for c in curve)[len(curve) // 2],
            "reached": reached, "curve": curve}


def train(data: str, storage: str, epochs: int, model: str) -> str:
    from resnet_ray.config import TrainConfig
    from resnet_ray.train import run_training

    cfg = TrainConfig(data=data, model=model, epochs=epochs, storage=storage,
                      name="time-to-accuracy").validate()
    run_training(cfg, quiet=True)
    return cfg.run_dir


def run(quick: bool = False, run_dir: str | None = None, data: str | None = None,
        epochs: int = 20, out: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-tta-") as tmp:
        if run_dir is None:
            if data is None and not quick:
                raise SystemExit("time to accuracy: give --run RUN_DIR (a finished full "
                                 "training run) or --data DIR (train one now, about an hour)")
            if data is None:
                from resnet_ray.data import write_signs_dir
                from resnet_ray.synth import synth_data

                data = str(Path(tmp) / "data")
                write_signs_dir(data, *synth_data(240, 60))
            run_dir = train(data, str(Path(tmp) / "runs"), 3 if quick else epochs,
                            "tiny" if quick else "resnet50")
        report = {"part": "time_to_accuracy", "date": str(date.today()), "quick": quick,
                  **analyse(run_dir)}
    path = result_path(out, "time-to-accuracy", quick)
    write_report(report, path, markdown(report))
    plot(report, path.with_suffix(".png"))
    return report


def plot(report: dict, path: Path) -> None:
    """Validation accuracy against wall time, with the thresholds: where the time goes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    minutes = [c["wall_s"] / 60 for c in report["curve"]]
    ax.plot(minutes, [c["val_accuracy"] for c in report["curve"]], marker="o")
    for threshold in THRESHOLDS:
        ax.axhline(threshold, color="grey", linewidth=0.6, linestyle="--")
    ax.set_xlabel("wall time from the start of epoch 1 (min)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"time to accuracy: {report['config'].get('model')}, "
                 f"{report['config'].get('num_workers')} workers")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}", flush=True)


def markdown(report: dict) -> str:
    c = report["config"]
    lines = [f"{c.get('model')} on {c.get('data')}, {c.get('num_workers')} workers, batch "
             f"{c.get('batch_size')}, lr {c.get('lr')}, {report['epochs_run']} epochs "
             f"(median {report['median_epoch_s']:.0f} s), best validation accuracy "
             f"{report['best_val_accuracy']:.4f}.", "",
             "| validation accuracy | first epoch | wall time |", "|---|---|---|"]
    for threshold, hit in report["reached"].items():
        lines.append(f"| >= {float(threshold):.0%} | " + (
            f"{hit['epoch']} | {hit['wall_s'] / 60:.1f} min |" if hit else "not reached | - |"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--run", help="directory of a finished `resnet-ray train` run")
    parser.add_argument("--data", help="train the default recipe on this data first")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", help="JSON path (a .md table is written beside it)")
    args = parser.parse_args(argv)
    run(args.quick, args.run, args.data, args.epochs, args.out)


if __name__ == "__main__":
    main()
