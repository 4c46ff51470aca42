"""Grouped k-fold cross-validation of training recipes: errors counted out of every photo.

python -m bench cv --data DIR [--folds 5] [--candidate NAME="FLAGS" ...] [--epochs 20]
python -m bench cv --quick        # tiny model, synthetic data, 2 folds of 1 epoch

DIR is a `resnet-ray data import` directory; its training and test files are pooled, so
every photo is scored exactly once, by a model that never saw it or a near-duplicate of it
(near-duplicate groups stay in one fold, found as `data import` finds them). For each fold
and candidate the bench runs the training command a user types, `resnet-ray train --data
FOLD_DIR --export ...` plus the candidate's flags, and reads the exported model's score on
the held-out fold. A candidate's row: errors out of all photos, the error rate, and minutes.
With no --candidate the default command is the one row.
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

from .common import machine, result_path, train_command, write_report


def grouped_folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index per photo: every group in one fold, each class spread evenly (a class's
    groups, in a seeded random order, each go to the fold holding fewest of that class)."""
    rng = np.random.default_rng(seed)
    fold = np.full(len(labels), -1)
    for label in np.unique(labels):
        members: dict[int, list[int]] = {}
        for i in np.flatnonzero(labels == label):
            members.setdefault(int(groups[i]), []).append(int(i))
        order = list(members)
        rng.shuffle(order)
        order.sort(key=lambda g: -len(members[g]))  # big groups first balance best
        counts = np.zeros(folds, int)
        for g in order:
            k = int(np.argmin(counts))
            fold[members[g]] = k
            counts[k] += len(members[g])
    return fold


def _pooled(data_dir: str):
    from resnet_ray.data import Signs, duplicate_groups, load_data_dir

    train, test = load_data_dir(data_dir)
    x, y = np.concatenate([train.x, test.x]), np.concatenate([train.y, test.y])
    return Signs(x, y, train.classes, data_dir), duplicate_groups(x, y)


def _run_fold(pool, fold_of: np.ndarray, k: int, flags: list[str], work: Path,
              model: str, epochs: int) -> dict:
    from resnet_ray.data import Signs, write_signs_dir

    held = fold_of == k
    part = work / f"fold{k}"
    write_signs_dir(part / "data", Signs(pool.x[~held], pool.y[~held], pool.classes, ""),
                    Signs(pool.x[held], pool.y[held], pool.classes, ""))
    done = train_command(str(part / "data"), str(part / "runs"), "cv", str(part / "model"),
                         model, epochs, flags, f"cv: fold {k}")
    return {"fold": k, "images": done["images"], "errors": done["images"] - done["right"],
            "minutes": done["seconds"] / 60}


def run(data: str | None, folds: int, candidates: dict[str, str], epochs: int, seed: int,
        quick: bool, out: str | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-cv-") as tmp:
        if data is None:
            if not quick:
                raise SystemExit("cv: give --data DIR (a `resnet-ray data import` directory)")
            from resnet_ray.data import write_signs_dir
            from resnet_ray.synth import synth_data

            data = str(Path(tmp) / "synth")
            write_signs_dir(data, *synth_data(120, 30))
        pool, groups = _pooled(data)
        fold_of = grouped_folds(pool.y, groups, folds, seed)
        model = "tiny" if quick else "resnet50"
        rows = []
        for name, flags in candidates.items():
            runs = [_run_fold(pool, fold_of, k, shlex.split(flags), Path(tmp) / name, model,
                              epochs) for k in range(folds)]
            errors = sum(r["errors"] for r in runs)
            rows.append({"candidate": name, "flags": flags, "errors": errors,
                         "photos": len(pool), "error_rate": errors / len(pool),
                         "minutes": sum(r["minutes"] for r in runs), "folds": runs})
            print(f"{name}: {errors}/{len(pool)} errors", flush=True)
    report = {"part": "cv", "date": str(date.today()), "quick": quick, "machine": machine(),
              "data": data, "folds": folds, "epochs": epochs, "model": model,
              "groups": int(len(np.unique(groups))), "rows": rows}
    write_report(report, result_path(out, "cv", quick), markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = [f"Machine: {report['machine']}. {report['model']}, {report['folds']}-fold grouped "
             f"cross-validation over every photo of {report['data']} ({report['rows'][0]['photos']}"
             f" photos, {report['groups']} near-duplicate groups), {report['epochs']} epochs.",
             "", "| candidate | flags | errors | error rate | minutes |", "|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['candidate']} | `{r['flags'] or '(defaults)'}` | {r['errors']}/"
                     f"{r['photos']} | {r['error_rate']:.2%} | {r['minutes']:.0f} |")
    return "\n".join(lines)


def _candidate(text: str) -> tuple[str, str]:
    name, sep, flags = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=FLAGS, got {text!r}")
    return name, flags


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a `resnet-ray data import` directory")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--candidate", type=_candidate, action="append",
                        help='NAME="resnet-ray train flags" (repeatable; default: the '
                             'default command)')
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help="JSON path (a .md table is written beside it)")
    args = parser.parse_args(argv)
    candidates = dict(args.candidate or [("default", "")])
    folds, epochs = (2, 1) if args.quick else (args.folds, args.epochs)
    run(args.data, folds, candidates, epochs, args.seed, args.quick, args.out)


if __name__ == "__main__":
    main()
