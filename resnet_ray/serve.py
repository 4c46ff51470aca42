"""Ray Serve deployment: an exported model behind a FastAPI ingress, with batched prediction.

One class: each replica loads the model directory once, decodes and checks every request
itself (the same preprocessing as `resnet-ray predict`), and sends single images to a batcher
(batching.py), so that concurrent requests share one forward pass. BatchNormalization runs in
inference mode, so a prediction never depends on the images it shared a batch with.

A replica serves one version of a repository and changes it in place
(resnet_ray/serve_versions.py); every answer names the version that computed it
(`model_version`, and the header X-Model-Version). The Open Inference Protocol and TF
Serving's REST routes are resnet_ray/serve_protocols.py.
"""


import asyncio
import os
import time
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import ray
from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from . import testhooks
from .batching import Batcher
from .errors import UserError
from .images import ImageError, decode_image
from .instances import HTTPError, parse_instances
from .predict import interpret
from .repository import is_plain, resolve as resolve_version
from .runtime import worker_env_vars
from .serve_http import api, error, headers
from .serve_protocols import ProtocolHandlers
from .serve_versions import Live, VersionedModel

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_INSTANCES = 256
DEFAULT_USER_CONFIG = {"max_batch_size": 16, "batch_wait_timeout_s": 0.01}
# user_config keys besides the batcher's: the repository version to serve (None: the one the
# replica started with).
USER_CONFIG_KEYS = {*DEFAULT_USER_CONFIG, "model_version"}


@serve.deployment(
    ray_actor_options={"num_cpus": 1, "runtime_env": {"env_vars": worker_env_vars()}},
    # Batches only fill when a replica may hold at least max_batch_size requests (ray#43288).
    max_ongoing_requests=32,
    # Past this many waiting requests the proxy answers 503 at once instead of queueing.
    max_queued_requests=64,
    user_config=DEFAULT_USER_CONFIG,
    health_check_period_s=10,
    # One log line per request costs the replica CPU that predictions need; `--access-log` or
    # the Serve config's logging_config turns it back on.
    logging_config={"enable_access_log": False},
)
@serve.ingress(api)
class DigitService(ProtocolHandlers, VersionedModel):
    def __init__(self, model_dir: str, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 max_instances: int = DEFAULT_MAX_INSTANCES, backend: str = "auto",
                 threads: int | None = None, version: int | None = None, _gate=None):
        self.source, self.backend, self.threads = str(model_dir), backend, threads
        # Loaded by the first reconfigure(), which Serve calls before the replica takes
        # requests: user_config may name the version to start with.
        self.live: Live | None = None
        self.wanted: int | None = version
        self.refusal: dict[str, Any] | None = None  # the last version refused, and why
        self.max_body_bytes, self.max_instances = int(max_body_bytes), int(max_instances)
        self.batch_sizes: Counter[int] = Counter()
        self.user_config = dict(DEFAULT_USER_CONFIG)
        self.started = time.time()
        # /metadata is answered by one replica: say which, and where (its batch counts are
        # that replica's, and on a cluster this shows how requests spread over nodes).
        context = serve.get_replica_context()
        self.replica = {"id": context.replica_id.unique_id,
                        "node_id": ray.get_runtime_context().get_node_id(),
                        "pid": os.getpid()}
        self._app, self._board = context.app_name, None
        self._gate = _gate  # test-only (testhooks.pass_gate)
        self._active = 0  # /predict requests this replica is working on
        self._decided = 0  # of those, the ones past reading and decoding (batched or alone)
        self.batcher = Batcher(self._infer, DEFAULT_USER_CONFIG["max_batch_size"],
                               DEFAULT_USER_CONFIG["batch_wait_timeout_s"],
                               coming=lambda: self._active - self._decided)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batch size and wait, and the repository version, change with `serve deploy`
        without restarting replicas. A new version loads in the background: this returns at
        once (the replica is out of routing while it runs) and never raises for a version
        (Serve would restart the replica in a loop); a version that cannot serve is refused."""
        cfg = {**DEFAULT_USER_CONFIG, **(user_config or {})}
        unknown = sorted(set(cfg) - USER_CONFIG_KEYS)
        if unknown:
            raise ValueError(f"user_config: unknown key {unknown[0]!r}; expected "
                             f"{sorted(USER_CONFIG_KEYS)}")
        size, wait = int(cfg["max_batch_size"]), float(cfg["batch_wait_timeout_s"])
        if size < 1 or not 0 <= wait <= 10:
            raise ValueError("user_config: max_batch_size must be >= 1 and "
                             "batch_wait_timeout_s between 0 and 10")
        self.batcher.max_batch_size, self.batcher.wait_s = size, wait
        self.user_config = {"max_batch_size": size, "batch_wait_timeout_s": wait}
        wanted = cfg.get("model_version")
        if wanted is not None:
            self.user_config["model_version"] = wanted
        self._want(wanted)

    # ------------------------------------------------------------------ HTTP routes

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> str:
        return resources.files("resnet_ray").joinpath("index.html").read_text()

    @api.get("/healthz", responses={503: {}})
    async def healthz(self):
        # A load balancer's probe: 200 only from a replica that can answer predictions.
        live = self.live
        if live is None:
            return error(503, "model not loaded")
        return {"status": "ok", "model": live.model_dir, "model_version": live.version,
                "uptime_s": round(time.time() - self.started, 1)}

    @api.get("/metadata")
    async def metadata(self) -> dict[str, Any]:
        live = self.live
        return {"classes": self.classes, "input_shape": list(self.shape),
                "model_version": live.version, "model_dir": live.model_dir,
                "wanted_version": self.wanted, "refusal": self.refusal,
                "backend": live.predictor.description,
                "metrics": live.meta.get("metrics", {}), "config": live.meta.get("config", {}),
                "versions": live.meta.get("versions", {}), "user_config": self.user_config,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "max_body_bytes": self.max_body_bytes, "max_instances": self.max_instances,
                "replica": self.replica}

    @api.post("/predict", responses={400: {}, 413: {}, 415: {}, 503: {}})
    async def predict(self, request: Request):
        """One image (multipart `file` or raw image bytes) or JSON {"instances": [...]}."""
        self._active += 1
        try:
            await testhooks.pass_gate(self._gate)
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            body = await self._read_body(request)
            if ctype == "application/json":
                # Parsing a large body off the event loop keeps other requests moving.
                images = await asyncio.to_thread(parse_instances, body, self.shape,
                                                  self.max_instances)
                probs, version = await self._predict(images)
                return JSONResponse({"predictions": [self._answer(p) for p in probs],
                                     "model_version": version}, headers=headers(version))
            if ctype == "multipart/form-data":
                data = await self._multipart_file(request, body)
            elif ctype.startswith("image/") or ctype == "application/octet-stream":
                data = body
            else:
                raise HTTPError(415, f"content type {ctype or 'missing'!r}: expected an image "
                                     "(image/jpeg, image/png, ...), multipart/form-data with a "
                                     "field 'file', or application/json with 'instances'")
            if not data:
                raise HTTPError(400, "empty image: expected the bytes of a JPEG, PNG, ... file")
            try:
                image = await asyncio.to_thread(decode_image, data, self.shape[:2], "upload")
            except ImageError as exc:
                raise HTTPError(400, str(exc)) from None
            (probs,), version = await self._predict([image])
            return JSONResponse({**self._answer(probs), "model_version": version},
                                headers=headers(version))
        except HTTPError as exc:
            return error(exc.status, exc.message, self.live.version)
        finally:
            self._active -= 1

    async def _predict(self, images: list[np.ndarray]) -> tuple[list[np.ndarray], int | None]:
        """(probabilities per image, the version that computed them). A request of a full
        batch or more is its own batch; smaller ones share batches. A request alone on the
        replica goes to the model at once (the batcher sees that no other request is
        coming)."""
        self._decided += 1
        try:
            if len(images) >= self.batcher.max_batch_size:
                answers = await self._infer(images)
            else:
                answers = await asyncio.gather(*(self.batcher(img) for img in images))
                if len({version for _, version in answers}) > 1:  # a swap came in between:
                    answers = await self._infer(images)           # one version per answer
            return [p for p, _ in answers], answers[0][1]
        finally:
            self._decided -= 1

    # ---------------------------------- the Open Inference Protocol and TF Serving's REST API
    # (what they do: serve_protocols.py; one method per path, Serve binds one route each)

    @api.get("/v2")
    async def v2_server(self):
        return self.v2_server_metadata()

    @api.get("/v2/health/live")
    async def v2_live(self):
        return {}

    @api.get("/v2/health/ready")
    async def v2_ready(self):
        return self.v2_ready_answer()

    @api.get("/v2/models/{name}")
    async def v2_model(self, name: str):
        return await self.v2_model_answer(name, None)

    @api.get("/v2/models/{name}/versions/{version:int}")
    async def v2_model_version(self, name: str, version: int):
        return await self.v2_model_answer(name, version)

    @api.get("/v2/models/{name}/ready")
    async def v2_model_ready(self, name: str):
        return await self.v2_model_ready_answer(name, None)

    @api.get("/v2/models/{name}/versions/{version:int}/ready")
    async def v2_model_version_ready(self, name: str, version: int):
        return await self.v2_model_ready_answer(name, version)

    @api.post("/v2/models/{name}/infer")
    async def v2_infer(self, request: Request, name: str):
        return await self.v2_infer_answer(request, name, None)

    @api.post("/v2/models/{name}/versions/{version:int}/infer")
    async def v2_infer_version(self, request: Request, name: str, version: int):
        return await self.v2_infer_answer(request, name, version)

    @api.post("/v1/models/{name}:predict")
    async def v1_predict(self, request: Request, name: str):
        return await self.v1_predict_answer(request, name, None)

    @api.post("/v1/models/{name}/versions/{version:int}:predict")
    async def v1_predict_version(self, request: Request, name: str, version: int):
        return await self.v1_predict_answer(request, name, version)

    @api.get("/v1/models/{name}")
    async def v1_status(self, name: str):
        return await self.v1_status_answer(name, None)

    @api.get("/v1/models/{name}/versions/{version:int}")
    async def v1_status_version(self, name: str, version: int):
        return await self.v1_status_answer(name, version)

    @api.get("/v1/models/{name}/metadata")
    async def v1_metadata(self, name: str):
        return await self.v1_metadata_answer(name)

    # ------------------------------------------------------------------ helpers

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise HTTPError(400, f"content-length {declared!r} is not a number")
            if int(declared) > self.max_body_bytes:
                raise HTTPError(413, f"request body of {int(declared):,} bytes is over the "
                                     f"limit of {self.max_body_bytes:,}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise HTTPError(413, f"request body is over the limit of "
                                     f"{self.max_body_bytes:,} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        request._body = body  # lets request.form() parse what was already read
        if not body:
            raise HTTPError(400, "empty request body: expected an image or JSON instances")
        return body

    async def _multipart_file(self, request: Request, body: bytes) -> bytes:
        try:
            form = await request.form(max_files=2, max_fields=10)
        except (MultiPartException, StarletteHTTPException) as exc:
            detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or exc
            raise HTTPError(400, f"malformed multipart body ({detail})") from None
        files = [v for v in form.getlist("file") if hasattr(v, "read")]
        if not files:
            other = [k for k in form.keys()]
            raise HTTPError(400, f"multipart body has no file in field 'file' (fields: "
                                 f"{other or 'none'})")
        if len(files) > 1 or sum(hasattr(v, "read") for _, v in form.multi_items()) > 1:
            raise HTTPError(400, "multipart body has more than one file; send one image per "
                                 "request or use JSON instances for a batch")
        return await files[0].read()

    def _answer(self, probs: np.ndarray) -> dict[str, Any]:
        p = interpret(probs, self.classes)
        return {"digit": p.digit, "found": p.found, "probability": p.probability,
                "probabilities": p.probabilities, "classes": self.classes}


def build_app(args: dict[str, Any]):
    """Serve application builder (`import_path: resnet_ray.serve:build_app` with `args`).
    Serve calls a builder with the args dict alone: one parameter, nothing else."""
    return application(args)


def application(args: dict[str, Any], num_replicas: int | None = None,
                access_log: bool = False):
    """The app for args (see build_app), optionally with a replica count and access log."""
    from .backends import check_backend
    from .modeldir import check_model_file, read_metadata

    args = dict(args or {})
    model_dir = args.pop("model_dir", None) or os.environ.get("RESNET_RAY_MODEL")
    if not model_dir:
        raise UserError("model_dir: expected the exported model directory or repository to "
                        "serve (args.model_dir in the Serve config, or RESNET_RAY_MODEL)")
    model_dir = str(Path(model_dir).absolute())
    # Fail here, once, rather than in every replica. A repository's replicas load the
    # version args.version or user_config.model_version name, else the newest.
    served, _ = resolve_version(model_dir, args.get("version"))
    read_metadata(served)
    check_backend(args.get("backend", "auto"))
    known = {"max_body_bytes", "max_instances", "backend", "threads", "version", "_gate"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise UserError(f"args: unknown key {unknown[0]!r}; expected model_dir or "
                        f"{sorted(known - {'_gate'})}")
    if is_plain(model_dir) or args.get("version") is not None:
        check_model_file(served)
    options = {"num_replicas": num_replicas} if num_replicas else {}
    if access_log:
        options["logging_config"] = {"enable_access_log": True}
    return DigitService.options(**options).bind(model_dir, **args)
