"""The training driver: check the data and config, build the Ray Train trainer, run it, export
the best checkpoint. `python -m resnet_ray.train ...` is the entry point for `ray job submit`.

The workers' side is resnet_ray/worker.py; a re-run with the same storage and name resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from . import config, console, embedded, folders, testhooks
from .checkpoints import (CONFIG_FILE, SCORE, LocalCheckpoints, check_checkpoints,
                          check_same_run, checkpoint_score, complete_checkpoints)
from .config import TrainConfig, is_remote
from .data import Signs, load_data_dir, split_validation
from .errors import ConfigError, RunFailed, command_main
from .layout import choose_layout, cluster_nodes
from .runtime import init_ray, worker_env_vars

REPORTS_FILE = "reports.jsonl"
# What Ray Train writes beside a run's checkpoints; Result.from_path reads it back.
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def prepare_config(cfg: TrainConfig) -> tuple[TrainConfig, Signs, Signs, Signs]:
    """Load and check the data and the config on the driver, before any worker starts.
    Returns (config, train, validation, test); workers get only train and validation.
    A folder of photos is only listed: its splits stream to the workers (folders.py)."""
    if folders.is_folder(cfg.data):
        return _prepare_folder(cfg)
    if cfg.data_classes or cfg.strict:
        flag = "--classes" if cfg.data_classes else "--strict"
        raise ConfigError(f"{flag}: applies to a folder of photos; {cfg.data} holds SIGNS "
                          ".h5 files (`resnet-ray data import --classes` chooses their classes)")
    train, test = load_data_dir(embedded.resolve(cfg.data))
    cfg.input_shape, cfg.classes = train.input_shape, list(train.classes)
    cfg.validate()
    if cfg.val_fraction:
        train, val = split_validation(train, cfg.val_fraction, cfg.seed)
    else:
        val = test
    if len(train) < cfg.update_batch_size:
        accumulate = f" x accumulate {cfg.accumulate}" if cfg.accumulate > 1 else ""
        raise ConfigError(f"batch_size: {cfg.batch_size}{accumulate} is larger than the "
                          f"{len(train)} training images in {train.source}")
    return cfg, train, val, test


def _prepare_folder(cfg: TrainConfig):
    from .data import parse_classes

    if cfg.num_workers == 0:
        raise ConfigError(f"num_workers: a folder of photos ({cfg.data}) streams to Ray Train "
                          "workers through Ray Data; expected 1 or more, got 0")
    classes = parse_classes(cfg.data_classes) if cfg.data_classes else None
    data = folders.list_folder(cfg.data, classes, cfg.val_fraction, tuple(cfg.input_shape[:2]))
    cfg.classes = list(data.classes)
    cfg.validate()
    train, val, test = (data.split(s) for s in folders.SPLITS)
    if len(train) < cfg.update_batch_size:
        raise ConfigError(f"batch_size: {cfg.update_batch_size} is larger than the {len(train)} "
                          f"training images in {train.source}")
    return cfg, train, val, test


def _report_log_callback(path: str):
    from ray.train import UserCallback

    class ReportLog(UserCallback):
        """Appends every worker's report to reports.jsonl: the record of which rank ran
        on which node, with which weights, and which epochs were reported."""

        def after_report(self, run_context, metrics, checkpoint):
            with open(path, "a") as f:
                for m in metrics:
                    f.write(json.dumps({**m, "time": time.time(),
                                        "checkpoint": checkpoint.path if checkpoint else None})
                            + "\n")

    return ReportLog()


def train_loop_per_worker(loop_config: dict) -> None:
    """What every Ray Train worker runs (resnet_ray/worker.py); TensorFlow is imported there,
    not in the process that builds the trainer."""
    from . import worker

    worker.train_loop_per_worker(loop_config)


def build_trainer(cfg: TrainConfig, data, callbacks=(), board=None,
                  score: tuple[str, str] = SCORE):
    """The project's Ray Train trainer for a checked config; data = (train, validation);
    board: the actor rank 0 posts its progress to (resnet_ray/progress.py); score: the
    metric and mode that choose which checkpoints are kept (a search's own)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.config import LoggingConfig
    # TensorflowTrainer is this trainer with Ray's TensorflowConfig; both import TensorFlow,
    # which neither this process (a Tune trial) nor Train's controller uses (tf_backend.py).
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from .tf_backend import TensorflowConfig

    local = cfg.num_workers == 0
    callbacks = list(callbacks)
    datasets, data_config = None, None
    if isinstance(data[0], folders.FolderSplit):
        from ray.train import DataConfig

        # Every worker validates on all of the validation split, as with .h5 data.
        datasets = {"train": folders.dataset(data[0], shuffle_seed=cfg.seed),
                    "validation": folders.dataset(data[1])}
        data_config = DataConfig(datasets_to_split=["train"],
                                 execution_options=folders.ingest_options())
        data = {"stream": {"train": len(data[0]), "validation": len(data[1])}}
    if not is_remote(cfg.storage):
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        cfg.save(Path(cfg.run_dir) / CONFIG_FILE)
        if not local:
            callbacks.append(_report_log_callback(str(Path(cfg.run_dir) / REPORTS_FILE)))
    return DataParallelTrainer(
        train_loop_per_worker, backend_config=TensorflowConfig(),
        train_loop_config={"config": cfg.to_dict(), "data": data if local or datasets
                           else ray.put(data), "board": board, "score": score},
        datasets=datasets, dataset_config=data_config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(
            name=cfg.name, storage_path=cfg.storage,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints,
                                               checkpoint_score_attribute=score[0],
                                               checkpoint_score_order=score[1]),
            worker_runtime_env={"env_vars": {**worker_env_vars(), **testhooks.forwarded_env()}},
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=callbacks),
    )


def _best_checkpoint(cfg: TrainConfig, result):
    import ray.train

    if cfg.num_workers == 0:
        path = LocalCheckpoints(cfg.run_dir, cfg.keep_checkpoints).best()
        return ray.train.Checkpoint.from_directory(str(path)) if path else None
    return result.get_best_checkpoint(*SCORE) or result.checkpoint


def finished_epochs(cfg: TrainConfig) -> int | None:
    """How many epochs a Ray run in local storage already holds, when that is all it was
    asked for: re-running it only exports, without starting a worker."""
    if cfg.num_workers == 0 or is_remote(cfg.storage):
        return None
    done = complete_checkpoints(cfg.run_dir)
    if not done or not (Path(cfg.run_dir) / RAY_SNAPSHOT).exists():
        return None
    epoch = checkpoint_score(done[-1], "epoch")
    return int(epoch) if epoch is not None and epoch >= cfg.epochs else None


def _fit(cfg: TrainConfig, train, val, quiet: bool):
    import ray.train

    from .progress import TrainProgress
    from .waiting import PlacementWatch

    local = cfg.num_workers == 0
    if not local:
        init_ray(lean=True)
    cfg, layout_line = choose_layout(cfg, [] if local else cluster_nodes())
    if not quiet:
        console.result(f"training {cfg.model} for {cfg.epochs} epochs: {len(train)} training "
                       f"and {len(val)} validation images; run {cfg.run_dir}")
        console.result(layout_line)
    progress = None if local or console.verbose() else TrainProgress(
        cfg.epochs, len(train) // cfg.update_batch_size)
    if isinstance(train, folders.FolderSplit):
        folders.count_skipped(train.data, cfg.strict)
    say = progress.note if progress else lambda line: print(line, flush=True)
    try:
        with progress or contextlib.nullcontext(), \
                contextlib.nullcontext() if local else PlacementWatch(say):
            return build_trainer(cfg, (train, val), board=progress and progress.board).fit()
    except ray.train.TrainingFailedError as exc:
        raise RunFailed(f"training run {cfg.run_dir} failed beyond --max-failures "
                        f"{cfg.max_failures}; its checkpoints are kept and the same command "
                        f"resumes from the latest one.\n{exc}") from None


def run_training(cfg: TrainConfig, quiet: bool = False):
    """Train with Ray Train; export the best checkpoint if cfg.export is set. Returns Result.
    Prints a header, the progress and the export lines unless quiet."""
    import ray.train

    from .export import export_checkpoint, format_test_score

    cfg, train, val, test = prepare_config(cfg)
    if cfg.num_workers == 0 and is_remote(cfg.storage):
        raise ConfigError(f"storage: a single-process run (num_workers 0) keeps checkpoints "
                          f"on a local path, got {cfg.storage!r}")
    if not is_remote(cfg.storage):
        check_checkpoints(cfg.run_dir)
        check_same_run(cfg)
    if (epochs := finished_epochs(cfg)) is not None:
        if not quiet:
            console.result(f"run {cfg.run_dir} already holds {epochs} epochs: nothing to train")
        with console.quiet_stderr():  # Ray notes on stderr that it read the run's snapshot
            result = ray.train.Result.from_path(cfg.run_dir)
    else:
        result = _fit(cfg, train, val, quiet)
    if cfg.export:
        best = _best_checkpoint(cfg, result)
        if best is None:
            raise ConfigError(f"{cfg.run_dir}: the run left no checkpoint to export")
        if isinstance(test, folders.FolderSplit):
            init_ray()
            folders.count_skipped(test.data)
        meta = export_checkpoint(best, cfg.export, extra={"run_dir": cfg.run_dir},
                                 data=(train, val, test))
        if not quiet:
            print(f"exported best checkpoint ({best.path}) to {cfg.export}", flush=True)
            print(format_test_score(meta), flush=True)
    if isinstance(train, folders.FolderSplit) and not quiet:
        if line := folders.skipped_line(train.data):
            print(line, file=sys.stderr, flush=True)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser)
    console.add_verbose_flag(parser)


def command(args: argparse.Namespace) -> None:
    console.set_verbose(args.verbose)
    cfg = config.from_args(args)
    result = run_training(cfg)
    m = result.metrics or {}
    print(f"finished: {m.get('epoch')} epochs, val_accuracy {m.get('val_accuracy', 0):.4f}, "
          f"run directory {result.path or cfg.run_dir}")


def main(argv: list[str] | None = None) -> int:
    """`python -m resnet_ray.train ...`: the entry point for `ray job submit` and a RayJob."""
    return command_main("train", "Data-parallel training on Ray Train.", add_arguments,
                        command, argv)


if __name__ == "__main__":
    sys.exit(main())
