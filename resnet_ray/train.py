"""The training driver: check the data and config, build the Ray Train trainer, run it, export
the best checkpoint. `python -m resnet_ray.train ...` is the entry point for `ray job submit`.

The workers' side is resnet_ray/worker.py, the plan every step reads resnet_ray/plan.py; a
re-run with the same storage and name resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from . import config, console, testhooks
from .checkpoints import CONFIG_FILE, best_checkpoint
from .config import TrainConfig, is_remote
from .errors import ConfigError, RunFailed, command_main
from .layout import cluster_nodes
from .paths import shown
from .plan import Plan, resolve
from . import promote
from .runtime import init_ray, worker_env_vars

REPORTS_FILE = "reports.jsonl"
PLAN_FILE = "plan.json"


def join_cluster(lean: bool = True) -> list:
    """Join the cluster (or start this run's own) and return its nodes: what a plan's layout
    is chosen from."""
    init_ray(lean=lean)
    return cluster_nodes()


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


def build_trainer(plan: Plan, callbacks=(), board=None):
    """The project's Ray Train trainer for a plan; board: the actor rank 0 posts its
    progress to (resnet_ray/progress.py)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.config import LoggingConfig
    # TensorflowTrainer is this trainer with Ray's TensorflowConfig; both import TensorFlow,
    # which neither this process (a Tune trial) nor Train's controller uses (tf_backend.py).
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from .tf_backend import TensorflowConfig

    cfg, callbacks = plan.config, list(callbacks)
    datasets, data_config, feed = plan.source.trainer_inputs(cfg, shared=not plan.in_process)
    if not is_remote(cfg.storage):
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / CONFIG_FILE)
        (run_dir / PLAN_FILE).write_text(json.dumps(plan.record(), indent=2) + "\n")
        if not plan.in_process:  # Ray Train's local mode runs no callbacks
            callbacks.append(_report_log_callback(str(run_dir / REPORTS_FILE)))
    return DataParallelTrainer(
        train_loop_per_worker, backend_config=TensorflowConfig(),
        train_loop_config={"config": cfg.to_dict(), "feed": feed, "board": board,
                           "store": plan.store(), "in_process": plan.in_process,
                           "threads": plan.threads},
        datasets=datasets, dataset_config=data_config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(
            name=cfg.name, storage_path=cfg.storage,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints,
                                               checkpoint_score_attribute=plan.score[0],
                                               checkpoint_score_order=plan.score[1]),
            worker_runtime_env={"env_vars": {**worker_env_vars(), **testhooks.forwarded_env()}},
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=callbacks),
    )


def _fit(plan: Plan, quiet: bool):
    import ray.train

    from .progress import TrainProgress
    from .waiting import PlacementWatch

    cfg, source = plan.config, plan.source
    if not quiet:
        console.result(f"training {cfg.model} for {cfg.epochs} epochs: {source.train_images} "
                       f"training and {source.val_images} validation images; run "
                       f"{shown(cfg.run_dir)}")
        console.result(plan.layout_line)
    progress = None if plan.in_process or console.verbose() else TrainProgress(
        cfg.epochs, source.train_images // cfg.update_batch_size)
    say = progress.note if progress else lambda line: print(line, flush=True)
    try:
        with progress or contextlib.nullcontext(), \
                contextlib.nullcontext() if plan.in_process else PlacementWatch(say):
            return build_trainer(plan, board=progress and progress.board).fit()
    except ray.train.TrainingFailedError as exc:
        raise RunFailed(f"training run {cfg.run_dir} failed beyond --max-failures "
                        f"{cfg.max_failures}; its checkpoints are kept and the same command "
                        f"resumes from the latest one.\n{exc}") from None


def run_training(cfg: TrainConfig, quiet: bool = False, next_version: bool = False,
                 deploy: bool = False):
    """Train with Ray Train; export the best checkpoint if cfg.export is set (with
    next_version, as the repository cfg.export's next version; with deploy, trained on the
    cluster of the service that serves it and rolled out there, resnet_ray/promote.py).
    Returns Result. Prints a header, the progress and the export lines unless quiet."""
    import ray.train

    from .export import export_checkpoint, exported_line, format_test_score

    promote.prepare(cfg.export, next_version, deploy)
    plan = resolve(cfg, promote.free_nodes if deploy else join_cluster)
    plan.source.prepare(plan.config.strict)
    if plan.finished is not None:
        if not quiet:
            console.result(plan.layout_line)
        with console.quiet_stderr():  # Ray notes on stderr that it read the run's snapshot
            result = ray.train.Result.from_path(plan.run_dir)
    else:
        result = _fit(plan, quiet)
    if cfg.export:
        best = best_checkpoint(plan.run_dir, plan.score, result)
        if best is None:
            raise ConfigError(f"{plan.run_dir}: the run left no checkpoint to export")
        meta = export_checkpoint(best, cfg.export, plan, extra={"run_dir": plan.run_dir},
                                 next_version=next_version)
        if not quiet:
            print(exported_line(f"best checkpoint ({shown(best.path)})", meta), flush=True)
            print(format_test_score(meta), flush=True)
        if deploy:
            promote.promote(meta["model_dir"], meta["model_version"], meta["test"],
                            plan.source, say=(lambda line: None) if quiet else print)
    if not quiet and (line := plan.source.warning()):
        print(line, file=sys.stderr, flush=True)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser)
    promote.add_flags(parser)
    console.add_verbose_flag(parser)


def command(args: argparse.Namespace) -> None:
    console.set_verbose(args.verbose)
    cfg = config.from_args(args)
    result = run_training(cfg, next_version=args.next_version, deploy=args.deploy)
    m = result.metrics or {}
    print(f"finished: {m.get('epoch')} epochs, val_accuracy {m.get('val_accuracy', 0):.4f}, "
          f"run directory {shown(result.path or cfg.run_dir)}")


def main(argv: list[str] | None = None) -> int:
    """`python -m resnet_ray.train ...`: the entry point for `ray job submit` and a RayJob."""
    return command_main("train", "Data-parallel training on Ray Train.", add_arguments,
                        command, argv)


if __name__ == "__main__":
    sys.exit(main())
