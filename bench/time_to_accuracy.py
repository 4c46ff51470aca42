"""Time to accuracy: the training command as a user types it, timed from its start until
its validation accuracy first reaches 95%, 98% and 99%, with the layout and precision it
chose and the exported model's score on the test photos.

python -m bench accuracy --data DIR [--epochs 20] [-- FLAG ...]   # flags after -- are added
python -m bench accuracy --quick                                  # tiny model, synthetic data

Ray's and the worker's start-up count, as the user waits for them.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .common import parser, result_path, signs_dir, table, train_command, write_report

THRESHOLDS = (0.95, 0.98, 0.99)


def run(a: argparse.Namespace) -> dict:
    if a.data is None and not a.quick:
        raise SystemExit("bench accuracy: give --data DIR (a `resnet-ray data import` "
                         "directory) or --quick")
    with tempfile.TemporaryDirectory(prefix="bench-tta-") as tmp:
        data = a.data or signs_dir(Path(tmp) / "data", 240, 60)
        done = train_command(data, Path(tmp), ["--epochs", str(3 if a.quick else a.epochs), *(
            ["--model", "tiny"] if a.quick else []), *a.flags], "bench accuracy")
    curve = [{"epoch": r["epoch"], "val_accuracy": r["val_accuracy"],
              "wall_s": r["time"] - done["start"]} for r in done["epochs"]]
    reached = {f"{t:.2f}": next(({"epoch": c["epoch"], "wall_s": c["wall_s"]} for c in curve
                                 if c["val_accuracy"] >= t), None) for t in THRESHOLDS}
    layout = next((ln for ln in done["stdout"] if ln.startswith("layout: ")), "")
    rows = [[f">= {float(t):.0%}", hit["epoch"] if hit else "not reached",
             f"{hit['wall_s']:.0f} s" if hit else "-"] for t, hit in reached.items()]
    text = (f"`{done['command']}`\n\n{layout}\n\n" +
            table(["validation accuracy", "first epoch", "from the command's start"], rows) +
            f"\n\nWhole command {done['seconds']:.0f} s; the exported model: "
            f"{done['right']}/{done['images']} test photos.")
    report = {"part": "accuracy", "quick": a.quick, "train_command": done["command"],
              "layout_line": layout, "reached": reached, "curve": curve,
              "command_s": done["seconds"], "precision": done["epochs"][0].get("precision"),
              "median_epoch_s": sorted(r["epoch_time_s"] for r in done["epochs"])[
                  len(done["epochs"]) // 2],
              "classes": done["classes"], "test": {"right": done["right"],
                                                   "images": done["images"]}}
    return write_report(report, result_path(a.out, "accuracy", a.quick), text)


def main(argv=None) -> dict:
    p = parser("accuracy", __doc__)
    p.add_argument("--data", help="a `resnet-ray data import` directory")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("flags", nargs="*", help="after --: more `resnet-ray train` flags")
    return run(p.parse_args(argv))
