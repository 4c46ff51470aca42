"""What the routes of the protocols standard clients speak do, mixed into the replica class:
the Open Inference Protocol ("v2") and TF Serving's REST API ("v1"); their request and answer
shapes are resnet_ray/protocols.py."""

import asyncio
import inspect

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from . import __version__, protocols
from .instances import HTTPError
from .serve_http import error, headers


class ProtocolHandlers:
    """What the replica's v2 and v1 routes do (the routes themselves are declared on the
    replica class: Serve binds only its own methods to routes). Uses the replica's live
    model, _read_body, _predict and its request counters."""

    async def _about(self, name: str, version: int | None, answer):
        """`answer()` (awaited if it must be) for the model `name` (at `version`, if named),
        or a 404 saying what is served."""
        live = self.live.version
        if name != protocols.MODEL:
            return error(404, f"no model {name!r}; this server serves {protocols.MODEL!r}", live)
        if version is not None and version != live:
            return error(404, f"model {name!r} version {version} is not being served; the live "
                              f"version is {live}", live)
        result = answer()
        return await result if inspect.isawaitable(result) else result

    async def _infer_request(self, request: Request, read, answer):
        """Read a protocol's request off the event loop, predict, and answer; a bad request
        is a 4xx naming what was wrong."""
        self._active += 1
        try:
            body = await self._read_body(request)
            images, asked = await asyncio.to_thread(read, body)
            probs, served = await self._predict(images)
            return answer(probs, served, asked)
        except HTTPError as exc:
            return error(exc.status, exc.message, self.live.version)
        finally:
            self._active -= 1

    def v2_server_metadata(self):
        return {"name": "resnet-ray", "version": __version__,
                "extensions": ["binary_tensor_data"]}

    def v2_ready_answer(self):
        return {} if self.live is not None else error(503, "model not loaded")

    async def v2_model_answer(self, name: str, version: int | None):
        return await self._about(name, version, lambda: protocols.v2_model_metadata(
            self.live.version, self.shape, self.classes))

    async def v2_model_ready_answer(self, name: str, version: int | None):
        return await self._about(name, version, dict)

    async def v2_infer_answer(self, request: Request, name: str, version: int | None):
        """Open Inference Protocol inference, JSON or binary tensors."""
        def read(body):
            return protocols.v2_read(body, request.headers.get(protocols.BINARY_HEADER),
                                     self.shape, self.max_instances)

        def answer(probs, served, doc):
            content, fields = protocols.v2_answer(doc, probs, self.classes, served)
            return Response(content, headers={**fields, **headers(served)})

        return await self._about(name, version,
                                 lambda: self._infer_request(request, read, answer))

    async def v1_predict_answer(self, request: Request, name: str, version: int | None):
        """TF Serving's REST predict: rows (`instances`) or columns (`inputs`)."""
        def answer(probs, served, columnar):
            return JSONResponse(protocols.v1_answer(probs, columnar, served),
                                headers=headers(served))

        return await self._about(name, version, lambda: self._infer_request(
            request, lambda body: protocols.v1_read(body, self.shape, self.max_instances),
            answer))

    async def v1_status_answer(self, name: str, version: int | None):
        return await self._about(name, version, lambda: protocols.v1_status(self.live.version))

    async def v1_metadata_answer(self, name: str):
        return await self._about(name, None, lambda: protocols.v1_metadata(
            self.live.version, self.shape, self.classes))
