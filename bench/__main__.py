"""python -m bench all|train|scaling|compute|serve|soak|tune|accuracy|ingest|cv [--quick] [--out-dir bench/results]
[--run RUN_DIR] [--data DIR] [PART'S OWN FLAGS]: the project's benchmarks, one part or all.

Each part writes <out-dir>/<part>-<date>[-quick].json and a markdown table beside it, and
`all` gathers them in <out-dir>/<date>[-quick].json and .md (with each part's minutes);
`--quick` runs every part on the tiny model in seconds, to keep the harness working. The
time-to-accuracy part reads a finished full training run (--run) or trains one on --data;
given neither, `all` leaves it out and says so.
"""

import argparse
import json
import time
from datetime import date
from pathlib import Path

from . import (compute, cv, ingest, scaling, serve_load, soak, time_to_accuracy,
               train_overhead, tune_asha)

PARTS = {"train": ("train-overhead", train_overhead.main), "scaling": ("scaling", scaling.main),
         "compute": ("compute", compute.main),
         "serve": ("serve", serve_load.main), "soak": ("soak", soak.main),
         "tune": ("tune", tune_asha.main),
         "accuracy": ("time-to-accuracy", time_to_accuracy.main),
         "ingest": ("ingest", ingest.main), "cv": ("cv", cv.main)}


def main(argv=None) -> None:
    # No abbreviations: "--out x.json" would otherwise be taken for --out-dir and made a directory.
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("part", choices=["all", *PARTS])
    parser.add_argument("--quick", action="store_true", help="tiny model, seconds")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--run", help="accuracy: a finished `resnet-ray train` run directory")
    parser.add_argument("--data", help="tune, accuracy and cv: a data directory (default: "
                                       "synthetic for tune; accuracy then trains on it)")
    # A single part takes its own flags too (`python -m bench cv --data DIR --folds 5`).
    args, rest = parser.parse_known_args(argv)
    if rest and args.part == "all":
        parser.error(f"unrecognized arguments: {' '.join(rest)} (a part's own flags go with "
                     "that part: python -m bench PART ...)")
    parts = list(PARTS) if args.part == "all" else [args.part]
    if args.part == "all" and not (args.quick or args.run or args.data):
        print("== accuracy: left out; give --run RUN_DIR of a finished full training run "
              "(or --data DIR to train one, about an hour on 2 cores)", flush=True)
        parts.remove("accuracy")
    if args.part == "all" and not args.quick:
        print("== cv: left out; run `python -m bench cv --data DIR` on its own (5 folds of the "
              "default command)", flush=True)
        parts.remove("cv")
    suffix = f"{date.today()}{'-quick' if args.quick else ''}"
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    own.add_argument("--out")
    part_out = own.parse_known_args(rest)[0].out
    written = {}
    for name in parts:
        stem, part_main = PARTS[name]
        out = args.out_dir / f"{stem}-{suffix}.json"
        if part_out:  # a single part's own --out wins over the default name
            out = Path(part_out)
        print(f"== {name} -> {out}", flush=True)
        extra = []
        if name == "accuracy":
            extra = ["--run", args.run] if args.run else (["--data", args.data] if args.data
                                                           else [])
        elif name in ("tune", "cv") and args.data:
            extra = ["--data", args.data]
        begin = time.perf_counter()
        part_main(["--out", str(out), *(["--quick"] if args.quick else []), *extra, *rest])
        written[name] = (out, time.perf_counter() - begin)
    if args.part == "all":
        combine(written, args.out_dir / f"{suffix}.json")


def combine(written: dict, path: Path) -> None:
    """One file per `all` run, as the docs quote it: every part's results and tables."""
    report = {"date": str(date.today()), "parts": {}}
    tables = [f"# python -m bench all, {date.today()}"]
    for name, (out, seconds) in written.items():
        report["parts"][name] = {**json.loads(out.read_text()), "bench_s": round(seconds)}
        tables += ["", f"## {name} ({seconds / 60:.1f} min)", "",
                   out.with_suffix(".md").read_text().strip()]
    report["total_s"] = round(sum(seconds for _, seconds in written.values()))
    tables += ["", f"Total: {report['total_s'] / 60:.1f} min."]
    path.write_text(json.dumps(report, indent=2) + "\n")
    path.with_suffix(".md").write_text("\n".join(tables) + "\n")
    print(f"== all: {report['total_s'] / 60:.1f} min; wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
