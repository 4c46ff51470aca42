"""The service's HTTP application: one FastAPI app whose routes the replica class and its
protocol mixin (resnet_ray/serve_protocols.py) define, its error shape, and the header that
names the model version on every answer."""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from . import __version__

VERSION_HEADER = "X-Model-Version"

# The version this process's replica serves, for the header of answers no route wrote
# (FastAPI's own 404s and 422s); a replica is a process of its own.
live_version: list[Any] = [None]

api = FastAPI(
    title="resnet-ray",
    version=__version__,
    description="Hand-sign digit prediction with a ResNet-50. POST an image (multipart field "
                "`file`, or raw bytes with an image content type) or JSON `{\"instances\": "
                "[...]}` of HxWx3 pixel arrays (0-255) to /predict. Errors come as "
                "`{\"error\": \"...\"}` with a 4xx status.")


def headers(version: int | None) -> dict[str, str]:
    return {} if version is None else {VERSION_HEADER: str(version)}


def error(status: int, message: str, version: int | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers(version))


@api.middleware("http")
async def _version_header(request: Request, call_next):
    response = await call_next(request)
    if VERSION_HEADER not in response.headers and live_version[0] is not None:
        response.headers[VERSION_HEADER] = str(live_version[0])
    return response
