"""A replica's live model and its version changes (mixed into the replica class).

From a repository of numbered versions (resnet_ray/repository.py) a replica serves one
version and changes it in place when `user_config.model_version` changes: `reconfigure()`
only records the wanted version (Serve takes a replica out of routing while it runs, and
restarts one whose `reconfigure()` raises), a thread loads and checks it beside the live one,
and the next batch after the swap uses it. A version that fails a check is refused; the live
one keeps answering. Each replica reports what it serves to the application's board, which
`resnet-ray deploy` reads (resnet_ray/rollout.py).
"""

import asyncio
import dataclasses
import logging
import os
import threading
import time
from typing import Any

import numpy as np

from .errors import UserError
from .images import to_model_input
from .repository import resolve as resolve_version
from .serve_http import live_version

logger = logging.getLogger("ray.serve")


@dataclasses.dataclass(frozen=True)
class Live:
    """What a replica answers with; replaced as a whole, between batches."""
    predictor: Any
    meta: dict[str, Any]
    model_dir: str
    version: int | None  # None: a plain model directory


class VersionedModel:
    """The live model of a replica (`self.live`) and the version it wants (`self.wanted`);
    the replica class sets source, backend, threads, replica and _app."""

    def _want(self, wanted: Any) -> None:
        """reconfigure()'s part: start on `wanted` (None: as the app says, else the newest),
        or load it in the background beside the live version."""
        if self.live is None:  # starting: not routable yet, and nothing to keep serving
            self._start(self.wanted if wanted is None else wanted)
        elif wanted is not None and wanted != self.wanted:
            self.wanted = wanted
            threading.Thread(target=self._roll_to, args=(wanted,), daemon=True,
                             name=f"load-version-{wanted}").start()

    def _start(self, version: int | None) -> None:
        self.live = self._load(*resolve_version(self.source, version))
        self.wanted = live_version[0] = self.live.version
        self.classes = list(self.live.meta["classes"])
        self.shape = tuple(self.live.meta["input_shape"])
        self._report()

    def _report(self) -> None:
        """Tell the application's board what this replica serves (`resnet-ray deploy` reads
        it); fire and forget."""
        from . import rollout

        try:
            if self._board is None:
                self._board = rollout.board(self._app, create=True)
            self._board.report.remote(self.replica["id"], {"version": self.live.version,
                                                           "refusal": self.refusal})
        except Exception as exc:  # deploy then waits for its timeout; serving goes on
            logger.warning(f"cannot report the served version: {exc}")

    def _load(self, model_dir: str, version: int | None) -> Live:
        from .backends import load_predictor

        predictor, meta = load_predictor(model_dir, self.backend, self.threads)
        return Live(predictor, meta, model_dir, version)

    def _roll_to(self, wanted: Any) -> None:
        """Load version `wanted`, check it against the live one, and swap it in; or refuse
        it, keeping the live one."""
        try:
            # The lowest CPU priority for this thread (Linux: per thread): the batches of the
            # live version go first, and the load takes the cycles they leave.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass
        try:
            if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
                raise UserError(f"model_version: expected a version number 1, 2, ..., got "
                                f"{wanted!r}")
            if self.live.version is None:
                raise UserError(f"{self.source}: a model directory, not a repository of "
                                f"numbered versions")
            new = self._load(*resolve_version(self.source, wanted))
            live = self.live
            for key in ("classes", "input_shape"):
                if list(new.meta[key]) != list(live.meta[key]):
                    raise UserError(f"version {wanted}: {key} {new.meta[key]} differ from the "
                                    f"live version {live.version}'s {live.meta[key]}")
            probe = new.predictor(to_model_input(np.zeros((1, *self.shape), np.uint8)))
            if probe.shape != (1, len(self.classes)) or not np.isfinite(probe).all():
                raise UserError(f"version {wanted}: predicts {probe.shape} or non-finite "
                                f"values for a blank image")
        except Exception as exc:  # a damaged file raises anything: refuse, never raise
            if self.wanted == wanted:
                self.refusal = {"version": wanted, "reason": str(exc)[:500],
                                "time": time.time()}
                self.wanted = self.live.version
            logger.warning(f"model version {wanted} refused: {exc}")
            self._report()
            return
        if self.wanted == wanted:  # not overtaken by a later reconfigure meanwhile
            self.live = new
            live_version[0] = new.version
            logger.info(f"now serving model version {wanted}")
            self._report()

    def check_health(self) -> None:
        if self.live is None:
            raise RuntimeError("model not loaded")

    async def _infer(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, int | None]]:
        """One model call on the live version at its start: (probabilities, version) each."""
        live = self.live
        self.batch_sizes[len(images)] += 1
        # In a thread, the conversion to the model's input too, so that the event loop keeps
        # taking requests for the next batch.
        probs = await asyncio.to_thread(lambda: live.predictor(to_model_input(np.stack(images))))
        return [(p, live.version) for p in probs]
