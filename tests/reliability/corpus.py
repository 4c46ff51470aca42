"""A generated corpus of malformed (and oddly formed but valid) HTTP requests to /predict.

Each case is (httpx request kwargs, expected status, fragment of the error or None). A 200 case
also says which image bytes the answer must match, so that "correct 200" is checked against
the same decoding run locally.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class Case:
    request: dict[str, Any]
    status: int
    fragment: str | None = None
    image: bytes | None = None      # for a 200: the bytes whose local prediction must match
    instances: list | None = None   # for a 200 with JSON: the arrays


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _raw(data: bytes, mime: str) -> dict:
    return {"content": data, "headers": {"content-type": mime}}


def _json_bytes(text: bytes) -> dict:
    return {"content": text, "headers": {"content-type": "application/json"}}


def build(image: np.ndarray, max_body_bytes: int, max_instances: int) -> dict[str, Case]:
    """The corpus for a model of input image.shape; image is one valid uint8 photo."""
    h, w, _ = image.shape
    rgb = Image.fromarray(image)
    png, jpeg = _encode(rgb, "PNG"), _encode(rgb, "JPEG", quality=95)
    inst = image.astype(int).tolist()

    sixteen = Image.fromarray(image[..., 0].astype(np.uint16) * 257)  # mode I;16
    frames = [Image.fromarray(np.roll(image, k, axis=1)) for k in (0, 9, 18)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=80,
                   loop=0)
    exif = rgb.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    rotated = _encode(rgb, "JPEG", quality=95, exif=exif.tobytes())
    big = Image.fromarray(np.kron(image, np.ones((8, 8, 1), np.uint8)))

    cases = {
        # ---- bodies that are not a usable image -------------------------------------
        "empty body": Case(_raw(b"", "image/png"), 400, "empty"),
        "text as jpeg": Case(_raw(b"hello world", "image/jpeg"), 400, "not a readable image"),
        "truncated jpeg": Case(_raw(jpeg[:300], "image/jpeg"), 400, "truncated"),
        "truncated png": Case(_raw(png[: len(png) // 2], "image/png"), 400, "image"),
        "png header only": Case(_raw(png[:8], "image/png"), 400, "image"),
        "random bytes": Case(_raw(np.random.default_rng(0).bytes(4096), "image/png"), 400,
                             "not a readable image"),
        "decompression bomb": Case(_raw(_encode(Image.new("1", (20000, 20000)), "PNG"),
                                        "image/png"), 400, "limit"),
        "over the body limit": Case(_raw(b"\0" * (max_body_bytes + 1), "image/png"), 413,
                                    "over the limit"),
        # ---- content types ---------------------------------------------------------------
        "text/plain": Case(_raw(b"digits please", "text/plain"), 415, "content type"),
        "no content type": Case({"content": png, "headers": {"content-type": ""}}, 415,
                                "content type"),
        "form-urlencoded": Case({"data": {"file": "x"}}, 415, "content type"),
        # ---- multipart ---------------------------------------------------------------------
        "wrong multipart field": Case({"files": {"image": ("x.png", png, "image/png")}}, 400,
                                      "field 'file'"),
        "two files": Case({"files": [("file", ("a.png", png, "image/png")),
                                     ("file", ("b.png", png, "image/png"))]}, 400,
                          "more than one file"),
        "empty multipart file": Case({"files": {"file": ("x.png", b"", "image/png")}}, 400,
                                     "empty"),
        "multipart without boundary": Case(_raw(b"--x\r\n\r\n", "multipart/form-data"), 400,
                                           None),
        "multipart text field only": Case({"data": {"file": "not a file"},
                                           "files": {"other": ("o.txt", b"o", "text/plain")}},
                                          400, "field 'file'"),
        # ---- JSON ------------------------------------------------------------------------
        "invalid json": Case(_json_bytes(b"{not json"), 400, "not valid JSON"),
        "json not utf-8": Case(_json_bytes(b'{"instances": "\xff\xfe"}'), 400, "JSON"),
        "json array body": Case({"json": [inst]}, 400, "'instances'"),
        "no instances key": Case({"json": {"images": [inst]}}, 400, "'instances'"),
        "instances null": Case({"json": {"instances": None}}, 400, "non-empty list"),
        "zero-length instances": Case({"json": {"instances": []}}, 400, "non-empty"),
        "too many instances": Case({"json": {"instances": [inst] * (max_instances + 1)}},
                                   413, "limit"),
        "10000 instances": Case({"json": {"instances": [[[[0, 0, 0]]]] * 10000}}, 413, "limit"),
        "wrong depth (2)": Case({"json": {"instances": [image[..., 0].tolist()]}}, 400,
                                "shape"),
        "wrong depth (4)": Case({"json": {"instances": [[inst]]}}, 400, "shape"),
        "ragged rows": Case({"json": {"instances": [inst[:-1] + [inst[-1][:-1]]]}}, 400,
                            "instances[0]"),
        "wrong size": Case({"json": {"instances": [image[:-1].tolist()]}}, 400, "shape"),
        "two channels": Case({"json": {"instances": [image[..., :2].tolist()]}}, 400, "shape"),
        "strings for numbers": Case({"json": {"instances": [np.full((h, w, 3), "7").tolist()]}},
                                    400, "JSON numbers"),
        "booleans for numbers": Case({"json": {"instances": [np.full((h, w, 3), True).tolist()]}},
                                     400, "JSON numbers"),
        "null pixel": Case({"json": {"instances": [_with(inst, None)]}}, 400, "instances[0]"),
        "object pixel": Case({"json": {"instances": [_with(inst, {"r": 1})]}}, 400,
                             "instances[0]"),
        "NaN": Case(_json_bytes(b'{"instances": [[[NaN]]]}'), 400, "NaN"),
        "Infinity": Case(_json_bytes(b'{"instances": [[[Infinity]]]}'), 400, "Infinity"),
        "huge integer": Case(_json_bytes(json.dumps(
            {"instances": [_with(inst, 10 ** 400)]}).encode()), 400, "instances[0]"),
        "negative pixel": Case({"json": {"instances": [_with(inst, -1)]}}, 400, "0 to 255"),
        "pixel over 255": Case({"json": {"instances": [_with(inst, 256)]}}, 400, "0 to 255"),
        "deeply nested": Case(_json_bytes(b'{"instances": ' + b"[" * 100000 + b"]" * 100000
                                          + b"}"), 400, None),
        "base64 string instance": Case({"json": {"instances": ["iVBORw0KGgo="]}}, 400,
                                       "instances[0]"),
        # ---- valid, if unusual: a correct 200 --------------------------------------------
        "1x1 image": Case(_raw(_encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
                               "image/png"), 200,
                          image=_encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")),
        "16-bit png": Case(_raw(_encode(sixteen, "PNG"), "image/png"), 200,
                           image=_encode(sixteen, "PNG")),
        "animated gif": Case(_raw(gif.getvalue(), "image/gif"), 200, image=gif.getvalue()),
        "cmyk jpeg": Case(_raw(_encode(rgb.convert("CMYK"), "JPEG"), "image/jpeg"), 200,
                          image=_encode(rgb.convert("CMYK"), "JPEG")),
        "exif-rotated jpeg": Case(_raw(rotated, "image/jpeg"), 200, image=rotated),
        "rgba png": Case(_raw(_encode(rgb.convert("RGBA"), "PNG"), "image/png"), 200,
                         image=_encode(rgb.convert("RGBA"), "PNG")),
        "grayscale png": Case(_raw(_encode(rgb.convert("L"), "PNG"), "image/png"), 200,
                              image=_encode(rgb.convert("L"), "PNG")),
        "large photo": Case(_raw(_encode(big, "JPEG"), "image/jpeg"), 200,
                            image=_encode(big, "JPEG")),
        "png sent as image/jpeg": Case(_raw(png, "image/jpeg"), 200, image=png),
        "octet-stream": Case(_raw(png, "application/octet-stream"), 200, image=png),
        "float pixels": Case({"json": {"instances": [(image + 0.25).tolist()]}}, 200,
                             instances=[image + 0.25]),
    }
    return cases


def _with(inst: list, value) -> list:
    """A copy of the nested pixel list with one value replaced."""
    out = json.loads(json.dumps(inst))
    out[0][0][0] = value
    return out
