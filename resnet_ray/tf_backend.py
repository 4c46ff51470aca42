"""Ray Train's TensorFlow backend for the project's trainer: the same TF_CONFIG on every worker
as `ray.train.tensorflow.TensorflowConfig` (a `TensorflowTrainer` is a `DataParallelTrainer`
with that config), from a module that does not import TensorFlow.

Ray's own config and trainer live in a package whose `__init__` imports TensorFlow, so a Tune
trial that builds the trainer and the Train controller, which only pass addresses around,
would each spend seconds importing it before any worker starts (docs/performance.md,
"What the defaults do"). The imports below are those of Ray 2.60's `ray/train/tensorflow/config.py`
(pinned in pyproject.toml); check them against it when Ray is upgraded.
"""

from __future__ import annotations

import json
import os

import ray
from ray._common.network_utils import build_address
from ray.train._internal.utils import get_address_and_port
from ray.train.backend import Backend, BackendConfig
from ray.train.v2._internal.util import TrainingFramework


def _worker_url() -> str:
    return build_address(*get_address_and_port())


def _set_tf_config(worker_addresses: list[str], index: int) -> None:
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": worker_addresses},
                                          "task": {"type": "worker", "index": index}})
    os.environ["TF_USE_LEGACY_KERAS"] = "1"


class _TensorflowBackend(Backend):
    def on_start(self, worker_group, backend_config) -> None:
        urls = worker_group.execute(_worker_url)
        ray.get([worker_group.execute_single_async(i, _set_tf_config,
                                                   worker_addresses=urls, index=i)
                 for i in range(len(worker_group))])


class TensorflowConfig(BackendConfig):
    """MultiWorkerMirroredStrategy's cluster description, set on every worker at start."""

    @property
    def backend_cls(self):
        return _TensorflowBackend

    @property
    def framework(self):
        return TrainingFramework.TENSORFLOW
