"""Exporting a training checkpoint as a model directory, scored once on the held-out test
file and recorded with the data it was trained, validated and tested on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .checkpoints import CONFIG_FILE, STATE_FILE, WEIGHTS_FILE
from .config import TrainConfig
from .evaluate import metrics_from_probs
from .modeldir import read_metadata, save_model_dir
from .optim import build_compiled
from .paths import shown
from .repository import claim_next_version


def format_test_score(meta: dict[str, Any]) -> str:
    t = meta["test"]
    return (f"held-out test ({shown(t['source'])}, {t['images']} images, used for nothing "
            f"else): accuracy {t['accuracy']:.4f}  loss {t['loss']:.4f}")


def exported_line(what: str, meta: dict[str, Any]) -> str:
    version = meta.get("model_version")
    return f"exported {what} to {shown(meta['model_dir'])}" + (
        f" (version {version})" if version is not None else "")


def export_checkpoint(checkpoint, out_dir: str, plan=None,
                      extra: dict[str, Any] | None = None,
                      next_version: bool = False) -> dict[str, Any]:
    """A training checkpoint -> an exported model directory (model.keras + metadata.json),
    or with next_version the repository out_dir's next numbered version. With the run's
    plan, the test score is measured here, once, on the model as exported, and recorded with
    the plan and the data the run trained and validated on. The metadata returned says where
    it went (`model_dir`, and `model_version` in a repository)."""
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
    if plan is not None:
        source = plan.source
        probs, y = source.test_scores(model)
        scores = metrics_from_probs(probs, y, source.classes)
        meta.update(plan=plan.record(), data=source.record(), test={
            "source": source.test_source, "images": len(y), "accuracy": scores["accuracy"],
            "loss": scores["loss"]})
    version = None
    if next_version:
        out_dir, version = claim_next_version(out_dir)
    save_model_dir(model, out_dir, meta, claimed=next_version)
    return {**read_metadata(out_dir), "model_dir": str(out_dir), "model_version": version}
