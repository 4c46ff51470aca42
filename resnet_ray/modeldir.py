"""Exported model directories: `model.keras` plus `metadata.json`, written atomically and
loaded in Keras safe mode (no code from the file runs)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelDirError

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"


def library_versions() -> dict[str, str]:
    import h5py
    import ray

    from .keras_backend import keras, tf
    from . import __version__

    return {"resnet_ray": __version__, "ray": ray.__version__, "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__, "h5py": h5py.__version__,
            "python": platform.python_version()}


def save_model_dir(model, out_dir: str | os.PathLike, metadata: dict[str, Any],
                   claimed: bool = False) -> Path:
    """Write model and metadata to a sibling temp dir, then swap it in: never half-written.
    claimed: out_dir is an empty directory this process made to claim its name (a
    repository's next version), replaced in one rename; anything else there is an error."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(metadata)
    meta.setdefault("classes", metadata.get("config", {}).get("classes"))
    meta["input_shape"] = [int(d) for d in model.input_shape[1:]]
    meta["versions"] = library_versions()
    meta["format"] = "resnet-ray/1"
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save(tmp / MODEL_FILE)
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if claimed:
            os.rename(tmp, out_dir)  # fails unless out_dir is still empty
        elif out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def read_metadata(model_dir: str | os.PathLike) -> dict[str, Any]:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"{model_dir}: no such model directory; expected a directory with "
                            f"{MODEL_FILE} and {METADATA_FILE} (made by `resnet-ray train "
                            "--export DIR`)")
    path = model_dir / METADATA_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelDirError(f"{path}: missing; expected the model's metadata") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"{path}: not valid JSON ({exc})") from None
    classes = meta.get("classes") if isinstance(meta, dict) else None
    if not isinstance(classes, list) or len(classes) < 2 or \
            not all(isinstance(c, int) for c in classes) or len(set(classes)) != len(classes):
        raise ModelDirError(f"{path}: key 'classes' must be a list of at least two distinct "
                            f"integer digits, got {classes!r}")
    shape = meta.get("input_shape")
    if not isinstance(shape, list) or len(shape) != 3 or shape[2] != 3:
        raise ModelDirError(f"{path}: key 'input_shape' must be [height, width, 3], got {shape!r}")
    return meta


def check_model_file(model_dir: str | os.PathLike) -> None:
    """Cheap checks of model.keras (present, an intact Keras archive) without loading it,
    so that a server fails at once, naming the file, instead of in every replica."""
    import zipfile

    path = Path(model_dir) / MODEL_FILE
    if not path.is_file():
        raise ModelDirError(f"{path}: missing; expected the Keras model file")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelDirError(f"{path}: not a Keras model archive ({exc})") from None
    if damaged is not None or "config.json" not in names:
        raise ModelDirError(f"{path}: damaged Keras model archive "
                            f"({'bad entry ' + damaged if damaged else 'no config.json'})")


def load_model_dir(model_dir: str | os.PathLike):
    """(model, metadata), checking that the two agree on classes and input shape."""
    from .keras_backend import keras

    meta = read_metadata(model_dir)
    path = Path(model_dir) / MODEL_FILE
    if not path.is_file():
        raise ModelDirError(f"{path}: missing; expected the Keras model file")
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a damaged file
        raise ModelDirError(f"{path}: cannot be loaded as a Keras 2 model "
                            f"({type(exc).__name__}: {str(exc)[:200]})") from None
    units = int(model.output_shape[-1])
    if units != len(meta["classes"]):
        raise ModelDirError(f"{Path(model_dir) / METADATA_FILE}: lists {len(meta['classes'])} "
                            f"classes but {path} predicts {units}")
    if list(model.input_shape[1:]) != meta["input_shape"]:
        raise ModelDirError(f"{Path(model_dir) / METADATA_FILE}: input_shape "
                            f"{meta['input_shape']} but {path} takes "
                            f"{list(model.input_shape[1:])}")
    return model, meta

