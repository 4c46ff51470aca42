"""What every benchmark part shares: where results go and the one writer of results and
tables, the one way to run a setup in a fresh process, the training command as a user types
it, and the name and hardware profile of the machine every number is measured on.

`python -m bench.common MODULE FUNCTION JSON` is the fresh process: it prints
RESULT <json> of bench.MODULE.FUNCTION(json)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parent.parent
PROFILES = ("avx2", "avx512-bf16", "amx", "gpu")  # the README's rows, in order


def profile(machine_name: str) -> str:
    """The hardware profile a machine description belongs to (its CPU flags, or a GPU)."""
    words = set(machine_name.replace(",", " ").split())
    if "NVIDIA" in words:
        return "gpu"
    return "amx" if "amx_bf16" in words else "avx512-bf16" if "avx512_bf16" in words \
        else "avx2"


def machine() -> str:
    """The CPU model, its cores and vector flags: what every published number names."""
    name = next((ln.partition(":")[2].strip() for ln in Path("/proc/cpuinfo").read_text()
                 .splitlines() if ln.startswith("model name")), "unknown CPU")
    from resnet_ray.layout import cpu_flags

    vector = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx")) or f == "avx2")
    gpu = subprocess.run("nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null",
                         shell=True, capture_output=True, text=True).stdout.strip()
    gpu = f"{gpu.splitlines()[0]} with " if gpu else ""
    return f"{gpu}{name}, {os.cpu_count()} cores, {' '.join(vector) or 'no AVX2'}"


def result_path(out: str | None, part: str, quick: bool) -> Path:
    """<results>/<part>-<date>-<profile>[-quick].json unless --out names the file."""
    if out:
        return Path(out)
    return RESULTS / f"{part}-{date.today()}-{profile(machine())}{'-quick' if quick else ''}.json"


def parser(part: str, doc: str) -> argparse.ArgumentParser:
    """A part's flags, starting with the two every part has."""
    p = argparse.ArgumentParser(prog=f"python -m bench {part}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the tiny model: the harness only")
    p.add_argument("--out", help="the result file (default bench/results/PART-DATE-PROFILE.json)")
    return p


def table(header: list[str], rows: list[list]) -> str:
    """The one Markdown table writer."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def write_report(report: dict, path: Path, text: str) -> dict:
    """The JSON record (with the machine, date and command that made it) and, beside it, a
    Markdown summary; returns the record."""
    report = {"machine": machine(), "date": str(date.today()), "finished": time.time(),
              "command": "python -m bench " + shlex.join(sys.argv[1:]), **report}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    path.with_suffix(".md").write_text(f"{report['machine']}, {report['date']}: "
                                       f"`{report['command']}`\n\n{text}\n")
    print(text, f"\nwrote {path} and {path.with_suffix('.md')}", sep="\n", flush=True)
    return report


def fresh(module: str, function: str, payload: dict) -> dict:
    """bench.<module>.<function>(payload) in a fresh Python process (its own TensorFlow, its
    own Ray): what each measured setup runs in, so that none inherits another's state."""
    proc = subprocess.run([sys.executable, "-m", "bench.common", module, function,
                           json.dumps(payload)], cwd=ROOT, capture_output=True, text=True)
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("RESULT ")),
                None)
    if proc.returncode or line is None:
        raise SystemExit(f"{module}.{function} failed (exit {proc.returncode}):\n"
                         f"{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def train_command(data: str, work: Path, flags: list[str], what: str, cwd: Path = ROOT) -> dict:
    """`resnet-ray train --data DATA ... --export` as a user types it, timed from its start:
    the command, its start and seconds, its output lines, rank 0's first report of each
    epoch, the exported model's classes and its test score. cwd: the checkout whose code runs."""
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "resnet_ray", "train", "--data", data, "--storage",
           str(work / "runs"), "--name", "run", "--export", str(work / "model"), *flags]
    start = time.time()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(cwd)})
    if proc.returncode != 0:
        raise SystemExit(f"{what}: the training command failed ({proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    meta = json.loads((work / "model" / "metadata.json").read_text())
    test = meta["test"]
    return {"command": "resnet-ray " + " ".join(cmd[3:]).replace(str(work), "WORK"),
            "start": start, "seconds": time.time() - start, "stdout": proc.stdout.splitlines(),
            "epochs": rank0_epochs(work / "runs" / "run"), "classes": meta["classes"],
            "images": test["images"],
            "right": round(test["accuracy"] * test["images"])}


def rank0_epochs(run_dir: Path) -> list[dict]:
    """Rank 0's first report of each epoch of a run, in order (a resumed run may report an
    epoch twice)."""
    epochs: dict[int, dict] = {}
    for report in map(json.loads, (run_dir / "reports.jsonl").read_text().splitlines()):
        if report.get("rank", 0) == 0:
            epochs.setdefault(int(report["epoch"]), report)
    return [epochs[e] for e in sorted(epochs)]


def alternate(sides: dict, rounds: int, measure) -> list[dict]:
    """Every side once a round, in reverse order every other round, so that a noisy machine
    slows all alike: measure(name, side, round) -> a run, given "side" and "round" here."""
    runs = []
    for r in range(1, rounds + 1):
        for name in list(sides)[::1 if r % 2 else -1]:
            runs.append({"side": name, "round": r, **measure(name, sides[name], r)})
            print(f"round {r}, {name}: {runs[-1]['steady_images_per_s']:.1f} images/s",
                  flush=True)
    return runs


def by_round(runs: list[dict], top: str, bottom: str) -> list[float]:
    """top's steady images/s over bottom's, round by round: the two ran next to each other."""
    base = {x["round"]: x["steady_images_per_s"] for x in runs if x["side"] == bottom}
    return [x["steady_images_per_s"] / base[x["round"]] for x in runs
            if x["side"] == top and x["round"] in base]


def steady(values: list[float]) -> float:
    """A run's steady value: the median from its second epoch on (the first one traces)."""
    return statistics.median(values[1:] or values)


def untrained_model_dir(tmp: Path, model_name: str) -> str:
    """The untrained model as `export` writes it: speed does not depend on the weights."""
    from resnet_ray.model import build_model
    from resnet_ray.modeldir import save_model_dir

    path = tmp / model_name
    save_model_dir(build_model(model_name), path,
                   {"classes": [0, 1, 2, 3, 4, 5], "config": {}, "metrics": {}})
    return str(path)


def signs_dir(out: Path, images: int, test: int = 12) -> str:
    """A SIGNS directory of the project's synthetic hands: speed does not depend on them."""
    from resnet_ray.data import write_signs_dir
    from resnet_ray.synth import synth_data

    write_signs_dir(out, *synth_data(images, test, seed=0))
    return str(out)


if __name__ == "__main__":
    module, function, payload = sys.argv[1:4]
    result = getattr(importlib.import_module(f"bench.{module}"), function)(json.loads(payload))
    print("RESULT " + json.dumps(result), flush=True)
