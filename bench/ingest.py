"""Data ingest, each side run as the training command a user types (its default layout):

python -m bench ingest --photos DIR [--classes 0,1,2,3,4,5]  # a folder by Ray Data against .h5
python -m bench ingest --baseline REV [--data DIR]     # .h5 here against git revision REV's
python -m bench ingest --small DIR --big DIR   # a worker's peak memory, small and big folder
    [--epochs 3] [--rounds 1] [--quick]

Steady images/s: rank 0's median epoch from the second on; sides alternate round by round.
--baseline runs REV's code from `git archive`; --data defaults to the embedded 0-5 photos.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

from .common import (ROOT, alternate, by_round, parser, result_path, steady, table,
                     train_command, write_report)


def _train(data: str, work: Path, a: argparse.Namespace, flags=(), cwd: Path = ROOT) -> dict:
    done = train_command(data, work, ["--epochs", str(1 if a.quick else a.epochs),
                                      *(["--model", "tiny"] if a.quick else []), *flags],
                         "bench ingest", cwd)
    return {"wall_s": done["seconds"],
            "steady_images_per_s": steady([r["images_per_s"] for r in done["epochs"]]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in done["epochs"]),
            "private_mb": max(r.get("private_mb") or 0 for r in done["epochs"])}


def side_by_side(sides: dict, a: argparse.Namespace, tmp: Path) -> dict:
    """sides: name -> (data, flags, checkout), alternated; the second side over the first."""
    runs = alternate(sides, a.rounds, lambda name, side, r: _train(
        side[0], tmp / f"{name}-{r}", a, side[1], side[2]))
    first, second = list(sides)
    ratios = by_round(runs, second, first)
    return {"runs": runs, "images_per_s": {n: statistics.median(
        x["steady_images_per_s"] for x in runs if x["side"] == n) for n in sides},
        "ratio": statistics.median(ratios), "ratio_by_round": ratios, "of": f"{second} / {first}"}


def run(a: argparse.Namespace) -> dict:
    from resnet_ray import embedded
    from resnet_ray.data import import_images, parse_classes
    from resnet_ray.synth import write_synth_folder

    report = {"part": "ingest", "quick": a.quick, "epochs": a.epochs, "rounds": a.rounds}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        tmp = Path(tmp)
        if a.quick:
            a.photos, a.small, a.big = str(tmp / "photos"), str(tmp / "photos"), str(tmp / "more")
            write_synth_folder(a.photos, 240)
            write_synth_folder(a.big, 720, seed=1)
        if a.baseline:
            checkout = tmp / "baseline"
            checkout.mkdir()
            subprocess.run(f"git -C {ROOT} archive {a.baseline} | tar -x -C {checkout}",
                           shell=True, check=True)
            data = a.data or str(tmp / "signs")
            if not a.data:
                embedded.sample(data, embedded.classes_of("builtin:sign-digits"))
            report["baseline"] = {"revision": a.baseline, **side_by_side(
                {a.baseline: (data, [], checkout), "this tree": (data, [], ROOT)}, a, tmp)}
        if a.photos:
            h5 = tmp / "h5"
            import_images(a.photos, h5, parse_classes(a.classes), 64, progress=False)
            report["speed"] = {"photos": a.photos, **side_by_side(
                {".h5": (str(h5), [], ROOT),
                 "folder": (a.photos, ["--classes", a.classes], ROOT)}, a, tmp)}
        if a.small and a.big:
            report["memory"] = {name: {"files": sum(1 for p in Path(folder).rglob("*")
                                                    if p.is_file()),
                                       **_train(folder, tmp / f"memory-{name}", a,
                                                ["--model", "tiny", "--epochs", "1"])}
                                for name, folder in (("small", a.small), ("big", a.big))}
    rows = [[f"{part}: {x['side']}", x["round"], f"{x['steady_images_per_s']:.1f}",
             f"{x['wall_s']:.0f}"] for part in ("baseline", "speed") if part in report
            for x in report[part]["runs"]]
    rows += [[f"memory: {n} ({m['files']} files)", "-", f"peak RSS {m['peak_rss_mb']:.0f} MB",
              f"{m['wall_s']:.0f}"] for n, m in report.get("memory", {}).items()]
    text = table(["run", "round", "steady images/s", "wall s"], rows) + "".join(
        f"\n\n{part}: {report[part]['of']} = {report[part]['ratio']:.3f}"
        for part in ("baseline", "speed") if part in report)
    return write_report(report, result_path(a.out, "ingest", a.quick), text)


def main(argv=None) -> dict:
    p = parser("ingest", __doc__)
    p.add_argument("--photos", help="speed: a folder with one sub-folder per class")
    p.add_argument("--classes", default="0,1,2,3,4,5")
    p.add_argument("--baseline", metavar="REV", help="a git revision to measure beside")
    p.add_argument("--data", help="with --baseline: a SIGNS directory")
    p.add_argument("--small", help="memory: a folder of about 1,000 images")
    p.add_argument("--big", help="memory: a folder of about 100,000 images")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1)
    return run(p.parse_args(argv))
