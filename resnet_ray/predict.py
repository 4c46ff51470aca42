"""Predict digits for image files with an exported model, with the recipe's 0.5 rule."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .images import decode_image

NOT_FOUND = "can not find the number"
THRESHOLD = 0.5


@dataclass
class Prediction:
    digit: int | None
    probability: float
    probabilities: list[float]

    @property
    def found(self) -> bool:
        return self.digit is not None

    def describe(self) -> str:
        return f"{self.digit} ({self.probability:.3f})" if self.found else \
            f"{NOT_FOUND} (best {self.probability:.3f})"


def interpret(probs: np.ndarray, classes: list[int]) -> Prediction:
    """The digit whose probability is above 0.5, else none (the recipe's rule)."""
    best = int(np.argmax(probs))
    p = float(probs[best])
    return Prediction(classes[best] if p > THRESHOLD else None, p, [float(v) for v in probs])


def load_images(paths: list[str | os.PathLike], input_shape) -> np.ndarray:
    size = (int(input_shape[0]), int(input_shape[1]))
    return np.stack([decode_image(p, size) for p in paths])


def predict_files(model_dir: str | os.PathLike, paths: list[str | os.PathLike],
                  backend: str = "auto") -> list[Prediction]:
    from .backends import load_predictor

    predictor, meta = load_predictor(model_dir, backend)
    images = load_images(paths, meta["input_shape"])
    return [interpret(p, meta["classes"]) for p in predict_probs(predictor, images)]


def predict_probs(model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities of uint8 images, batch by batch, BatchNormalization in inference
    mode; `model` is a Keras model or a backends.Predictor."""
    from .backends import Predictor
    from .images import to_model_input

    call = model if isinstance(model, Predictor) else \
        (lambda batch: model(batch, training=False).numpy())
    out = [call(to_model_input(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
