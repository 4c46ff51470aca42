"""Evaluate an exported model on a SIGNS-layout file: loss, accuracy, per-class precision and
recall, confusion matrix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .backends import load_predictor
from .data import load_signs
from .errors import DataError
from .predict import predict_probs
from .sources import test_file


def evaluate(model_dir: str | os.PathLike, data_file: str | os.PathLike,
             backend: str = "auto") -> dict[str, Any]:
    """Metrics of a model directory on a SIGNS-layout file, or on the held-out test photos
    of an embedded data set (builtin:sign-digits), predicted by the given backend."""
    data_file = test_file(str(data_file))
    data = load_signs(data_file)
    predictor, meta = load_predictor(model_dir, backend)
    if data.classes != meta["classes"]:
        raise DataError(f"{data_file}: list_classes {data.classes} differs from the model's "
                        f"classes {meta['classes']} ({model_dir})")
    if list(data.input_shape) != meta["input_shape"]:
        raise DataError(f"{data_file}: images are {list(data.input_shape)}, the model "
                        f"({model_dir}) expects {meta['input_shape']}")
    probs = predict_probs(predictor, data.x)
    return {**metrics_from_probs(probs, data.y, data.classes), "backend": predictor.description}


def metrics_from_probs(probs: np.ndarray, y: np.ndarray, classes: list[int]) -> dict[str, Any]:
    k = len(classes)
    pred = probs.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    tp = np.diag(confusion).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(confusion.sum(0) > 0, tp / confusion.sum(0), 0.0)
        recall = np.where(confusion.sum(1) > 0, tp / confusion.sum(1), 0.0)
    p_true = np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)
    return {
        "n": int(len(y)), "loss": float(-np.log(p_true).mean()),
        "accuracy": float((pred == y).mean()), "classes": classes,
        "precision": [float(v) for v in precision], "recall": [float(v) for v in recall],
        "confusion": confusion.tolist(),
    }


def format_report(m: dict[str, Any]) -> str:
    backend = f"  backend {m['backend']}" if m.get("backend") else ""
    lines = [f"n {m['n']}  loss {m['loss']:.4f}  accuracy {m['accuracy']:.4f}{backend}", "",
             "class  precision  recall"]
    for c, p, r in zip(m["classes"], m["precision"], m["recall"]):
        lines.append(f"{c:>5}  {p:9.4f}  {r:6.4f}")
    lines += ["", "confusion (rows: true, columns: predicted)",
              "      " + " ".join(f"{c:>4}" for c in m["classes"])]
    for c, row in zip(m["classes"], m["confusion"]):
        lines.append(f"{c:>5} " + " ".join(f"{v:>4}" for v in row))
    return "\n".join(lines)


def plot_confusion(m: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cm = np.array(m["confusion"])
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(cm), 1 + 0.6 * len(cm)))
    ax.imshow(cm, cmap="Blues")
    for i in range(len(cm)):
        for j in range(len(cm)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(cm)), m["classes"])
    ax.set_yticks(range(len(cm)), m["classes"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {m['accuracy']:.4f} (n={m['n']})")
    fig.tight_layout()
    path = out / "confusion.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
