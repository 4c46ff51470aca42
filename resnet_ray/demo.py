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


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_demo(workdir: str = "runs/demo", model: str = "tiny", epochs: int = 8,
             num_workers: int = 2) -> dict:
    work = Path(workdir).absolute()
    data_dir, model_dir = work / "data", work / "model"

    _step(f"1/4 synthesize the embedded default data set into {data_dir}")
    train, test = synth_data(1080, 120, seed=0)
    write_signs_dir(data_dir, train, test)
    print(f"{len(train)} training and {len(test)} test pictures of hands showing 0-5 fingers")

    _step(f"2/4 train {model} on Ray Train with {num_workers} workers for {epochs} epochs")
    cfg = TrainConfig(data=str(data_dir), model=model, epochs=epochs, batch_size=32,
                      num_workers=num_workers, storage=str(work / "runs"), name="train",
                      export=str(model_dir))
    run_training(cfg)

    _step(f"3/4 evaluate {model_dir} on {data_dir / 'test_signs.h5'}")
    metrics = evaluate(model_dir, data_dir / "test_signs.h5")
    print(f"test accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}, "
          f"n {metrics['n']}")

    _step("4/4 predict one picture")
    image = work / "example.png"
    Image.fromarray(test.x[0]).save(image)
    prediction = predict_files(model_dir, [image])[0]
    print(f"{image} (true digit {test.classes[int(test.y[0])]}): {prediction.describe()}")
    summary = {"test_accuracy": metrics["accuracy"], "model_dir": str(model_dir),
               "prediction": prediction.digit}
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
