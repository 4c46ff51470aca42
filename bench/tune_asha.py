"""Tune efficiency: the same search with ASHA early stopping and with every
trial trained to the full budget: epochs spent, wall time, best validation accuracy.

python -m bench.tune_asha [--quick] [--config tune_configs/bench.yaml] [--data DIR] [--out PATH]

Both searches draw the same trials (same searcher seed); only `scheduler.type` differs. Without
--data they run on the project's synthetic data. --quick runs tune_configs/smoke.yaml with two
trials of two epochs.
Goal: ASHA spends at most 40% of the full budget's epochs, with its best within 0.5 point.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import date
from pathlib import Path

from .common import result_path, write_report

ROOT = Path(__file__).resolve().parent.parent


def run(quick: bool = False, config: str | None = None, data: str | None = None,
        out: str | None = None) -> dict:
    from resnet_ray.data import write_signs_dir
    from resnet_ray.synth import synth_data
    from resnet_ray.tune import load_spec, run_search

    config = config or str(ROOT / "tune_configs" / ("smoke.yaml" if quick else "bench.yaml"))
    rows = []
    synthetic = data is None
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        if synthetic:
            data = str(Path(tmp) / "data")
            write_signs_dir(data, *synth_data(240 if quick else 1080, 60 if quick else 120))
        for scheduler in ("asha", "fifo"):
            spec = load_spec(config)
            spec.scheduler = {**spec.scheduler, "type": scheduler}
            # The two schedulers are compared by validation accuracy, whatever a file ranks by.
            spec.metric, spec.mode = "val_accuracy", "max"
            if quick:  # the harness, not the comparison: two short trials per scheduler
                spec.num_samples, spec.train = 2, {**spec.train, "epochs": 2}
            begin = time.perf_counter()
            summary = run_search(spec, data, storage=str(Path(tmp) / "runs"), name=scheduler)
            best = summary.get("best", {})
            row = {"scheduler": scheduler, "trials": summary["trials"],
                   "epochs_run": summary["epochs_run"], "epochs_budget": summary["epochs_budget"],
                   "wall_s": time.perf_counter() - begin,
                   "best_val_accuracy": best.get(f"best_{spec.metric}"),
                   "best_params": {k: best.get(k) for k in spec.search_space}}
            print(json.dumps(row), flush=True)
            rows.append(row)
    asha, full = rows
    summary = {"epochs_share": asha["epochs_run"] / full["epochs_run"],
               "wall_share": asha["wall_s"] / full["wall_s"],
               "best_gap_points": 100 * (full["best_val_accuracy"] - asha["best_val_accuracy"])}
    summary["goals"] = {"asha epochs <= 40% of full": summary["epochs_share"] <= 0.4,
                        "asha best within 0.5 point": summary["best_gap_points"] <= 0.5}
    report = {"part": "tune", "date": str(date.today()), "quick": quick, "config": config,
              "data": "synthetic" if synthetic else data,
              "rows": rows, "summary": summary}
    write_report(report, result_path(out, "tune", quick), markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = ["| scheduler | trials | epochs run / budget | wall s | best val accuracy | best lr, batch |",
             "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        p = r["best_params"]
        lines.append(f"| {r['scheduler']} | {r['trials']} | {r['epochs_run']} / "
                     f"{r['epochs_budget']} | {r['wall_s']:.0f} | {r['best_val_accuracy']:.4f} | "
                     f"{p.get('lr', float('nan')):.2g}, {p.get('batch_size')} |")
    s = report["summary"]
    lines += ["", f"ASHA ran {100 * s['epochs_share']:.0f}% of the full budget's epochs "
                  f"(goal <= 40%) in {100 * s['wall_share']:.0f}% of its wall time; its best "
                  f"validation accuracy is {s['best_gap_points']:.2f} points below the full "
                  f"budget's (goal <= 0.5; negative: above)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--config", help="search-space YAML (default tune_configs/bench.yaml)")
    parser.add_argument("--data", help="data directory (default: synthetic)")
    parser.add_argument("--out", help="JSON path (a .md table is written beside it)")
    args = parser.parse_args(argv)
    run(args.quick, args.config, args.data, args.out)


if __name__ == "__main__":
    main()
