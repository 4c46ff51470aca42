"""Grouped k-fold cross-validation of training recipes: errors counted out of every photo.

python -m bench cv --data DIR [--folds 5] [--candidate NAME="FLAGS" ...] [--epochs 20]
python -m bench cv --quick        # tiny model, synthetic data, 2 folds of 1 epoch

DIR is a `resnet-ray data import` directory; its training and test files are pooled, so
every photo is scored once, by a model that never saw it or a near-duplicate of it (groups
of near-duplicates stay in one fold, found as `data import` finds them). For each fold and
candidate the bench runs the training command a user types, `resnet-ray train --data FOLD
--export ...` plus the candidate's flags, and reads the exported model's score on the fold
it held out. With no --candidate the default command is the one row.
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
from pathlib import Path

import numpy as np

from .common import parser, result_path, signs_dir, table, train_command, write_report


def grouped_folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index per photo: every group in one fold, each class spread evenly (a class's
    groups, biggest first, each go to the fold holding fewest of that class)."""
    rng = np.random.default_rng(seed)
    fold = np.full(len(labels), -1)
    for label in np.unique(labels):
        members: dict[int, list[int]] = {}
        for i in np.flatnonzero(labels == label):
            members.setdefault(int(groups[i]), []).append(int(i))
        order = list(members)
        rng.shuffle(order)
        order.sort(key=lambda g: -len(members[g]))
        counts = np.zeros(folds, int)
        for g in order:
            k = int(np.argmin(counts))
            fold[members[g]] = k
            counts[k] += len(members[g])
    return fold


def run(a: argparse.Namespace) -> dict:
    from resnet_ray.data import Signs, duplicate_groups, load_data_dir, write_signs_dir

    if a.data is None and not a.quick:
        raise SystemExit("bench cv: give --data DIR (a `resnet-ray data import` directory)")
    folds, epochs = (2, 1) if a.quick else (a.folds, a.epochs)
    if any(len(c) != 2 or not c[0] for c in a.candidate or []):
        raise SystemExit('bench cv: --candidate: expected NAME="FLAGS"')
    candidates = dict(a.candidate or [("default", "")])
    with tempfile.TemporaryDirectory(prefix="bench-cv-") as tmp:
        train, test = load_data_dir(a.data or signs_dir(Path(tmp) / "synth", 120, 30))
        x, y = np.concatenate([train.x, test.x]), np.concatenate([train.y, test.y])
        groups = duplicate_groups(x, y)
        fold_of = grouped_folds(y, groups, folds, a.seed)
        rows = []
        for name, flags in candidates.items():
            runs = []
            for k in range(folds):
                part, held = Path(tmp) / name / f"fold{k}", fold_of == k
                write_signs_dir(part / "data", Signs(x[~held], y[~held], train.classes),
                                Signs(x[held], y[held], train.classes))
                done = train_command(str(part / "data"), part, [
                    "--epochs", str(epochs), *(["--model", "tiny"] if a.quick else []),
                    *shlex.split(flags)], f"bench cv: fold {k}")
                runs.append({"fold": k, "errors": done["images"] - done["right"],
                             "images": done["images"], "minutes": done["seconds"] / 60})
            errors = sum(r["errors"] for r in runs)
            rows.append({"candidate": name, "flags": flags, "errors": errors,
                         "photos": len(y), "error_rate": errors / len(y),
                         "minutes": sum(r["minutes"] for r in runs), "folds": runs})
            print(f"{name}: {errors}/{len(y)} errors", flush=True)
    text = table(["candidate", "flags", "errors (per fold)", "error rate", "minutes"], [
        [r["candidate"], f"`{r['flags'] or '(defaults)'}`", f"{r['errors']}/{r['photos']} (" +
         ", ".join(str(f["errors"]) for f in r["folds"]) + ")", f"{r['error_rate']:.2%}",
         f"{r['minutes']:.0f}"] for r in rows])
    report = {"part": "cv", "quick": a.quick, "data": a.data or "synthetic", "folds": folds,
              "epochs": epochs, "classes": train.classes, "groups": len(np.unique(groups)),
              "rows": rows}
    return write_report(report, result_path(a.out, "cv", a.quick), text)


def main(argv=None) -> dict:
    p = parser("cv", __doc__)
    p.add_argument("--data", help="a `resnet-ray data import` directory")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--candidate", type=lambda t: t.split("=", 1), action="append",
                   help='NAME="resnet-ray train flags" (repeatable; default: the defaults)')
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    return run(p.parse_args(argv))
