"""What every benchmark part shares: where results go and how they are written."""

from __future__ import annotations

import json
import time
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def result_path(out: str | None, stem: str, quick: bool) -> Path:
    return Path(out) if out else RESULTS / f"{stem}-{date.today()}{'-quick' if quick else ''}.json"


def write_report(report: dict, path: Path, table: str) -> None:
    """The JSON and, beside it, the markdown table the docs copy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    path.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"wrote {path} and {path.with_suffix('.md')}", flush=True)


def epoch_timer(keras, times: list[float]):
    """A Keras callback appending each epoch's wall time, as fit runs it."""

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    return EpochTimer()


def inference_images_per_s(model, x, rounds: int) -> float:
    """images/s of the model called as a Serve replica calls it (a tf.function in inference
    mode) on the batch x, `rounds` times after one call that traces it."""
    from resnet_ray.keras_backend import tf

    infer = tf.function(lambda batch: model(batch, training=False))
    infer(x).numpy()
    begin = time.perf_counter()
    for _ in range(rounds):
        infer(x).numpy()
    return rounds * len(x) / (time.perf_counter() - begin)


def machine() -> str:
    """The CPU model, its cores and vector flags: what every published number names."""
    from resnet_ray.layout import cpu_flags

    from .compute import cpu_peak

    vector = sorted({f for f in cpu_flags() if f.startswith(("avx512", "amx")) or f == "avx2"})
    info = cpu_peak()
    return f"{info['cpu']}, {info['cores']} cores, {' '.join(vector) or 'no AVX2'}"


def train_command(data: str, storage: str, name: str, export: str, model: str, epochs: int,
                  flags: list[str], what: str) -> dict:
    """Run `resnet-ray train ... --export EXPORT` as a user types it, timed from its start:
    the command line, its start time and seconds, its stdout lines and the exported model's
    test score (right of images). `what` names the caller in the error if the command fails."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "resnet_ray", "train", "--data", data, "--model", model,
           "--epochs", str(epochs), "--storage", storage, "--name", name, "--export", export,
           *flags]
    print("$ resnet-ray " + " ".join(cmd[3:]), flush=True)
    start = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = time.time() - start
    if proc.returncode != 0:
        raise SystemExit(f"{what}: the training command failed ({proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    test = json.loads((Path(export) / "metadata.json").read_text())["test"]
    return {"command": "resnet-ray " + " ".join(cmd[3:]), "start": start, "seconds": seconds,
            "stdout": proc.stdout.splitlines(), "images": test["images"],
            "right": round(test["accuracy"] * test["images"]), "accuracy": test["accuracy"]}


def untrained_model_dir(tmp: Path, model_name: str) -> str:
    """A model directory of the untrained model, as `export` writes one: the speed benches'
    default, since speed does not depend on the weights."""
    from resnet_ray.model import build_model
    from resnet_ray.modeldir import save_model_dir

    path = tmp / model_name
    save_model_dir(build_model(model_name), path,
                   {"classes": [0, 1, 2, 3, 4, 5], "config": {}, "metrics": {}})
    return str(path)
