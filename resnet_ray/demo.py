"""`resnet-ray demo`: the whole pipeline on the embedded default data, printing each step."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from .config import TrainConfig
from .data import write_signs_dir
from .evaluate import evaluate
from .predict import predict_files
from .synth import synth_data
from .train import run_training
from .tune import load_spec, run_search


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


SMOKE_CONFIG = Path(__file__).resolve().parent.parent / "tune_configs" / "smoke.yaml"


def run_demo(workdir: str = "runs/demo", model: str = "tiny", epochs: int = 8,
             num_workers: int = 2, tune: bool = True, serve: bool = True) -> dict:
    work = Path(workdir).absolute()
    data_dir, model_dir = work / "data", work / "model"
    steps = 4 + tune + serve
    step = iter(range(1, steps + 1))

    _step(f"{next(step)}/{steps} synthesize the embedded default data set into {data_dir}")
    train, test = synth_data(1080, 120, seed=0)
    write_signs_dir(data_dir, train, test)
    print(f"{len(train)} training and {len(test)} test pictures of hands showing 0-5 fingers")

    _step(f"{next(step)}/{steps} train {model} on Ray Train with {num_workers} workers for "
          f"{epochs} epochs")
    cfg = TrainConfig(data=str(data_dir), model=model, epochs=epochs, batch_size=32,
                      num_workers=num_workers, storage=str(work / "runs"), name="train",
                      export=str(model_dir))
    run_training(cfg)

    if tune:
        _step(f"{next(step)}/{steps} search learning rate and batch size with Ray Tune "
              f"({SMOKE_CONFIG.name})")
        summary = run_search(load_spec(SMOKE_CONFIG), str(data_dir), storage=str(work / "runs"),
                             name="tune", export=str(work / "tuned"))
        print(f"{summary['trials']} trials, {summary['epochs_run']} of "
              f"{summary['epochs_budget']} epochs run (ASHA stopped the rest); results in "
              f"{summary['csv']}")
        if "exported" in summary:
            model_dir = work / "tuned"

    _step(f"{next(step)}/{steps} evaluate {model_dir} on {data_dir / 'test_signs.h5'}")
    metrics = evaluate(model_dir, data_dir / "test_signs.h5")
    print(f"test accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}, "
          f"n {metrics['n']}")

    _step(f"{next(step)}/{steps} predict one picture")
    image = work / "example.png"
    Image.fromarray(test.x[0]).save(image)
    prediction = predict_files(model_dir, [image])[0]
    print(f"{image} (true digit {test.classes[int(test.y[0])]}): {prediction.describe()}")
    result = {"test_accuracy": metrics["accuracy"], "model_dir": str(model_dir),
              "prediction": prediction.digit}

    if serve:
        _step(f"{next(step)}/{steps} serve {model_dir} with Ray Serve and ask it over HTTP")
        result["http"] = _serve_and_ask(model_dir, test)
    (work / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _serve_and_ask(model_dir: Path, test, n: int = 4) -> list[dict]:
    import io
    import socket
    import urllib.request

    from ray import serve

    from .serve import build_app

    with socket.socket() as s:  # a free port on loopback
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    answers = []
    try:
        serve.run(build_app({"model_dir": str(model_dir)}), name="digits", route_prefix="/")
        print(f"serving at http://127.0.0.1:{port}/ (a browser page at /, API docs at /docs)")
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(test.x[i]).save(buf, format="PNG")
            request = urllib.request.Request(f"http://127.0.0.1:{port}/predict",
                                             data=buf.getvalue(),
                                             headers={"content-type": "image/png"})
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.loads(response.read())
            truth = test.classes[int(test.y[i])]
            print(f"POST /predict (picture of {truth}) -> digit {answer['digit']}, "
                  f"probability {answer['probability']:.3f}")
            answers.append({"true": truth, "digit": answer["digit"]})
    finally:
        serve.shutdown()
        print("Serve shut down")
    return answers
