"""The one typed training configuration: built by the CLI, sent to every worker, saved next to
every checkpoint and in every exported model's metadata. It is frozen: the driver resolves it
once into a plan (resnet_ray/plan.py) with `dataclasses.replace`, and nothing changes it after."""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import paths
from .errors import ConfigError

LR_SCHEDULES = ("constant", "cosine")
LR_SCALINGS = ("linear", "sqrt", "none")
ALLREDUCE_DTYPES = ("auto", "float32", "float16", "bfloat16")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
# resnet_ray.model.MODELS' names, here so that checking a config does not import TensorFlow.
MODEL_NAMES = ("resnet50", "tiny")


def default_storage() -> str:
    """runs/ in the directory the command runs in. Asked when a config is made, never at
    import: a Ray process that unpickles a config (Train's controller) may run in a
    directory that is gone."""
    return str(Path("runs").absolute())


def option(default=dataclasses.MISSING, *, help: str | None = None, group: str | None = None,
           choices: tuple | None = None, flag: bool = True, in_yaml: bool = True,
           searchable: bool = True, expected: str | None = None, default_factory=None,
           path=None):
    """A TrainConfig field with what the CLI, the YAML checks and the type checks need:
    `flag` makes it a --option, `in_yaml` allows it in a search-space file's train section,
    `searchable` in its search_space, `expected` words a type error's expected value, `path`
    is the resnet_ray.paths function its --option resolves a typed path with."""
    meta = {"help": help, "group": group, "choices": choices, "flag": flag,
            "in_yaml": in_yaml, "searchable": searchable and in_yaml, "expected": expected,
            "path": path}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


RECIPE = "training recipe"
COMMUNICATION = "data-parallel communication"


@dataclass(frozen=True)
class TrainConfig:
    data: str = option("", help="a folder (or s3://, gs://... URI) with one sub-folder of "
                               "photos per class, streamed by Ray Data; a directory with "
                               "train_signs.h5 and test_signs.h5; or the embedded photos: "
                               "builtin:sign-digits (digits 0-5) or builtin:sign-digits-10",
                       in_yaml=False, path=paths.data)
    # The digits of a folder's class sub-folders; the plan takes `classes` from the data.
    data_classes: str = option("", help="with a folder of photos: the class sub-folders to "
                                       "train on, such as 0,1,2,3,4,5 (default: every "
                                       "sub-folder named by a digit)", in_yaml=False)
    strict: bool = option(False, help="with a folder of photos: read every file before "
                                      "training and stop on any that is not a readable "
                                      "image (default: skip it with a warning)", in_yaml=False)
    keep_images: int = option(4096, help="with a folder of photos: keep a worker's share of "
                                         "the training photos, and the validation photos, "
                                         "decoded in memory after the first epoch when each "
                                         "is at most this many images (4096 at 64x64: 48 "
                                         "MiB); larger ones stream every epoch (0: always)",
                              in_yaml=False)
    model: str = option("resnet50", choices=MODEL_NAMES)
    epochs: int = option(20)
    batch_size: int = option(32, help="global batch")  # split evenly across workers
    lr: float = option(1e-3)
    # None: chosen from the cluster when the run's plan is made (resnet_ray/layout.py).
    num_workers: int | None = option(None, help="Ray Train workers; 0 trains in this "
                                     "process (default: one per node, or per GPU)")
    cpus_per_worker: int | None = option(None, help="default: all of a node's CPUs when "
                                         "--num-workers is left out too, else 1")
    use_gpu: bool = option(False, help="one GPU per worker, NCCL all-reduce")
    precision: str = option("auto", choices=PRECISIONS,
                            help="compute precision (Keras mixed-precision policy); auto: "
                                 "mixed_bfloat16 on CPUs with bfloat16 instructions "
                                 "(AVX512_BF16, AMX), mixed_float16 on GPUs, else float32")
    storage: str = option(help="where the run keeps its checkpoints: a local path or a URI "
                               "(s3://...; default: runs/)", in_yaml=False,
                          default_factory=default_storage, path=paths.location)
    name: str = option("resnet-ray", in_yaml=False)
    export: str | None = option(None, help="write the best checkpoint as a model directory "
                                "here", in_yaml=False, path=paths.output)
    max_failures: int = option(2)
    keep_checkpoints: int = option(2)  # best K by validation accuracy, plus the latest
    seed: int = option(0, help="weights, data order and the validation split")
    # Validation picks checkpoints and stops trials, so the test file stays unseen until
    # the final numbers; 0 validates on the test file, as the seed's recipe did.
    val_fraction: float = option(
        0.1, help="share of each class of train_signs.h5 kept out to pick the best "
                  "checkpoint; test_signs.h5 is only scored at export. 0 validates on "
                  "test_signs.h5 (the seed recipe's way)")
    augment: float = option(
        1.0, group=RECIPE, help="augmentation strength: 0 none, 1 = 10%% shift/zoom, 10 "
                                "degree rotation, 20%% brightness/contrast")
    lr_schedule: str = option("cosine", group=RECIPE, choices=LR_SCHEDULES)
    # Capped at a fifth of the run (warmup_steps), so 1- and 2-epoch runs keep the default.
    warmup_epochs: float = option(1.0, group=RECIPE, help="linear warm-up from lr/10")
    # Not Keras' 0.99: with ~30 steps an epoch the moving statistics would trail the
    # weights by epochs, and validation would sit near chance early on.
    bn_momentum: float = option(0.9, group=RECIPE)
    label_smoothing: float = option(0.0, group=RECIPE)
    mixup: float = option(0.0, group=RECIPE,
                          help="mixup's alpha: each training image and its one-hot label "
                               "blended with another's by a Beta(alpha, alpha) weight (0: off)")
    ema: float = option(0.0, group=RECIPE,
                        help="keep an exponential moving average of the weights with this "
                             "momentum (such as 0.99) and validate, checkpoint and export "
                             "it instead of the last step's weights (0: off)")
    # Off by default: docs/results.md has the measurements behind that.
    weight_decay: float = option(0.0, group=RECIPE,
                                 help="AdamW's decoupled weight decay on conv and dense "
                                      "kernels (0: Adam)")
    allreduce_pack_mb: float = option(
        0.0, group=COMMUNICATION, help="all-reduce gradients in packs of this many MiB "
                                       "(0: one pack); every pack is sent after the backward "
                                       "pass, not during it")
    allreduce_dtype: str = option("auto", group=COMMUNICATION, choices=ALLREDUCE_DTYPES,
                                  help="dtype the gradients travel in; weights stay float32 "
                                       "(auto: float16 between the CPU nodes of a layout "
                                       "chosen from the cluster, else float32)")
    # lr is the rate for batch_size; lr_scaling says how it grows with the update's batch.
    accumulate: int = option(1, group=COMMUNICATION,
                             help="micro-batches of --batch-size per all-reduce and update "
                                  "(the update then covers batch-size x accumulate images)")
    lr_scaling: str = option("linear", group=COMMUNICATION, choices=LR_SCALINGS,
                             help="how --lr grows with the update's batch when accumulating")
    # Taken from the data by the plan; workers and exports rely on them.
    input_shape: tuple[int, int, int] = option((64, 64, 3), flag=False, searchable=False,
                                               expected="[height, width, channels]")
    classes: list[int] = option(flag=False, searchable=False,
                                expected="a list of integer labels",
                                default_factory=lambda: [0, 1, 2, 3, 4, 5])

    def __post_init__(self) -> None:
        # JSON and YAML give lists and numpy's integers: one form for comparisons and files.
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "classes", [int(c) for c in self.classes])

    def warmup_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of linear warm-up: warmup_epochs, but at most a fifth of the run."""
        return round(min(self.warmup_epochs, self.epochs / 5) * steps_per_epoch)

    @property
    def per_worker_batch_size(self) -> int:
        """Images a worker computes at once (one micro-batch)."""
        return self.batch_size // max(1, self.num_workers or 1)

    @property
    def update_batch_size(self) -> int:
        """Images behind each weight update, over all workers and micro-batches."""
        return self.batch_size * self.accumulate

    @property
    def update_lr(self) -> float:
        """The peak learning rate of an update of update_batch_size images."""
        factor = {"linear": self.accumulate, "sqrt": self.accumulate ** 0.5,
                  "none": 1}[self.lr_scaling]
        return self.lr * factor

    def validate(self) -> "TrainConfig":
        checks = [
            ("epochs", self.epochs >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("lr", 0 < self.lr < 10, "a learning rate between 0 and 10"),
            ("num_workers", self.num_workers is None or self.num_workers >= 0,
             "0 (this process, no Ray workers) or more"),
            ("cpus_per_worker", self.cpus_per_worker is None or self.cpus_per_worker >= 1,
             "at least 1"),
            ("precision", self.precision in PRECISIONS, f"one of {list(PRECISIONS)}"),
            ("max_failures", self.max_failures >= -1, "-1 (retry forever) or more"),
            ("keep_checkpoints", self.keep_checkpoints >= 1, "at least 1"),
            ("keep_images", self.keep_images >= 0, "0 (always stream) or more images"),
            ("bn_momentum", 0 < self.bn_momentum < 1, "between 0 and 1"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "between 0 and 1"),
            ("mixup", 0 <= self.mixup <= 10, "an alpha from 0 (off) to 10"),
            ("ema", 0 <= self.ema < 1, "a momentum from 0 (off) to below 1"),
            ("weight_decay", 0 <= self.weight_decay < 1, "at least 0 and below 1"),
            ("val_fraction", 0 <= self.val_fraction < 1,
             "0 (validate on the test file) or a fraction below 1"),
            ("model", self.model in MODEL_NAMES, f"one of {list(MODEL_NAMES)}"),
            ("augment", 0 <= self.augment <= 2, "a strength from 0 (none) to 2"),
            ("lr_schedule", self.lr_schedule in LR_SCHEDULES, f"one of {list(LR_SCHEDULES)}"),
            ("warmup_epochs", 0 <= self.warmup_epochs <= self.epochs,
             "at least 0 and at most the epochs"),
            ("allreduce_pack_mb", self.allreduce_pack_mb >= 0, "0 (one pack) or more MiB"),
            ("allreduce_dtype", self.allreduce_dtype in ALLREDUCE_DTYPES,
             f"one of {list(ALLREDUCE_DTYPES)}"),
            ("accumulate", self.accumulate >= 1, "at least 1 (1: no accumulation)"),
            ("lr_scaling", self.lr_scaling in LR_SCALINGS, f"one of {list(LR_SCALINGS)}"),
            ("name", bool(self.name) and "/" not in self.name, "a name without '/'"),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{key}: expected {expected}, got {getattr(self, key)!r}")
        if self.num_workers and self.batch_size % self.num_workers:
            # Unequal per-worker batches would make gradient averaging weight workers unequally.
            lower = self.batch_size - self.batch_size % self.num_workers
            raise ConfigError(
                f"batch_size: the global batch {self.batch_size} does not divide evenly over "
                f"{self.num_workers} workers; use a multiple of {self.num_workers} "
                f"such as {max(lower, self.num_workers)} or {lower + self.num_workers}")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "TrainConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown key {unknown[0]!r}; expected one of "
                              f"{sorted(known)}")
        for key, value in d.items():
            expected = _expected_type(key, value)
            if expected:
                raise ConfigError(f"{source}: key '{key}' must be {expected}, got {value!r}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()), source=str(path))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read training config ({exc})") from None

    @property
    def run_dir(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"


def is_remote(location: str) -> bool:
    """A URI such as s3://bucket/path rather than a local path."""
    return "://" in str(location)


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def yaml_keys() -> set[str]:
    """Keys a search-space file's train section may set."""
    return {n for n, f in _fields().items() if f.metadata["in_yaml"]}


def searchable_keys() -> set[str]:
    """Keys a search-space file's search_space may sample."""
    return {n for n, f in _fields().items() if f.metadata["searchable"]}


def _is_int(v: Any) -> bool:  # numpy's integers too (Tune samples them)
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _expected_type(key: str, value: Any) -> str | None:
    """What a config value should have been, or None if it is fine (YAML and JSON give
    strings, lists and booleans where a number was meant; say so instead of failing later)."""
    kind = typing.get_type_hints(TrainConfig)[key]
    if kind is int:
        return None if _is_int(value) else "an integer"
    if kind is float:
        return None if isinstance(value, numbers.Real) and not isinstance(value, bool) \
            else "a number"
    if kind is str:
        return None if isinstance(value, str) else "a string"
    if kind is bool:
        return None if isinstance(value, bool) else "true or false"
    if kind == (int | None):
        return None if value is None or _is_int(value) else "an integer or null (auto)"
    if kind == (str | None):
        return None if value is None or isinstance(value, str) else "a path or null"
    ok = isinstance(value, (list, tuple)) and all(_is_int(v) for v in value)
    if key == "input_shape":
        ok = ok and len(value) == 3
    if key == "classes":
        ok = ok and isinstance(value, list)
    return None if ok else _fields()[key].metadata["expected"]


def add_arguments(parser) -> None:
    """One --option per TrainConfig field with flag=True, in argument groups by `group`."""
    defaults, groups = TrainConfig(), {}
    for name, f in _fields().items():
        meta = f.metadata
        if not meta["flag"]:
            continue
        target = parser
        if meta["group"]:
            target = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        flag, kind = "--" + name.replace("_", "-"), typing.get_type_hints(TrainConfig)[name]
        flag = "--classes" if name == "data_classes" else flag
        if kind is bool:
            target.add_argument(flag, action="store_true", dest=name, help=meta["help"])
            continue
        kwargs = {"default": getattr(defaults, name), "help": meta["help"], "dest": name}
        if kind in (int, float, int | None):
            kwargs["type"] = int if kind == (int | None) else kind
        if meta["path"]:
            kwargs["type"] = meta["path"]
        if meta["choices"]:
            kwargs["choices"] = list(meta["choices"])
        if name == "data":
            kwargs = {"required": True, "help": meta["help"], "dest": name, "type": paths.data}
        if name == "data_classes":
            kwargs["metavar"] = "DIGITS"
        target.add_argument(flag, **kwargs)


def from_args(args) -> TrainConfig:
    """The TrainConfig of parsed add_arguments() options."""
    return TrainConfig(**{n: getattr(args, n) for n, f in _fields().items()
                          if f.metadata["flag"]})
