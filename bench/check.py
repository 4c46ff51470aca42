"""Every goal of bench/targets.yaml against this machine: the parts that take minutes on 2
cores are measured now (Ray Train against plain Keras, the serving ratios), the rest read from
bench/results/ (the newest run of this machine's hardware profile; a run on another profile
does not stand in). Exits 1 when a goal measured now is missed.

python -m bench check [--quick] [--out-dir bench/results]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import report, serve_load, train_overhead
from .common import RESULTS, machine, profile, table


def run(a: argparse.Namespace) -> int:
    prof, quick = profile(machine()), ["--quick"] if a.quick else []
    train_overhead.main([*quick, "--setups", "keras,ray 1x", "--images",
                         "64" if a.quick else "512", "--epochs", "2" if a.quick else "3",
                         "--out", str(a.out_dir / f"train-check-{prof}{'-quick' * a.quick}.json")])
    serve_load.main([*quick, "--seconds", "1" if a.quick else "5", "--out",
                     str(a.out_dir / f"serve-check-{prof}{'-quick' * a.quick}.json")])
    now = [r for r in report.load(a.out_dir, quick=a.quick) if "-check-" in r["_file"]
           and r["_profile"] == prof]
    stored = [r for r in report.load() if r["_profile"] == prof]
    rows, missed = [], []
    for key, m in report.MEASURES.items():
        measured, bound = m.get("check") == "now", report.goal(m, prof)
        value, runs = report.VALUES[key](now if measured else stored) or (None, [])
        ok = value is None or bound is None or (
            value >= bound[0] if bound[1] == "at_least" else value <= bound[0])
        if measured and not ok:
            missed.append(key)
        source = ("no result on this profile" if value is None else "measured now" if measured
                  else "stored: " + ", ".join(f"{r['_file']} ({r['date']})" for r in runs))
        rows.append([key, report.goal_text(m), "-" if value is None else report.fmt(
            value, m["unit"]), source, "-" if value is None or bound is None else
            "met" if ok else "MISSED"])
    print(f"\n{machine()} ({prof})\n")
    print(table(["measure", "goal", "this profile", "from", "verdict"], rows))
    if missed:
        print(f"\nmissed, measured now: {', '.join(missed)}")
    return 1 if missed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench check", description=__doc__)
    p.add_argument("--quick", action="store_true", help="the tiny model: the harness only")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    return run(p.parse_args(argv))
