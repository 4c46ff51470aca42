"""Exporting a training checkpoint as a model directory, scored once on the held-out test
file and recorded with the data it was trained, validated and tested on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoints import CONFIG_FILE, STATE_FILE, WEIGHTS_FILE
from .config import TrainConfig
from .data import Signs
from .evaluate import metrics_from_probs
from .folders import FolderSplit, dataset, predict_split
from .modeldir import read_metadata, save_model_dir
from .optim import build_compiled
from .predict import predict_probs


def format_test_score(meta: dict[str, Any]) -> str:
    t = meta["test"]
    return (f"held-out test ({t['source']}, {t['images']} images, used for nothing else): "
            f"accuracy {t['accuracy']:.4f}  loss {t['loss']:.4f}")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_record(train: Signs, val: Signs, test: Signs) -> dict[str, Any]:
    """What a run trained, validated and was tested on enough to check that a
    repeat used the same data (file digests) and the same split (sizes per class)."""
    def part(s: Signs, is_file: bool) -> dict[str, Any]:
        rec = {"source": s.source, "images": len(s),
               "per_class": np.bincount(s.y, minlength=len(s.classes)).tolist()}
        if is_file:  # the validation split's source names a share of the training file
            rec["sha256"] = _sha256(s.source)
        return rec

    return {"train": part(train, True), "validation": part(val, False),
            "test": part(test, True)}


def export_checkpoint(checkpoint, out_dir: str, extra: dict[str, Any] | None = None,
                      data: tuple[Signs, Signs, Signs] | None = None) -> dict[str, Any]:
    """A training checkpoint -> an exported model directory (model.keras + metadata.json).
    With data = (train, validation, test), the test score is measured here, once, on the
    model as exported, and recorded with what the run trained and validated on."""
    with checkpoint.as_directory() as d:
        d = Path(d)
        cfg = TrainConfig.load(d / CONFIG_FILE)
        state = json.loads((d / STATE_FILE).read_text())
        model, _ = build_compiled(cfg)
        model.load_weights(d / WEIGHTS_FILE)
    metrics = {k: v for k, v in state.get("metrics", {}).items()
               if k in ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")}
    meta = {"classes": cfg.classes, "config": cfg.to_dict(), "metrics": metrics,
            "history": state.get("history", []), "checkpoint": str(checkpoint.path),
            **(extra or {})}
    if data is not None:
        train, val, test = data
        if isinstance(test, FolderSplit):  # streamed from the folder, a batch at a time
            probs, y = predict_split(model, dataset(test).iter_batches(
                batch_size=64, batch_format="numpy"))
            meta["data"] = test.data.record()
        else:
            probs, y = predict_probs(model, test.x), test.y
            meta["data"] = data_record(train, val, test)
        scores = metrics_from_probs(probs, y, test.classes)
        meta["test"] = {"source": test.source, "images": len(y),
                        "accuracy": scores["accuracy"], "loss": scores["loss"]}
    save_model_dir(model, out_dir, meta)
    return read_metadata(out_dir)
