"""python -m bench all|train|serve [--quick] [--out-dir bench/results]: the project's
benchmarks, one part or all.

Each part writes <out-dir>/<part>-<date>[-quick].json (and a markdown table where it has one);
`--quick` runs every part on the tiny model in seconds, to keep the harness working.
"""

import argparse
from datetime import date
from pathlib import Path

from . import serve_load, train_overhead

PARTS = {"train": ("train-overhead", train_overhead.main), "serve": ("serve", serve_load.main)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["all", *PARTS])
    parser.add_argument("--quick", action="store_true", help="tiny model, seconds")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    for name in PARTS if args.part == "all" else [args.part]:
        stem, part_main = PARTS[name]
        out = args.out_dir / f"{stem}-{date.today()}{'-quick' if args.quick else ''}.json"
        print(f"== {name} -> {out}", flush=True)
        part_main(["--out", str(out), *(["--quick"] if args.quick else [])])


if __name__ == "__main__":
    main()
