"""Ray Tune search over the Ray Train run: ASHA early stopping, a results table and plots,
and the best trial's best checkpoint exported. Search spaces come from tune_spec.py.

Each trial is a Tune function trainable that builds and fits the project's Ray Train trainer
(the Ray 2.60 pattern; `Tuner(trainer)` is deprecated), with metrics forwarded to Tune by
`TuneReportCallback`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import console, folders, testhooks
from .checkpoints import SCORE
from .config import DEFAULT_STORAGE, TrainConfig, is_remote
from .errors import ConfigError, RunFailed, command_main
from .tune_spec import TuneSpec, load_spec

RESULTS_CSV = "trials.csv"


def param_space(spec: TuneSpec) -> dict[str, Any]:
    from ray import tune

    out = {}
    for key, dist in spec.search_space.items():
        (name, args), = dist.items()
        out[key] = {"loguniform": lambda a: tune.loguniform(*a),
                    "uniform": lambda a: tune.uniform(*a),
                    "randint": lambda a: tune.randint(a[0], a[1] + 1),  # inclusive, as written
                    "choice": tune.choice, "grid": tune.grid_search}[name](args)
    return out


def _searcher(spec: TuneSpec, max_concurrent: int):
    from ray.tune.search import BasicVariantGenerator

    if spec.searcher == "random":
        # Tune ignores max_concurrent_trials for a generator passed in: it is set here.
        return BasicVariantGenerator(random_state=spec.seed, max_concurrent=max_concurrent)
    try:
        if spec.searcher == "optuna":
            from ray.tune.search.optuna import OptunaSearch
            import optuna  # noqa: F401

            return OptunaSearch(seed=spec.seed)
        from ray.tune.search.hyperopt import HyperOptSearch
        import hyperopt  # noqa: F401

        return HyperOptSearch(random_state_seed=spec.seed)
    except ImportError:
        raise ConfigError(f"{spec.source}: searcher {spec.searcher!r} needs the package "
                          f"{spec.searcher}: pip install {spec.searcher}") from None


def _scheduler(spec: TuneSpec, max_epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler["type"] == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", max_t=max_epochs,
                         grace_period=min(spec.scheduler.get("grace_period", 1), max_epochs),
                         reduction_factor=spec.scheduler.get("reduction_factor", 2))


def tune_trial(params: dict[str, Any], data=None, base: dict[str, Any] | None = None,
               hooks: dict[str, str] | None = None, score: tuple[str, str] = SCORE) -> None:
    """One trial: a Ray Train run of the project's trainer with this trial's parameters."""

    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from .train import build_trainer

    os.environ.update(hooks or {})  # test-only fault hooks set where the search started
    overrides = dict(params)
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = TrainConfig.from_dict({**base, **overrides, "name": f"train-{trial_id}",
                                 "export": None})
    # A restored search re-runs an unfinished trial under the same name, so its Train run
    # resumes from its own latest checkpoint.
    # Checkpoints are kept by the search's metric, so the one exported is the trial's best.
    build_trainer(cfg.validate(), data, callbacks=[TuneReportCallback()], score=score).fit()


def run_search(spec: TuneSpec, data_dir: str, storage: str = DEFAULT_STORAGE,
               name: str = "tune", export: str | None = None, max_concurrent: int | None = None,
               num_samples: int | None = None, resume: bool = False,
               classes: str = "", strict: bool = False) -> dict[str, Any]:
    import ray
    from ray import tune

    from .runtime import init_ray
    from .train import prepare_config

    if is_remote(storage):
        raise ConfigError(f"--storage: searches keep their results table, plots and the "
                          f"trials' checkpoints on a local or shared path, got {storage!r}")
    base = TrainConfig.from_dict({**spec.train, "data": data_dir, "data_classes": classes,
                                  "storage": "", "name": name})
    base.strict = base.strict or strict
    base, train, val, test = prepare_config(base)
    # Trials run side by side, so each defaults to one worker with one CPU.
    base.num_workers = 1 if base.num_workers is None else base.num_workers
    base.cpus_per_worker = base.cpus_per_worker or 1
    base.allreduce_dtype = "float32" if base.allreduce_dtype == "auto" else base.allreduce_dtype
    experiment = Path(storage).absolute() / name
    base.storage = str(experiment / "trials")
    init_ray()
    if isinstance(train, folders.FolderSplit):
        folders.count_skipped(train.data, base.strict)
    searched = list(spec.search_space)
    console.result(f"searching {', '.join(searched)} for {base.model}: "
                   f"{num_samples or spec.num_samples} trials of up to {base.epochs} epochs "
                   f"({spec.scheduler['type']}), {base.num_workers} worker(s) each; "
                   f"results in {experiment}")
    cpus_per_trial = base.num_workers * base.cpus_per_worker
    total = int(ray.cluster_resources().get("CPU", 1))
    if cpus_per_trial > total:
        raise ConfigError(f"{spec.source}: a trial needs {cpus_per_trial} CPUs "
                          f"(train.num_workers x train.cpus_per_worker), the cluster has {total}")
    concurrent = max_concurrent or spec.max_concurrent or max(1, total // cpus_per_trial)

    # The trial function only drives its Train run, whose workers reserve the CPUs: it asks
    # for no CPU (Tune refuses an empty request, hence a token of memory), and
    # max_concurrent_trials keeps trials from waiting on each other's workers.
    trainable = tune.with_resources(
        tune.with_parameters(tune_trial, data=(train, val), base=base.to_dict(),
                             hooks=testhooks.forwarded_env(), score=(spec.metric, spec.mode)),
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
    results = tuner.fit()
    summary = summarize(results, spec, base, experiment, export, data=(train, val, test))
    if isinstance(train, folders.FolderSplit) and (line := folders.skipped_line(train.data)):
        print(line, file=sys.stderr, flush=True)
    return summary


def _new_tuner(trainable, spec: TuneSpec, base: TrainConfig, name: str, storage: str,
               num_samples: int | None, concurrent: int):
    from ray import tune

    return tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, num_samples=num_samples or spec.num_samples,
            search_alg=_searcher(spec, concurrent), scheduler=_scheduler(spec, base.epochs),
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


def summarize(results, spec: TuneSpec, base: TrainConfig, experiment: Path,
              export: str | None, data=None) -> dict[str, Any]:
    """Trials table (printed and CSV), plots, and the best checkpoint exported (scored on
    the held-out test file when data = (train, validation, test) is given)."""
    import pandas as pd

    from .checkpoints import best_checkpoint_dir
    from .export import export_checkpoint, format_test_score

    rows, curves = [], {}
    searched = list(spec.search_space)
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        history = result.metrics_dataframe
        row = {"trial": trial_id, **{k: result.config.get(k) for k in searched}}
        if history is not None and len(history) and spec.metric in history:
            epochs = int(history["epoch"].max())
            best = history[spec.metric].max() if spec.mode == "max" else history[spec.metric].min()
            curves[trial_id] = (history["epoch"].tolist(), history[spec.metric].tolist(),
                                result.config)
        else:
            epochs, best = 0, float("nan")
        stop = "error" if result.error else (
            "completed" if epochs >= base.epochs else "stopped early (ASHA)")
        row.update({"epochs": epochs, f"best_{spec.metric}": best, "stop": stop,
                    "train_dir": str(Path(base.storage) / f"train-{trial_id}")})
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(f"best_{spec.metric}", ascending=spec.mode == "min",
                                           na_position="last")
    table.to_csv(experiment / RESULTS_CSV, index=False)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.drop(columns=["train_dir"]).to_string(index=False), flush=True)
    plots = plot_results(table, curves, spec, experiment)

    summary: dict[str, Any] = {"trials": len(table), "csv": str(experiment / RESULTS_CSV),
                               "plots": [str(p) for p in plots],
                               "epochs_run": int(table["epochs"].sum()),
                               "epochs_budget": len(table) * base.epochs}
    good = table.dropna(subset=[f"best_{spec.metric}"])
    if len(good):
        top = good.iloc[0]
        summary["best"] = {k: (v.item() if hasattr(v, "item") else v)
                           for k, v in top.to_dict().items()}
        ckpt = best_checkpoint_dir(top["train_dir"], (spec.metric, spec.mode))
        if export and ckpt is not None:
            import ray.train

            meta = export_checkpoint(
                ray.train.Checkpoint.from_directory(str(ckpt)), export, data=data, extra={
                    "tune": {"experiment": str(experiment), "trial": top["trial"],
                             "search_space": spec.search_space, "source": spec.source,
                             "params": {k: summary["best"][k] for k in searched}}})
            summary["exported"] = export
            print(f"exported trial {top['trial']} ({ckpt.name}) to {export}", flush=True)
            if "test" in meta:
                summary["test"] = meta["test"]
                print(format_test_score(meta), flush=True)
    (experiment / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def plot_results(table, curves, spec: TuneSpec, experiment: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    metric = f"best_{spec.metric}"
    if "lr" in table and table[metric].notna().any():
        fig, ax = plt.subplots(figsize=(6, 4))
        colour_by = "batch_size" if "batch_size" in table else None
        groups = table.groupby(colour_by) if colour_by else [("all", table)]
        for key, group in groups:
            ax.scatter(group["lr"], group[metric], label=f"{colour_by} {key}" if colour_by else None)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(metric)
        if colour_by:
            ax.legend()
        ax.set_title("best validation accuracy per trial")
        fig.tight_layout()
        paths.append(experiment / "lr_vs_accuracy.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for trial, (epochs, values, config) in curves.items():
            label = ", ".join(f"{k}={config.get(k):.3g}" if isinstance(config.get(k), float)
                              else f"{k}={config.get(k)}" for k in spec.search_space)
            ax.plot(epochs, values, marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(spec.metric)
        ax.set_title("learning curves")
        ax.legend(fontsize=6)
        fig.tight_layout()
        paths.append(experiment / "learning_curves.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="search-space YAML (tune_configs/*.yaml)")
    parser.add_argument("--data", required=True, help="as for train: SIGNS files, builtin:..., "
                        "or a folder or URI of photos in class sub-folders")
    parser.add_argument("--classes", default="", metavar="DIGITS",
                        help="with a folder of photos: the class sub-folders to search on")
    parser.add_argument("--strict", action="store_true",
                        help="with a folder of photos: an unreadable file is an error, not "
                             "skipped")
    parser.add_argument("--storage", default=DEFAULT_STORAGE)
    parser.add_argument("--name", default="tune")
    parser.add_argument("--export", help="write the best trial's best checkpoint here")
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
                         strict=a.strict)
    best = summary.get("best")
    if best is None:
        raise RunFailed(f"no trial of the search reported a result; see {summary['csv']}")
    print(f"{summary['trials']} trials, {summary['epochs_run']} of {summary['epochs_budget']} "
          f"epochs run; best: {best}\nresults: {summary['csv']}")


def main(argv: list[str] | None = None) -> int:
    """`python -m resnet_ray.tune ...`: the entry point for `ray job submit` and a RayJob."""
    return command_main("tune", "Ray Tune search over training options.", add_arguments,
                        command, argv)


if __name__ == "__main__":
    sys.exit(main())
