"""Ray Tune search-space files (tune_configs/*.yaml): read and checked before anything runs,
every error naming the file and the key."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import TrainConfig, searchable_keys, yaml_keys
from .errors import ConfigError

DISTRIBUTIONS = {"loguniform": 2, "uniform": 2, "randint": 2, "choice": None, "grid": None}
SEARCHERS = ("random", "optuna", "hyperopt")
SCHEDULERS = ("asha", "fifo")
TOP_KEYS = {"train", "search_space", "num_samples", "scheduler", "searcher", "metric", "mode",
            "max_concurrent", "seed"}
SCHEDULER_KEYS = {"type", "grace_period", "reduction_factor"}


@dataclass
class TuneSpec:
    source: str
    train: dict[str, Any]
    search_space: dict[str, dict[str, Any]]
    num_samples: int = 8
    scheduler: dict[str, Any] = field(default_factory=lambda: {"type": "asha"})
    searcher: str = "random"
    metric: str = "val_accuracy"
    mode: str = "max"
    max_concurrent: int | None = None
    seed: int = 0


def load_spec(path: str | os.PathLike) -> TuneSpec:
    """Read and check a search-space YAML; every error names the file and the key."""
    import yaml

    path = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; expected a search-space YAML such as "
                          "tune_configs/default.yaml") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys {sorted(TOP_KEYS)}")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; expected one of {sorted(TOP_KEYS)}")

    train = raw.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError(f"{path}: key 'train' must be a mapping of training options")
    allowed = yaml_keys()
    for key in train:
        if key not in allowed:
            raise ConfigError(f"{path}: unknown key 'train.{key}'; expected one of "
                              f"{sorted(allowed)}")
    base = TrainConfig.from_dict({**train, "data": "-"}, source=f"{path}: train")
    if base.num_workers is not None and base.num_workers < 1:
        raise ConfigError(f"{path}: train.num_workers must be at least 1 for a search")

    space = raw.get("search_space")
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{path}: key 'search_space' must map at least one training option "
                          "to a distribution, e.g. lr: {loguniform: [1.0e-4, 1.0e-2]}")
    for key, dist in space.items():
        _check_distribution(path, key, dist, base)

    spec = TuneSpec(source=path, train=train, search_space=space)
    for key, kind in (("num_samples", int), ("searcher", str), ("metric", str), ("mode", str),
                      ("seed", int)):
        if key in raw:
            if not isinstance(raw[key], kind) or isinstance(raw[key], bool):
                raise ConfigError(f"{path}: key '{key}' must be a {kind.__name__}, "
                                  f"got {raw[key]!r}")
            setattr(spec, key, raw[key])
    if spec.num_samples < 1:
        raise ConfigError(f"{path}: key 'num_samples' must be at least 1, got {spec.num_samples}")
    if spec.searcher not in SEARCHERS:
        raise ConfigError(f"{path}: key 'searcher' must be one of {list(SEARCHERS)}, "
                          f"got {spec.searcher!r}")
    if spec.mode not in ("min", "max"):
        raise ConfigError(f"{path}: key 'mode' must be 'min' or 'max', got {spec.mode!r}")
    if "max_concurrent" in raw and raw["max_concurrent"] is not None:
        if not isinstance(raw["max_concurrent"], int) or raw["max_concurrent"] < 1:
            raise ConfigError(f"{path}: key 'max_concurrent' must be a positive integer")
        spec.max_concurrent = raw["max_concurrent"]
    spec.scheduler = _scheduler_spec(path, raw.get("scheduler", {"type": "asha"}))
    return spec


def _scheduler_spec(path: str, scheduler: Any) -> dict[str, Any]:
    if not isinstance(scheduler, dict) or set(scheduler) - SCHEDULER_KEYS:
        extra = sorted(set(scheduler) - SCHEDULER_KEYS) if isinstance(scheduler, dict) else []
        raise ConfigError(f"{path}: key 'scheduler' must be a mapping of {sorted(SCHEDULER_KEYS)}"
                          + (f"; unknown key 'scheduler.{extra[0]}'" if extra else ""))
    if scheduler.get("type", "asha") not in SCHEDULERS:
        raise ConfigError(f"{path}: key 'scheduler.type' must be one of {list(SCHEDULERS)}, "
                          f"got {scheduler.get('type')!r}")
    for key in ("grace_period", "reduction_factor"):
        if key in scheduler and (not isinstance(scheduler[key], int) or scheduler[key] < 1 or
                                 (key == "reduction_factor" and scheduler[key] < 2)):
            raise ConfigError(f"{path}: key 'scheduler.{key}' must be an integer >= "
                              f"{2 if key == 'reduction_factor' else 1}, got {scheduler[key]!r}")
    return {"type": "asha", **scheduler}


def _check_distribution(path: str, key: str, dist: Any, base: TrainConfig) -> None:
    where = f"{path}: search_space.{key}"
    if key not in searchable_keys():
        raise ConfigError(f"{where}: {key!r} is not a training option; expected one of "
                          f"{sorted(searchable_keys())}")
    if not isinstance(dist, dict) or len(dist) != 1:
        raise ConfigError(f"{where}: expected one distribution such as "
                          "{loguniform: [1.0e-4, 1.0e-2]} or {choice: [16, 32, 64]}")
    (name, args), = dist.items()
    if name not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution {name!r}; expected one of "
                          f"{sorted(DISTRIBUTIONS)}")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}.{name}: expected a non-empty list, got {args!r}")
    arity = DISTRIBUTIONS[name]
    if arity is not None:
        if len(args) != arity or not all(isinstance(a, (int, float)) and
                                         not isinstance(a, bool) for a in args):
            raise ConfigError(f"{where}.{name}: expected [low, high] numbers, got {args!r}")
        low, high = args
        if not low < high or (name == "loguniform" and low <= 0):
            raise ConfigError(f"{where}.{name}: expected 0 < low < high for loguniform and "
                              f"low < high otherwise, got {args!r}")
        values = [low, high]
    else:
        values = args
    # Every value a trial can get must make a valid training config.
    for value in values:
        try:
            TrainConfig.from_dict({**base.to_dict(), key: value}, source=where).validate()
        except ConfigError as exc:
            raise ConfigError(f"{where}: value {value!r} is invalid ({exc})") from None
