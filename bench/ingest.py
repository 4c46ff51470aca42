"""Streaming ingest: the same photos trained from SIGNS .h5 files and straight from their
folder through Ray Data, steady images/s side by side; and each worker's peak memory when
training on a folder of 1,000 and of 100,000 images.

python -m bench.ingest --photos DIR [--classes 0,1,2,3,4,5] [--epochs 3] [--rounds 1]
                       [--big DIR --small DIR]   # two folders that `data synth --folder` wrote
python -m bench.ingest --quick                   # tiny model on drawn images, minutes

Speed: ResNet-50, 2 workers x 1 CPU, global batch 32, the .h5 run and the folder run
alternating `--rounds` times; steady images/s is the median over epochs 2 and later of rank
0's reported rate (an epoch's steps x batch / its time, data waits included). Memory: the
tiny model, one epoch, each worker's peak RSS (`peak_rss_mb` in reports.jsonl; it counts the
object store's shared pages the worker read) and private memory (`private_mb`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

from .common import machine, result_path, write_report


def _train(data: str, storage: str, name: str, model: str, epochs: int, classes: str = "",
           batch_size: int = 32) -> dict:
    from resnet_ray.config import TrainConfig
    from resnet_ray.folders import is_folder
    from resnet_ray.train import REPORTS_FILE, run_training

    cfg = TrainConfig(data=data, model=model, epochs=epochs, storage=storage, name=name,
                      batch_size=batch_size, num_workers=2, cpus_per_worker=1,
                      data_classes=classes if is_folder(data) else "")
    begin = time.perf_counter()
    run_training(cfg, quiet=True)
    wall = time.perf_counter() - begin
    reports = [json.loads(line) for line in
               (Path(cfg.run_dir) / REPORTS_FILE).read_text().splitlines()]
    rank0 = {r["epoch"]: r for r in reports if r["rank"] == 0}
    steady = [rank0[e]["images_per_s"] for e in sorted(rank0) if e >= 2] or \
        [r["images_per_s"] for r in rank0.values()]
    peak, private = {}, {}
    for r in reports:
        peak[r["rank"]] = max(peak.get(r["rank"], 0.0), r.get("peak_rss_mb", 0.0))
        private[r["rank"]] = max(private.get(r["rank"], 0.0), r.get("private_mb") or 0.0)
    return {"data": data, "wall_s": round(wall, 1), "epochs": len(rank0),
            "steady_images_per_s": round(statistics.median(steady), 2),
            "val_accuracy": rank0[max(rank0)]["val_accuracy"],
            "peak_rss_mb": {str(k): round(v, 1) for k, v in sorted(peak.items())},
            "private_mb": {str(k): round(v, 1) for k, v in sorted(private.items())}}


def speed(photos: str, classes: str, epochs: int, rounds: int, model: str, tmp: Path) -> dict:
    from resnet_ray.data import import_images, parse_classes

    h5 = tmp / "h5"
    import_images(photos, h5, parse_classes(classes), 64, progress=False)
    runs = []
    for r in range(rounds):
        order = ("h5", "folder") if r % 2 == 0 else ("folder", "h5")
        for kind in order:
            data = str(h5) if kind == "h5" else photos
            result = _train(data, str(tmp / "runs"), f"{kind}-{r}", model, epochs, classes)
            runs.append({"kind": kind, "round": r, **result})
            print(f"{kind} round {r}: {result['steady_images_per_s']} images/s, "
                  f"wall {result['wall_s']} s", flush=True)
    rate = {k: statistics.median(x["steady_images_per_s"] for x in runs if x["kind"] == k)
            for k in ("h5", "folder")}
    return {"model": model, "epochs": epochs, "rounds": rounds, "runs": runs,
            "h5_images_per_s": rate["h5"], "folder_images_per_s": rate["folder"],
            "ratio": round(rate["folder"] / rate["h5"], 3)}


def memory(small: str, big: str, tmp: Path) -> dict:
    out = {}
    for name, folder in (("small", small), ("big", big)):
        files = sum(1 for p in Path(folder).rglob("*") if p.is_file())
        result = _train(folder, str(tmp / "runs"), f"memory-{name}", "tiny", 1)
        out[name] = {"files": files, **result}
        print(f"{name} ({files} files): peak RSS per worker {result['peak_rss_mb']} MB, "
              f"private {result['private_mb']} MB, wall {result['wall_s']} s", flush=True)
    for key in ("peak_rss_mb", "private_mb"):
        out[f"growth_{key}"] = {rank: round(out["big"][key][rank] - mb, 1)
                                for rank, mb in out["small"][key].items()}
    return out


def markdown(report: dict) -> str:
    lines = [f"Machine: {report['machine']}.", ""] if report.get("machine") else []
    s = report.get("speed")
    if s:
        lines += [f"{s['model']}, 2 workers x 1 CPU, global batch 32, {s['epochs']} epochs, "
                  f"{s['rounds']} round(s), same photos ({report['photos']}):", "",
                  "| input | steady images/s | wall s | val accuracy |", "|---|---|---|---|"]
        for r in s["runs"]:
            lines.append(f"| {r['kind']} (round {r['round']}) | {r['steady_images_per_s']} "
                         f"| {r['wall_s']} | {r['val_accuracy']:.4f} |")
        lines += ["", f"folder / .h5 = **{s['ratio']:.2f}x**"]
    m = report.get("memory")
    if m:
        lines += ["", "tiny model, 2 workers, 1 epoch: each worker's peak RSS and private "
                  "memory (at the epoch's end)", "",
                  "| folder | files | peak RSS MB (rank 0, 1) | private MB (rank 0, 1) | wall s |",
                  "|---|---|---|---|---|"]
        for name in ("small", "big"):
            r = m[name]
            lines.append(f"| {r['data']} | {r['files']} | {r['peak_rss_mb'].get('0')}, "
                         f"{r['peak_rss_mb'].get('1')} | {r['private_mb'].get('0')}, "
                         f"{r['private_mb'].get('1')} | {r['wall_s']} |")
        lines += ["", f"growth from the small to the big folder: peak RSS "
                      f"{m['growth_peak_rss_mb']} MB, private {m['growth_private_mb']} MB"]
    return "\n".join(lines)


def run(photos: str | None, classes: str, epochs: int, rounds: int, small: str | None,
        big: str | None, quick: bool, out: str | None) -> dict:
    from resnet_ray.synth import write_synth_folder

    report = {"part": "ingest", "date": str(date.today()), "quick": quick, "photos": photos,
              "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        tmp = Path(tmp)
        if quick:
            photos = str(tmp / "photos")
            write_synth_folder(photos, 240)
            small, big = photos, str(tmp / "more")
            write_synth_folder(big, 720, seed=1)
            report["photos"] = photos
        if photos:
            report["speed"] = speed(photos, classes, 1 if quick else epochs, rounds,
                                    "tiny" if quick else "resnet50", tmp)
        if small and big:
            report["memory"] = memory(small, big, tmp)
    write_report(report, result_path(out, "ingest", quick), markdown(report))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", help="a folder of class sub-folders (speed)")
    parser.add_argument("--classes", default="0,1,2,3,4,5")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--small", help="memory: a folder of about 1,000 images")
    parser.add_argument("--big", help="memory: a folder of about 100,000 images")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help="JSON path (a .md table is written beside it)")
    a = parser.parse_args(argv)
    run(a.photos, a.classes, a.epochs, a.rounds, a.small, a.big, a.quick, a.out)


if __name__ == "__main__":
    main()
