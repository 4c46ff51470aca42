"""Inference backends for an exported model: TensorFlow, or OpenVINO compiled for this CPU.

Every path that predicts (evaluate, predict, Serve) gets a `Predictor`: float32 images in
[0, 1] in, class probabilities out, BatchNormalization in inference mode. `auto` is OpenVINO
(at the CPU's own precision) where it is installed, else TensorFlow; docs/serving.md has the
measurements behind it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, ModelDirError, UserError

BACKENDS = ("auto", "tf", "openvino", "openvino-f32", "openvino-int8")
INT8_FILE = "openvino-int8.xml"  # with its weights in openvino-int8.bin
INT8_META = "openvino-int8.json"
# The model as OpenVINO reads it, converted at its first load and kept beside model.keras, so
# that a later load (a new replica, a version swap) reads and compiles instead of converting.
IR_FILE = "openvino.xml"  # with its weights in openvino.bin
IR_META = "openvino.json"
CALIBRATION_IMAGES = 300


class Predictor:
    """A model compiled for one backend; calls are serialised (one inference at a time)."""

    def __init__(self, fn, backend: str, precision: str, owner: Any = None):
        self._fn, self._lock = fn, threading.Lock()
        self._owner = owner  # what the compiled model reads its weights from, if not its own
        self.backend, self.precision = backend, precision

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            return self._fn(np.ascontiguousarray(x, dtype=np.float32))

    @property
    def description(self) -> str:
        return f"{self.backend} ({self.precision})"


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise UserError(f"backend {name!r}: expected one of {', '.join(BACKENDS)}")
    return name


def resolve(name: str) -> str:
    """The concrete backend `auto` stands for: OpenVINO where it is installed (faster than
    TensorFlow at every batch size measured, docs/serving.md), else TensorFlow."""
    check_backend(name)
    if name != "auto":
        return name
    import importlib.util

    return "openvino" if importlib.util.find_spec("openvino") else "tf"


def load_predictor(model_dir: str | os.PathLike, backend: str = "auto",
                   threads: int | None = None) -> tuple[Predictor, dict[str, Any]]:
    """(predictor, metadata) for an exported model directory; `threads` caps the backend's
    thread pool (default: the backend's own choice, every core)."""
    from .modeldir import read_metadata

    backend = resolve(backend)
    if backend == "openvino-int8":
        meta = read_metadata(model_dir)
        return _openvino_int8(Path(model_dir), meta, threads), meta
    from .modeldir import load_model_dir

    precision = "f32" if backend == "openvino-f32" else None
    if backend != "tf":
        meta = read_metadata(model_dir)
        if (converted := _read_converted(Path(model_dir), meta)) is not None:
            return _openvino(converted, precision, backend, threads), meta
    model, meta = load_model_dir(model_dir)
    if backend == "tf":
        if threads:
            from .runtime import limit_threads
            limit_threads(threads)
        return _tensorflow(model, meta), meta
    converted = _convert(model, meta)
    _keep_converted(converted, Path(model_dir))
    # OpenVINO's TensorFlow frontend points the converted weights at the Keras model's own
    # memory: the model must live as long as the predictor, or the answers turn to garbage.
    return _openvino(converted, precision, backend, threads, owner=model), meta


def _read_converted(model_dir: Path, meta: dict[str, Any]):
    """The kept conversion of this model.keras by this OpenVINO, or None (then the model is
    converted again: a missing, stale or unreadable copy is never an error)."""
    import openvino as ov

    try:
        info = json.loads((model_dir / IR_META).read_text())
        if info.get("model_sha256") != _keras_digest(model_dir) or \
                info.get("openvino") != ov.__version__:
            return None
        converted = ov.Core().read_model(model_dir / IR_FILE)
    except (OSError, ValueError, AttributeError, RuntimeError):
        return None
    shape_in = converted.inputs[0].get_partial_shape()
    shape_out = converted.outputs[0].get_partial_shape()
    if [d.get_length() if d.is_static else None for d in shape_in][1:] != meta["input_shape"] \
            or not shape_out[-1].is_static or shape_out[-1].get_length() != len(meta["classes"]):
        return None
    return converted


def _keep_converted(converted, model_dir: Path) -> None:
    """Save the conversion beside model.keras for the next load; where the directory cannot
    be written (a read-only volume), every load converts."""
    import openvino as ov

    tmp = model_dir / f".{IR_FILE}.{os.getpid()}.tmp.xml"
    try:
        ov.save_model(converted, tmp, compress_to_fp16=False)  # the .xml and a .bin
        tmp.with_suffix(".bin").replace(model_dir / IR_FILE.replace(".xml", ".bin"))
        tmp.replace(model_dir / IR_FILE)
        (model_dir / IR_META).write_text(json.dumps({
            "model_sha256": _keras_digest(model_dir), "openvino": ov.__version__}) + "\n")
    except (OSError, RuntimeError):
        for leftover in (tmp, tmp.with_suffix(".bin")):
            leftover.unlink(missing_ok=True)


def _tensorflow(model, meta) -> Predictor:
    from .keras_backend import tf

    infer = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    infer(np.zeros((1, *meta["input_shape"]), np.float32))  # trace once, before any request
    return Predictor(lambda x: infer(x).numpy(), "tf", "f32")


def _convert(model, meta):
    import openvino as ov

    from . import console

    with console.quiet_stderr():
        return ov.convert_model(model, input=[(-1, *meta["input_shape"])])


def _openvino(ov_model, precision: str | None, backend: str, threads: int | None = None,
              owner: Any = None) -> Predictor:
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY"}  # one stream using every core: lowest latency
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = ov.Core().compile_model(ov_model, "CPU", config)
    request = compiled.create_infer_request()
    used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    if backend == "openvino-int8":
        used = f"int8, {used} elsewhere"
    return Predictor(lambda x: request.infer({0: x})[0].copy(), backend, used, owner)


def _keras_digest(model_dir: Path) -> str:
    from .modeldir import MODEL_FILE

    return hashlib.sha256((model_dir / MODEL_FILE).read_bytes()).hexdigest()


def _openvino_int8(model_dir: Path, meta, threads: int | None) -> Predictor:
    import openvino as ov

    xml, info_path = model_dir / INT8_FILE, model_dir / INT8_META
    if not xml.is_file() or not info_path.is_file():
        raise ModelDirError(f"{xml}: missing; make the int8 model first with "
                            f"`resnet-ray quantize {model_dir} --data DATA_DIR`")
    again = f"run `resnet-ray quantize {model_dir} --data DATA_DIR` again"
    try:
        info = json.loads(info_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{info_path}: not valid JSON ({exc}); {again}") from None
    if not isinstance(info, dict) or info.get("model_sha256") != _keras_digest(model_dir):
        raise ModelDirError(f"{xml}: made from another model.keras than the one in "
                            f"{model_dir}; {again}")
    try:
        ov_model = ov.Core().read_model(xml)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelDirError(f"{xml}: OpenVINO cannot read it ({first}); {again}") from None
    shape = ov_model.inputs[0].get_partial_shape()
    if len(shape) != 1 + len(meta["input_shape"]) or \
            [d.get_length() if d.is_static else None for d in shape][1:] != meta["input_shape"]:
        raise ModelDirError(f"{xml}: input shape {shape} does not match metadata.json's "
                            f"input_shape {meta['input_shape']}; {again}")
    return _openvino(ov_model, None, "openvino-int8", threads)


def calibration_images(data: str | os.PathLike, count: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Up to `count` training images (a fixed random subset), never the held-out test file."""
    from .data import TRAIN_FILE, load_signs

    path = Path(data)
    if path.is_dir():
        path = path / TRAIN_FILE
    import h5py

    if path.is_file() and h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            if "test_set_x" in f:
                raise DataError(f"{path}: a held-out test file; calibration uses training "
                                f"images only (the directory's {TRAIN_FILE})")
    signs = load_signs(path)
    pick = np.random.default_rng(0).permutation(len(signs))[:count]
    return signs.x[np.sort(pick)]


def quantize(model_dir: str | os.PathLike, data: str | os.PathLike,
             count: int = CALIBRATION_IMAGES) -> dict[str, Any]:
    """Post-training int8 quantization (NNCF) into the model directory, calibrated on at most
    `count` training images; `--backend openvino-int8` then serves it."""
    import nncf
    import openvino as ov

    from .images import to_model_input
    from .modeldir import load_model_dir

    if count < 1:
        raise UserError(f"--images {count}: expected a positive number of calibration images")
    model_dir = Path(model_dir)
    model, meta = load_model_dir(model_dir)
    images = calibration_images(data, count)
    if list(images.shape[1:]) != meta["input_shape"]:
        raise DataError(f"{data}: images are {list(images.shape[1:])}, the model expects "
                        f"{meta['input_shape']}")
    dataset = nncf.Dataset(list(images), lambda img: to_model_input(img[None]))
    q = nncf.quantize(_convert(model, meta), dataset, subset_size=len(images))
    tmp = model_dir / ".openvino-int8.tmp.xml"
    ov.save_model(q, tmp)  # writes the .xml and a .bin beside it
    info = {"calibration": str(Path(data).absolute()), "images": int(len(images)),
            "model_sha256": _keras_digest(model_dir), "nncf": nncf.__version__,
            "openvino": ov.__version__}
    tmp.with_suffix(".bin").replace(model_dir / INT8_FILE.replace(".xml", ".bin"))
    tmp.replace(model_dir / INT8_FILE)
    (model_dir / INT8_META).write_text(json.dumps(info, indent=2) + "\n")
    return info
