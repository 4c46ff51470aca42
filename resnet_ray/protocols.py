"""The request and answer shapes of the protocols standard clients speak, apart from the
service: the Open Inference Protocol ("v2", KServe's, Triton's and Seldon's) with its binary
tensor extension, and TF Serving's REST API ("v1"). Each reader turns a request into uint8
images of the model's input shape or raises HTTPError (4xx) saying what was wrong; each writer
turns probabilities into the protocol's answer."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np

from .images import ImageError, decode_image
from .instances import HTTPError, parse_instances
from .predict import interpret

MODEL = "digits"
INPUT = "images"
OUTPUTS = ("probabilities", "digit")
V2_DTYPES = {"UINT8": np.uint8, "FP32": np.float32}
BINARY_HEADER = "inference-header-content-length"


# ------------------------------------------------------------------ Open Inference Protocol

def v2_model_metadata(version: int | None, shape: tuple[int, ...], classes: list[int]
                      ) -> dict[str, Any]:
    return {"name": MODEL, "versions": [] if version is None else [str(version)],
            "platform": "tensorflow_keras",
            "inputs": [{"name": INPUT, "datatype": "UINT8", "shape": [-1, *shape]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32",
                         "shape": [-1, len(classes)]},
                        {"name": "digit", "datatype": "INT64", "shape": [-1]}],
            "parameters": {"classes": list(classes)}}


def v2_read(body: bytes, header_length: str | None, shape: tuple[int, ...],
            max_instances: int) -> tuple[list[np.ndarray], dict[str, Any]]:
    """(images, the request's JSON) of an infer request, JSON tensors or binary ones."""
    if header_length is None:
        head, rest = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise HTTPError(400, f"Inference-Header-Content-Length {header_length!r}: "
                                 f"expected the JSON header's byte count, at most the body's "
                                 f"{len(body)}")
        head, rest = body[:int(header_length)], body[int(header_length):]
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise HTTPError(400, f"inference request is not valid JSON ({exc})") from None
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise HTTPError(400, f"'inputs': expected one input named {INPUT!r}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT:
        raise HTTPError(400, f"inputs[0].name {tensor.get('name')!r}: expected {INPUT!r}")
    dtype = V2_DTYPES.get(tensor.get("datatype"))
    if dtype is None:
        raise HTTPError(400, f"inputs[0].datatype {tensor.get('datatype')!r}: expected one "
                             f"of {sorted(V2_DTYPES)}")
    dims = tensor.get("shape")
    if not (isinstance(dims, list) and len(dims) == 4 and all(
            isinstance(d, int) and not isinstance(d, bool) for d in dims)
            and tuple(dims[1:]) == shape and dims[0] >= 1):
        expected = ", ".join(map(str, shape))
        raise HTTPError(400, f"inputs[0].shape {dims!r}: expected [N, {expected}]")
    if dims[0] > max_instances:
        raise HTTPError(413, f"inputs[0]: {dims[0]} images; the limit is {max_instances} per "
                             f"request")
    count = int(np.prod(dims))
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        expected = count * np.dtype(dtype).itemsize
        if size != expected or len(rest) != size:
            raise HTTPError(400, f"inputs[0].parameters.binary_data_size {size!r}: expected "
                                 f"{expected} bytes for shape {dims} {tensor['datatype']}, "
                                 f"and the body holds {len(rest)} after the JSON header")
        values = np.frombuffer(rest, dtype=dtype)
    else:
        if rest:
            raise HTTPError(400, "binary data after the JSON header but no "
                                 "parameters.binary_data_size on the input")
        try:
            values = np.asarray(tensor.get("data"), dtype=np.float64).reshape(-1)
        except (ValueError, TypeError, OverflowError, RecursionError):
            raise HTTPError(400, "inputs[0].data: expected numbers (flat or nested)") from None
        if values.size != count:
            raise HTTPError(400, f"inputs[0].data has {values.size} values; shape {dims} "
                                 f"needs {count}")
    if values.dtype == np.uint8:  # pixels as they are: nothing to check or round
        return list(values.reshape(dims)), doc
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 255:
        raise HTTPError(400, "inputs[0]: pixel values must be finite numbers from 0 to 255")
    images = np.rint(values).astype(np.uint8).reshape(dims)
    return list(images), doc


def v2_answer(doc: dict[str, Any], probs: list[np.ndarray], classes: list[int],
              version: int | None) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of an infer answer; outputs as binary data where the request asked.
    `digit` is -1 where no class is above 0.5 (the recipe's "can not find the number")."""
    p = np.stack(probs).astype(np.float32)
    digits = np.array([-1 if (d := interpret(row, classes).digit) is None else d for row in p],
                      dtype=np.int64)
    tensors = {"probabilities": ("FP32", p), "digit": ("INT64", digits)}
    asked = doc.get("outputs") or [{"name": name} for name in OUTPUTS]
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise HTTPError(400, "'outputs': expected a list of {\"name\": ...}")
    default_binary = bool((doc.get("parameters") or {}).get("binary_data_output", False))
    outputs, blobs = [], []
    for out in asked:
        name = out.get("name")
        if name not in tensors:
            raise HTTPError(400, f"outputs: {name!r} is not an output; expected one of "
                                 f"{list(OUTPUTS)}")
        datatype, array = tensors[name]
        entry = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if (out.get("parameters") or {}).get("binary_data", default_binary):
            data = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            entry["data"] = array.reshape(-1).tolist()
        outputs.append(entry)
    answer = {"model_name": MODEL, "outputs": outputs,
              "model_version": "" if version is None else str(version)}
    if "id" in doc:
        answer["id"] = doc["id"]
    head = json.dumps(answer).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream",
                                    "Inference-Header-Content-Length": str(len(head))}


# ------------------------------------------------------------------ TF Serving REST

def v1_read(body: bytes, shape: tuple[int, ...], max_instances: int
            ) -> tuple[list[np.ndarray], bool]:
    """(images, columnar) of a :predict request: {"instances": [...]} (row format) or
    {"inputs": ...} (columnar); an instance is a pixel array or {"b64": "<image file>"}."""
    if b'"b64"' not in body and b'"inputs"' not in body:
        return parse_instances(body, shape, max_instances), False
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise HTTPError(400, f"body is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or ("instances" in doc) == ("inputs" in doc):
        raise HTTPError(400, "JSON body must have one of 'instances' (rows) or 'inputs' "
                             "(columns)")
    columnar = "inputs" in doc
    items = doc["inputs"] if columnar else doc["instances"]
    if isinstance(items, dict):  # named columns: the one input
        if set(items) != {INPUT}:
            raise HTTPError(400, f"'inputs': expected the one input {INPUT!r}")
        items = items[INPUT]
    if not isinstance(items, list) or not items:
        raise HTTPError(400, "expected a non-empty list of images")
    if len(items) > max_instances:
        raise HTTPError(413, f"{len(items)} images; the limit is {max_instances} per request")
    images = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            if set(item) != {"b64"} or not isinstance(item["b64"], str):
                raise HTTPError(400, f"instance {i}: expected {{\"b64\": \"<base64 image "
                                     f"file>\"}} or a pixel array")
            try:
                data = base64.b64decode(item["b64"], validate=True)
                images.append(decode_image(data, shape[:2], f"instance {i}"))
            except (binascii.Error, ValueError):
                raise HTTPError(400, f"instance {i}: b64 is not base64") from None
            except ImageError as exc:
                raise HTTPError(400, str(exc)) from None
        else:
            images += parse_instances(json.dumps({"instances": [item]}).encode(), shape, 1)
    return images, columnar


def v1_answer(probs: list[np.ndarray], columnar: bool, version: int | None) -> dict[str, Any]:
    rows = [np.asarray(p, dtype=float).tolist() for p in probs]
    return {"outputs" if columnar else "predictions": rows, "model_version": version}


def v1_status(version: int | None) -> dict[str, Any]:
    return {"model_version_status": [{
        "version": "0" if version is None else str(version), "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]}


def v1_metadata(version: int | None, shape: tuple[int, ...], classes: list[int]
                ) -> dict[str, Any]:
    def tensor(dtype: str, dims: list[int]) -> dict[str, Any]:
        return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(d)} for d in dims]}}

    return {"model_spec": {"name": MODEL, "signature_name": "",
                           "version": "0" if version is None else str(version)},
            "metadata": {"signature_def": {"signature_def": {"serving_default": {
                "inputs": {INPUT: tensor("DT_UINT8", [-1, *shape])},
                "outputs": {"probabilities": tensor("DT_FLOAT", [-1, len(classes)])},
                "method_name": "tensorflow/serving/predict"}}},
                "classes": list(classes)}}
