"""The Ray Tune search's driver: `resnet-ray tune` and `python -m resnet_ray.tune`.

The search-space file is read by tune_spec.py and translated, with the trial function, by
tune_space.py; each trial is a Tune function trainable that builds and fits the project's
Ray Train trainer (the Ray 2.60 pattern; `Tuner(trainer)` is deprecated), with metrics
forwarded to Tune by `TuneReportCallback`. The results go through tune_results.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from . import console, paths, promote, testhooks
from .config import TrainConfig, default_storage, is_remote
from .errors import ConfigError, RunFailed, command_main
from .tune_spec import TuneSpec, load_spec


def run_search(spec: TuneSpec, data_dir: str, storage: str | None = None,
               name: str = "tune", export: str | None = None, max_concurrent: int | None = None,
               num_samples: int | None = None, resume: bool = False,
               classes: str = "", strict: bool = False,
               next_version: bool = False, deploy: bool = False) -> dict[str, Any]:
    import ray
    from ray import tune

    from .plan import resolve
    from .train import join_cluster
    from .tune_results import summarize
    from .tune_space import tune_trial

    promote.prepare(export, next_version, deploy)
    storage = storage or default_storage()
    if is_remote(storage):
        raise ConfigError(f"--storage: searches keep their results table, plots and the "
                          f"trials' checkpoints on a local or shared path, got {storage!r}")
    experiment = Path(storage).absolute() / name
    cfg = TrainConfig.from_dict({**spec.train, "data": data_dir, "data_classes": classes,
                                 "strict": strict,
                                 "storage": str(experiment / "trials"), "name": name})
    join = promote.free_nodes if deploy else (lambda: join_cluster(lean=False))
    plan = resolve(cfg, join, search=True, score=(spec.metric, spec.mode))
    plan.source.prepare(plan.config.strict)
    base = plan.config
    searched = list(spec.search_space)
    console.result(f"searching {', '.join(searched)} for {base.model}: "
                   f"{num_samples or spec.num_samples} trials of up to {base.epochs} epochs "
                   f"({spec.scheduler['type']}), {base.num_workers} worker(s) x "
                   f"{base.cpus_per_worker} CPU each; results in {paths.shown(experiment)}")
    cpus_per_trial = base.num_workers * base.cpus_per_worker
    total = sum(n.cpus for n in promote.free_nodes()) if deploy else \
        int(ray.cluster_resources().get("CPU", 1))
    if cpus_per_trial > total:
        raise ConfigError(f"{spec.source}: a trial needs {cpus_per_trial} CPUs "
                          f"(train.num_workers x train.cpus_per_worker), the cluster has {total}"
                          f"{' free beside the service' if deploy else ''}")
    concurrent = max_concurrent or spec.max_concurrent or max(1, total // cpus_per_trial)

    # The trial function only drives its Train run, whose workers reserve the CPUs: it asks
    # for no CPU (Tune refuses an empty request, hence a token of memory), and
    # max_concurrent_trials keeps trials from waiting on each other's workers.
    trainable = tune.with_resources(
        tune.with_parameters(tune_trial, plan=plan, hooks=testhooks.forwarded_env()),
        {"cpu": 0, "memory": 2 ** 26})
    if resume:
        if not tune.Tuner.can_restore(str(experiment)):
            raise ConfigError(f"--resume: no search to resume at {experiment}")
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable,
                                   resume_unfinished=True, resume_errored=True)
    else:
        if (experiment / "tuner.pkl").exists():
            raise ConfigError(f"{experiment}: a search already exists there; pass --resume to "
                              "continue it or choose another --name")
        tuner = _new_tuner(trainable, spec, base, name, storage, num_samples, concurrent)
    if not console.verbose():
        # Tune's newer output engine prints its configuration box even when silent, and a
        # restored search brings its console options from the first run.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    summary = summarize(tuner.fit(), spec, plan, experiment, export, next_version)
    if deploy and summary.get("model_version"):
        promote.promote(summary["exported"], summary["model_version"], summary["test"],
                        plan.source)
    if line := plan.source.warning():
        print(line, file=sys.stderr, flush=True)
    return summary


def _new_tuner(trainable, spec: TuneSpec, base: TrainConfig, name: str, storage: str,
               num_samples: int | None, concurrent: int):
    from ray import tune

    from .tune_space import param_space, scheduler, searcher

    return tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, num_samples=num_samples or spec.num_samples,
            search_alg=searcher(spec, concurrent), scheduler=scheduler(spec, base.epochs),
            max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(name=name, storage_path=str(Path(storage).absolute()),
                                  failure_config=tune.FailureConfig(max_failures=1),
                                  **_console_options(spec, base, num_samples)),
    )


def _console_options(spec: TuneSpec, base: TrainConfig, num_samples: int | None):
    """Tune's own status tables with --verbose; otherwise a progress bar (or a line per
    trial) and the compact table summarize() prints."""
    from .progress import tune_callback

    if console.verbose():
        return {}
    return {"verbose": 0, "callbacks": [tune_callback(num_samples or spec.num_samples,
                                                      base.epochs, spec.metric,
                                                      list(spec.search_space))]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=paths.local,
                        help="search-space YAML (tune_configs/*.yaml)")
    parser.add_argument("--data", required=True, type=paths.data,
                        help="as for train: SIGNS files, builtin:..., or a folder or URI of "
                             "photos in class sub-folders")
    parser.add_argument("--classes", default="", metavar="DIGITS",
                        help="with a folder of photos: the class sub-folders to search on")
    parser.add_argument("--strict", action="store_true",
                        help="with a folder of photos: an unreadable file is an error, not "
                             "skipped")
    parser.add_argument("--storage", default=default_storage(), type=paths.location,
                        help="where the search keeps its trials, table and plots: a local "
                             "or shared path (default: runs/)")
    parser.add_argument("--name", default="tune")
    parser.add_argument("--export", type=paths.output,
                        help="write the best trial's best checkpoint here")
    promote.add_flags(parser)
    parser.add_argument("--max-concurrent", type=int)
    parser.add_argument("--num-samples", type=int)
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted search")
    console.add_verbose_flag(parser)


def command(a: argparse.Namespace) -> None:
    console.set_verbose(a.verbose)
    summary = run_search(load_spec(a.config), a.data, storage=a.storage, name=a.name,
                         export=a.export, max_concurrent=a.max_concurrent,
                         num_samples=a.num_samples, resume=a.resume, classes=a.classes,
                         strict=a.strict, next_version=a.next_version, deploy=a.deploy)
    best = summary.get("best")
    if best is None:
        raise RunFailed(f"no trial of the search reported a result; see {summary['csv']}")
    print(f"{summary['trials']} trials, {summary['epochs_run']} of {summary['epochs_budget']} "
          f"epochs run; best: {best}\nresults: {paths.shown(summary['csv'])}")


def main(argv: list[str] | None = None) -> int:
    """`python -m resnet_ray.tune ...`: the entry point for `ray job submit` and a RayJob."""
    return command_main("tune", "Ray Tune search over training options.", add_arguments,
                        command, argv)


if __name__ == "__main__":
    sys.exit(main())
