"""JSON prediction requests: `{"instances": [HxWx3 arrays of 0-255]}` to uint8 images.

Most bodies are what `json.dumps` or `JSON.stringify` write for integer pixels; those are read
straight into numpy, several times faster than building Python lists first. Anything else
(floats, other spacing, or a malformed body) goes through `json` and the per-instance checks,
which name what is wrong.
"""

from __future__ import annotations

import json
import re

import numpy as np


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def parse_instances(body: bytes, shape: tuple[int, ...], max_instances: int
                    ) -> list[np.ndarray]:
    """The request's images, or an HTTPError (400 bad JSON or pixels, 413 too many images)."""
    fast = _integer_pixels(body, shape)
    if fast is not None and len(fast) <= max_instances:
        return list(fast)
    try:
        doc = json.loads(body, parse_constant=_reject_constant)
    except HTTPError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"body is not valid JSON ({exc})") from None
    except RecursionError:
        raise HTTPError(400, "body is not valid JSON (nested too deeply)") from None
    if not isinstance(doc, dict) or "instances" not in doc:
        raise HTTPError(400, "JSON body must be an object with key 'instances': a list of "
                             f"{'x'.join(map(str, shape))} pixel arrays")
    instances = doc["instances"]
    if not isinstance(instances, list) or not instances:
        raise HTTPError(400, "'instances' must be a non-empty list")
    if len(instances) > max_instances:
        raise HTTPError(413, f"'instances' has {len(instances)} images; the limit is "
                             f"{max_instances} per request")
    whole = None if b"true" in body or b"false" in body else _valid_array(instances, shape)
    if whole is not None:
        return list(whole)
    return [_one_instance(i, inst, shape) for i, inst in enumerate(instances)]


def _reject_constant(name: str):
    raise HTTPError(400, f"JSON contains {name}; expected finite pixel values 0-255")


def _one_instance(i: int, inst, shape: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.asarray(inst, dtype=np.float64)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise HTTPError(400, f"instances[{i}]: expected nested lists of numbers of "
                             f"shape {list(shape)}") from None
    if arr.shape != shape:
        raise HTTPError(400, f"instances[{i}]: shape {list(arr.shape)}, expected "
                             f"{list(shape)} (height, width, RGB)")
    # numpy would also take "12" or true as a number; JSON numbers only.
    if not all(type(v) in (int, float) for row in inst for px in row for v in px):
        raise HTTPError(400, f"instances[{i}]: pixel values must be JSON numbers, "
                             "not strings, booleans or null")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255:
        raise HTTPError(400, f"instances[{i}]: pixel values must be finite numbers "
                             "from 0 to 255")
    return np.rint(arr).astype(np.uint8)


def _valid_array(instances: list, shape: tuple[int, ...]) -> np.ndarray | None:
    """All instances as one uint8 array when every value is a valid pixel, else None (the
    per-instance checks then name what is wrong). Booleans, which numpy would take as 0 and
    1, are ruled out by the caller."""
    try:
        arr = np.array(instances)
    except (ValueError, TypeError, OverflowError, RecursionError):
        return None
    if arr.dtype.kind not in "iuf" or arr.shape[1:] != shape:
        return None
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255:
        return None
    return np.rint(arr).astype(np.uint8)


_HEAD = re.compile(rb'[ \t\n\r]*\{[ \t\n\r]*"instances"[ \t\n\r]*:[ \t\n\r]*')


def _integer_pixels(body: bytes, shape: tuple[int, ...]) -> np.ndarray | None:
    """The images when the body is exactly `{"instances": [...]}` of integer pixels 0-255 in
    one of the two usual layouts (no spaces, or `json.dumps`'s ", "), else None. Never accepts
    a body that `json` would refuse or read differently."""
    head = _HEAD.match(body)
    tail = body.rstrip(b" \t\n\r")
    if head is None or not tail.endswith(b"}"):
        return None
    text = tail[head.end():-1].rstrip(b" \t\n\r")
    skeleton = text.translate(None, b"0123456789")
    for sep in (b",", b", "):
        pixel = b"[" + sep * (shape[-1] - 1) + b"]"
        for size in reversed(shape[:-1]):
            pixel = b"[" + sep.join([pixel] * size) + b"]"
        count = (len(skeleton) - 2 + len(sep)) // (len(pixel) + len(sep))
        if count >= 1 and skeleton == b"[" + sep.join([pixel] * count) + b"]":
            break
    else:
        return None
    # What is left between the separators is one run of one to three digits per pixel value.
    chars = np.frombuffer(text.translate(None, b"[]"), np.uint8)
    commas = np.flatnonzero(chars == ord(","))
    ends = np.append(commas, len(chars))
    lengths = ends.copy()
    lengths[1:] -= commas + len(sep)
    if lengths.min() < 1 or lengths.max() > 3:
        return None
    # Each space must follow its comma directly (a space between digits is not JSON).
    if sep == b", " and not (chars[commas + 1] == ord(" ")).all():
        return None
    digits = chars - np.uint8(ord("0"))
    digits *= digits < 10  # separators count as 0 below; two more zeros in front of the first value
    padded = np.zeros(len(digits) + 2, np.uint16)
    padded[2:] = digits
    ends += 2
    if ((padded[ends - lengths] == 0) & (lengths > 1)).any():  # a leading zero is not JSON
        return None
    values = padded[ends - 1] + padded[ends - 2] * np.uint16(10) + \
        padded[ends - 3] * np.uint16(100) * (lengths > 2)
    if values.max() > 255:
        return None
    return values.astype(np.uint8).reshape(count, *shape)
