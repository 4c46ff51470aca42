"""What ASHA saves: the same search with ASHA early stopping and with every trial trained to
the full budget (the same trials: the same searcher seed), in epochs, wall time and the best
validation accuracy found.

python -m bench tune [--quick] [--config tune_configs/bench.yaml] [--data DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from .common import parser, ROOT, result_path, signs_dir, table, write_report


def run(a: argparse.Namespace) -> dict:
    from resnet_ray.tune import load_spec, run_search

    config = a.config or str(ROOT / "tune_configs" / ("smoke.yaml" if a.quick else "bench.yaml"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        data = a.data or signs_dir(Path(tmp) / "data", 240 if a.quick else 1080,
                                   60 if a.quick else 120)
        for scheduler in ("asha", "fifo"):
            spec = load_spec(config)
            spec.scheduler = {**spec.scheduler, "type": scheduler}
            spec.metric, spec.mode = "val_accuracy", "max"  # both ranked alike
            if a.quick:  # the harness, not the comparison
                spec.num_samples, spec.train = 2, {**spec.train, "epochs": 2}
            begin = time.perf_counter()
            summary = run_search(spec, data, storage=str(Path(tmp) / "runs"), name=scheduler)
            rows.append({"scheduler": scheduler, "wall_s": time.perf_counter() - begin,
                         "best_val_accuracy": summary.get("best", {}).get("best_val_accuracy"),
                         **{k: summary[k] for k in ("trials", "epochs_run", "epochs_budget")}})
    asha, full = rows
    summary = {"epochs_share": asha["epochs_run"] / full["epochs_run"],
               "wall_share": asha["wall_s"] / full["wall_s"],
               "best_gap_points": 100 * (full["best_val_accuracy"] - asha["best_val_accuracy"])}
    text = table(["scheduler", "trials", "epochs run / budget", "wall s", "best validation"],
                 [[r["scheduler"], r["trials"], f"{r['epochs_run']} / {r['epochs_budget']}",
                   f"{r['wall_s']:.0f}", f"{r['best_val_accuracy']:.4f}"] for r in rows])
    report = {"part": "tune", "quick": a.quick, "config": config,
              "data": a.data or "synthetic", "rows": rows, "summary": summary}
    return write_report(report, result_path(a.out, "tune", a.quick), text)


def main(argv=None) -> dict:
    p = parser("tune", __doc__)
    p.add_argument("--config", help="search-space YAML (default tune_configs/bench.yaml)")
    p.add_argument("--data", help="data directory (default: synthetic)")
    return run(p.parse_args(argv))
