"""`resnet-ray demo`: the whole product on the embedded photos of real hands, step by step.

A short Ray Tune search picks the learning rate and batch size, Ray Train trains the model
with them on 2 workers, and the exported model is evaluated, asked about a photo and served
over HTTP. The held-out test photos reach neither the search nor the training.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

from PIL import Image

from . import console, embedded
from .config import TrainConfig
from .errors import RunFailed
from .evaluate import evaluate
from .paths import shown
from .predict import predict_files
from .runtime import init_ray
from .tune_spec import TuneSpec

DATA = "builtin:sign-digits"


def search_spec(model: str, epochs: int) -> TuneSpec:
    """Two one-worker trials side by side on 2 cores (each two more would double the search's
    time there); ASHA may stop the one that trails after epoch 1."""
    return TuneSpec(
        source="resnet-ray demo", num_samples=2, seed=0, searcher="random",
        train={"model": model, "epochs": epochs, "num_workers": 1, "cpus_per_worker": 1,
               "keep_checkpoints": 1},
        search_space={"lr": {"loguniform": [5e-4, 2e-3]}, "batch_size": {"choice": [16, 32]}},
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2})


def run_demo(workdir: str = "runs/demo", model: str = "resnet50", epochs: int = 7,
             num_workers: int | None = None, tune: bool = True, serve: bool = True) -> dict:
    work = Path(workdir).absolute()
    # The model is version 1 of a repository (docs/serving.md), as the service shows it.
    data_dir, repo = work / "data", work / "models"
    model_dir = repo / "1"
    steps = 4 + tune + serve
    step = iter(range(1, steps + 1))
    summary: dict = {"model": model, "epochs": epochs, "workdir": str(work)}
    init_ray()

    console.header(f"{next(step)}/{steps} data: the embedded photos of hands signing 0-5")
    train, test = embedded.sample(data_dir, embedded.classes_of(DATA))
    console.result(f"{len(train)} training and {len(test)} held-out test photos (64x64, Sign "
                   f"Language Digits, Apache-2.0) in {data_dir}")

    params = {"lr": TrainConfig.lr, "batch_size": TrainConfig.batch_size}
    if tune:
        params = _search(work, data_dir, model, min(2, epochs), next(step), steps)
    summary["params"], summary["tuned"] = params, tune

    console.header(f"{next(step)}/{steps} train {model} with Ray Train: {epochs} epochs, "
                   f"lr {params['lr']:.3g}, batch {params['batch_size']}")
    from .train import run_training

    run_training(TrainConfig(data=str(data_dir), model=model, epochs=epochs,
                             num_workers=num_workers, storage=str(work / "runs"), name="train",
                             export=str(model_dir), **params))

    console.header(f"{next(step)}/{steps} evaluate {shown(model_dir)} on the held-out photos")
    metrics = evaluate(model_dir, data_dir / "test_signs.h5")
    summary["test_accuracy"], summary["test_n"] = metrics["accuracy"], metrics["n"]
    summary["test_right"] = round(metrics["accuracy"] * metrics["n"])
    console.result(f"test accuracy {metrics['accuracy']:.4f} ({summary['test_right']}/"
                   f"{metrics['n']} photos), loss {metrics['loss']:.4f}")
    summary["model_dir"] = str(model_dir)

    console.header(f"{next(step)}/{steps} predict one held-out photo")
    photos = _one_photo_per_digit(test, work / "photos")
    prediction = predict_files(model_dir, [photos[0][1]])[0]
    console.result(f"{shown(photos[0][1])} (digit {photos[0][0]}): {prediction.describe()}")

    if serve:
        console.header(f"{next(step)}/{steps} serve {shown(repo)} with Ray Serve and ask it "
                       f"about one held-out photo of each digit")
        summary["served"] = _serve_and_ask(repo, photos)
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, work)
    return summary


def _search(work: Path, data_dir: Path, model: str, epochs: int, n: int, steps: int) -> dict:
    from .tune import run_search

    spec = search_spec(model, epochs)
    console.header(f"{n}/{steps} search learning rate and batch size with Ray Tune "
                   f"({spec.num_samples} trials of {model}, up to {epochs} epochs, ASHA)")
    result = run_search(spec, str(data_dir), storage=str(work / "runs"), name="tune")
    best = result.get("best")
    if best is None:
        raise RunFailed(f"no trial of the search reported a result; see {result['csv']}")
    return {"lr": float(best["lr"]), "batch_size": int(best["batch_size"])}


def _one_photo_per_digit(test, out: Path) -> list[tuple[int, Path]]:
    out.mkdir(parents=True, exist_ok=True)
    photos = []
    for label, digit in enumerate(test.classes):
        i = int((test.y == label).nonzero()[0][0])
        path = out / f"digit-{digit}.png"
        Image.fromarray(test.x[i]).save(path)
        photos.append((digit, path))
    return photos


def _serve_and_ask(repo: Path, photos: list[tuple[int, Path]]) -> list[dict]:
    from ray import serve

    from .serve import build_app
    from .serve_run import quiet_serve_logs

    with socket.socket() as s:  # a free port on loopback
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    quiet_serve_logs()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    answers = []
    try:
        serve.run(build_app({"model_dir": str(repo)}), name="digits", route_prefix="/")
        console.result(f"serving at http://127.0.0.1:{port}/ (a browser page at /, API docs "
                       f"at /docs)")
        for digit, path in photos:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/predict",
                                             data=path.read_bytes(),
                                             headers={"content-type": "image/png"})
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.loads(response.read())
            console.result(f"POST /predict {path.name} -> digit {answer['digit']}, "
                           f"probability {answer['probability']:.3f}, model version "
                           f"{answer['model_version']}")
            answers.append({"true": digit, "digit": answer["digit"],
                            "model_version": answer["model_version"]})
    finally:
        serve.shutdown()
    console.result("Serve shut down")
    return answers


def _print_summary(s: dict, work: Path) -> None:
    console.header("summary")
    console.result(f"test accuracy: {s['test_accuracy']:.1%} ({s['test_right']}/{s['test_n']} "
                   f"held-out photos), {s['model']} trained for {s['epochs']} epochs")
    console.result(f"learning rate {s['params']['lr']:.3g}, batch size "
                   f"{s['params']['batch_size']}" + (" (tuned)" if s["tuned"] else " (defaults)"))
    if "served" in s:
        answers = ", ".join(f"{a['true']}->{a['digit']}" for a in s["served"])
        correct = sum(a["true"] == a["digit"] for a in s["served"])
        version = ", ".join(sorted({str(a["model_version"]) for a in s["served"]}))
        console.result(f"served answers (model version {version}): {answers} ({correct}/"
                       f"{len(s['served'])} correct)")
    console.result(f"written to {shown(work)}: data/, models/1/ (the exported model, version 1 "
                   f"of a repository), runs/ (checkpoints and the search), photos/, "
                   f"summary.json")
