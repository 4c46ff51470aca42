"""A run's plan: the user's TrainConfig resolved once, at the top of the driver (and of a
search's driver), into what every later step reads: the data source, the layout, precision
and all-reduce dtype, where the run trains (Ray workers, or this process with
--num-workers 0) and which checkpoints it keeps and exports. A plan is frozen; metadata.json
records it. This is the one module that asks whether a run trains in this process.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import layout
from .checkpoints import (CONFIG_FILE, SCORE, LocalCheckpoints, RayCheckpoints,
                          check_checkpoints, checkpoint_score, complete_checkpoints)
from .config import TrainConfig, is_remote
from .errors import ConfigError
from .sources import DataSource, open_source

# What Ray Train writes beside a run's checkpoints; Result.from_path reads it back.
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"
# What makes a checkpoint unusable for another run: the weights' and optimizer's shapes.
RUN_IDENTITY = ("model", "classes", "input_shape")


@dataclass(frozen=True)
class Plan:
    config: TrainConfig     # nothing left open: layout, precision, classes, input shape
    source: DataSource
    in_process: bool        # the training loop in this process (Ray Train's local mode)
    layout_line: str
    score: tuple[str, str] = SCORE  # what checkpoints are kept and exported by
    finished: int | None = None     # the epochs a finished run already holds

    @property
    def run_dir(self) -> str:
        return self.config.run_dir

    def store(self):
        """Where the workers report and find checkpoints: Ray Train's, or the run directory
        itself in one process (Ray Train's local mode persists none)."""
        if self.in_process:
            return LocalCheckpoints(self.run_dir, self.config.keep_checkpoints, self.score)
        return RayCheckpoints()

    @property
    def threads(self) -> int | None:
        """TensorFlow threads per worker: its CPUs, or this process's own pools."""
        return None if self.in_process else self.config.cpus_per_worker

    def record(self) -> dict[str, Any]:
        """What metadata.json keeps of the plan."""
        c = self.config
        return {"layout": self.layout_line, "in_process": self.in_process,
                "num_workers": c.num_workers, "cpus_per_worker": c.cpus_per_worker,
                "precision": c.precision, "allreduce_dtype": c.allreduce_dtype,
                "data_source": self.source.kind,
                "checkpoints": {"keep": c.keep_checkpoints, "by": list(self.score)}}

    def for_trial(self, params: dict[str, Any], name: str) -> "Plan":
        """One trial's plan: this search's plan with the trial's sampled options."""
        cfg = TrainConfig.from_dict({**self.config.to_dict(), **params, "name": name,
                                     "export": None}, source=f"trial {name}").validate()
        return dataclasses.replace(self, config=cfg)


def resolve(cfg: TrainConfig, join: Callable[[], list], search: bool = False,
            score: tuple[str, str] = SCORE) -> Plan:
    """The plan of a run (or, with search, of a search's trials), or one clear error before
    any worker starts. join() starts or joins Ray and returns its nodes; it is not called
    for a run in this process, nor for a finished run, which only exports again."""
    in_process = cfg.validate().num_workers == 0
    if in_process and search:
        raise ConfigError("num_workers: a search's trials run on Ray workers; expected at "
                          "least 1, got 0")
    if in_process and is_remote(cfg.storage):
        raise ConfigError(f"storage: a single-process run (num_workers 0) keeps checkpoints "
                          f"on a local path, got {cfg.storage!r}")
    source = open_source(cfg)
    cfg = dataclasses.replace(cfg, classes=source.classes,
                              input_shape=source.input_shape).validate()
    source.check(cfg, in_process)
    if not search and not is_remote(cfg.storage):
        check_checkpoints(cfg.run_dir)
        done = _check_same_run(cfg, in_process)
        if done is not None and not in_process and (Path(cfg.run_dir) / RAY_SNAPSHOT).exists():
            epochs = checkpoint_score(done[0], "epoch")
            if epochs is not None and epochs >= cfg.epochs:
                return Plan(done[1], source, False, f"run {cfg.run_dir} already holds "
                            f"{int(epochs)} epochs: nothing to train", score, int(epochs))
    if in_process:
        cfg, line = layout.in_process(cfg)
    else:
        cfg, line = layout.choose_layout(cfg, join(), search=search)
    return Plan(cfg, source, in_process, line, score)


def _check_same_run(cfg: TrainConfig, in_process: bool):
    """Refuse to resume a run directory whose checkpoints a run that differs in what makes
    them unusable wrote (its model, classes, input shape, or where it trained); returns
    (the latest checkpoint, the config it was written with), or None when there is none."""
    done = complete_checkpoints(cfg.run_dir)
    if not done:
        return None
    try:
        before = TrainConfig.load(done[-1] / CONFIG_FILE)
    except Exception:  # a damaged config is check_checkpoints' to report
        return None
    fields = [f for f in RUN_IDENTITY if getattr(before, f) != getattr(cfg, f)]
    if (before.num_workers == 0) != in_process:
        fields.append("num_workers")
    if fields:
        differs = "; ".join(f"{f} {getattr(cfg, f)!r} here, {getattr(before, f)!r} there"
                            for f in fields)
        raise ConfigError(
            f"--name {cfg.name}: {cfg.run_dir} holds checkpoints of a different run "
            f"({differs}); resume it with its own options, or start fresh with another "
            f"--name (or after removing {cfg.run_dir})")
    # What this command asks of the export wins over what the run was exported with.
    return done[-1], dataclasses.replace(before, export=cfg.export)
