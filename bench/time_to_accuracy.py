"""Time to accuracy: wall time and epochs until a training run's validation
accuracy first reaches 95%, 98% and 99%.

python -m bench accuracy --data DIR [--epochs 20] [-- FLAG ...]  # run the default command
python -m bench accuracy --run RUN_DIR                        # a finished `resnet-ray train` run
python -m bench accuracy --quick                              # tiny model on synthetic data

With --data it runs `resnet-ray train --data DIR --export ...` as a user types it (flags
after `--` are added), and times each threshold from the command's start: Ray's and the
workers' start-up count, as the user waits for them. It records the layout and precision the
command chose and the exported model's score on the test file. With --run it reads the
run's reports.jsonl (rank 0, first report of each epoch) and counts from the start of epoch 1.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import date
from pathlib import Path

from .common import machine, result_path, train_command, write_report

THRESHOLDS = (0.95, 0.98, 0.99)


def analyse(run_dir: str | Path, command_start: float | None = None) -> dict:
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
    start = command_start or history[0]["time"] - history[0]["epoch_time_s"]
    curve = [{"epoch": r["epoch"], "val_accuracy": r["val_accuracy"],
              "wall_s": r["time"] - start, "epoch_time_s": r["epoch_time_s"]} for r in history]
    reached = {}
    for threshold in THRESHOLDS:
        hit = next((c for c in curve if c["val_accuracy"] >= threshold), None)
        reached[f"{threshold:.2f}"] = hit and {"epoch": hit["epoch"], "wall_s": hit["wall_s"]}
    config = json.loads((run_dir / CONFIG_FILE).read_text()) \
        if (run_dir / CONFIG_FILE).is_file() else {}
    keys = ("data", "model", "epochs", "batch_size", "lr", "num_workers", "cpus_per_worker",
            "allreduce_dtype", "precision", "val_fraction", "augment", "lr_schedule",
            "warmup_epochs", "bn_momentum", "label_smoothing", "weight_decay", "seed", "classes")
    return {"run_dir": str(run_dir), "config": {k: config.get(k) for k in keys if k in config},
            "clock": "command start" if command_start else "start of epoch 1",
            "precision": history[0].get("precision"),
            "epochs_run": len(curve), "best_val_accuracy": max(c["val_accuracy"] for c in curve),
            "median_epoch_s": sorted(c["epoch_time_s"] for c in curve)[len(curve) // 2],
            "reached": reached, "curve": curve}


def train(data: str, storage: str, epochs: int, model: str, flags: list[str]) -> dict:
    """Run the training command as a user would and time it; returns the analysis."""
    name, export = "time-to-accuracy", str(Path(storage) / "model")
    done = train_command(data, storage, name, export, model, epochs, flags, "time to accuracy")
    result = analyse(Path(storage) / name, command_start=done["start"])
    return {**result, "command": done["command"], "command_s": done["seconds"],
            "layout_line": next((ln for ln in done["stdout"] if ln.startswith("layout: ")),
                                None),
            "test": {k: done[k] for k in ("right", "images", "accuracy")}}


def run(quick: bool = False, run_dir: str | None = None, data: str | None = None,
        epochs: int = 20, out: str | None = None, flags: list[str] = ()) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-tta-") as tmp:
        if run_dir is not None:
            result = analyse(run_dir)
        else:
            if data is None and not quick:
                raise SystemExit("time to accuracy: give --data DIR (train the default "
                                 "command now) or --run RUN_DIR (a finished run)")
            if data is None:
                from resnet_ray.data import write_signs_dir
                from resnet_ray.synth import synth_data

                data = str(Path(tmp) / "data")
                write_signs_dir(data, *synth_data(240, 60))
            result = train(data, str(Path(tmp) / "runs"), 3 if quick else epochs,
                           "tiny" if quick else "resnet50", list(flags))
        report = {"part": "time_to_accuracy", "date": str(date.today()), "quick": quick,
                  "machine": machine(), **result}
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
    ax.set_xlabel(f"wall time from the {report['clock']} (min)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"time to accuracy: {report['config'].get('model')}, "
                 f"{report['config'].get('num_workers')} workers")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}", flush=True)


def markdown(report: dict) -> str:
    c = report["config"]
    lines = [f"Machine: {report['machine']}.", ""]
    if report.get("command"):
        lines += [f"`{report['command']}`", "", f"{report.get('layout_line')}", ""]
    lines += [f"{c.get('model')} on {c.get('data')}: {c.get('num_workers')} worker(s) x "
              f"{c.get('cpus_per_worker')} CPU, precision {report.get('precision')}, batch "
              f"{c.get('batch_size')}, lr {c.get('lr')}, {report['epochs_run']} epochs (median "
              f"{report['median_epoch_s']:.0f} s), best validation accuracy "
              f"{report['best_val_accuracy']:.4f}.", "",
              f"| validation accuracy | first epoch | wall time from the {report['clock']} |",
              "|---|---|---|"]
    for threshold, hit in report["reached"].items():
        lines.append(f"| >= {float(threshold):.0%} | " + (
            f"{hit['epoch']} | {hit['wall_s']:.0f} s |" if hit else "not reached | - |"))
    if report.get("test"):
        t = report["test"]
        lines += ["", f"Whole command: {report['command_s']:.0f} s. Exported model on the "
                      f"test file: {t['right']}/{t['images']} ({t['accuracy']:.4f})."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--run", help="directory of a finished `resnet-ray train` run")
    parser.add_argument("--data", help="train the default recipe on this data first")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", help="JSON path (a .md table is written beside it)")
    parser.add_argument("flags", nargs="*", help="after --: more `resnet-ray train` flags")
    args = parser.parse_args(argv)
    run(args.quick, args.run, args.data, args.epochs, args.out, args.flags)


if __name__ == "__main__":
    main()
