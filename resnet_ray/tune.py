"""Ray Tune search over the Ray Train run: search spaces from YAML, ASHA early stopping,
a results table and plots, and the best trial's best checkpoint exported.

Each trial is a Tune function trainable that builds and fits the project's TensorflowTrainer
(the Ray 2.60 pattern; `Tuner(trainer)` is deprecated), with metrics forwarded to Tune by
`TuneReportCallback`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import DEFAULT_STORAGE, TrainConfig
from .errors import ConfigError

DISTRIBUTIONS = {"loguniform": 2, "uniform": 2, "randint": 2, "choice": None, "grid": None}
SEARCHERS = ("random", "optuna", "hyperopt")
SCHEDULERS = ("asha", "fifo")
TOP_KEYS = {"train", "search_space", "num_samples", "scheduler", "searcher", "metric", "mode",
            "max_concurrent", "seed"}
SCHEDULER_KEYS = {"type", "grace_period", "reduction_factor"}
# Given on the command line, not in a search-space file.
CLI_ONLY = {"data", "storage", "name", "export"}
RESULTS_CSV = "trials.csv"


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
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in train:
        if key not in fields - CLI_ONLY:
            raise ConfigError(f"{path}: unknown key 'train.{key}'; expected one of "
                              f"{sorted(fields - CLI_ONLY)}")
    base = TrainConfig.from_dict({**train, "data": "-"}, source=f"{path}: train")
    if base.num_workers < 1:
        raise ConfigError(f"{path}: train.num_workers must be at least 1 for a search")

    space = raw.get("search_space")
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{path}: key 'search_space' must map at least one training option "
                          "to a distribution, e.g. lr: {loguniform: [1.0e-4, 1.0e-2]}")
    for key, dist in space.items():
        _check_distribution(path, key, dist, fields, base)

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
    scheduler = raw.get("scheduler", {"type": "asha"})
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
    spec.scheduler = {"type": "asha", **scheduler}
    return spec


def _check_distribution(path: str, key: str, dist: Any, fields: set[str],
                        base: TrainConfig) -> None:
    where = f"{path}: search_space.{key}"
    if key not in fields - CLI_ONLY - {"input_shape", "classes"}:
        raise ConfigError(f"{where}: {key!r} is not a training option; expected one of "
                          f"{sorted(fields - CLI_ONLY - {'input_shape', 'classes'})}")
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


def tune_trial(params: dict[str, Any], data=None, base: dict[str, Any] | None = None) -> None:
    """One trial: a Ray Train run of the project's trainer with this trial's parameters."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from .train import build_trainer

    overrides = dict(params)
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = TrainConfig.from_dict({**base, **overrides, "name": f"train-{trial_id}",
                                 "export": None})
    # A restored search re-runs an unfinished trial under the same name, so its Train run
    # resumes from its own latest checkpoint.
    build_trainer(cfg.validate(), data, callbacks=[TuneReportCallback()]).fit()


def run_search(spec: TuneSpec, data_dir: str, storage: str = DEFAULT_STORAGE,
               name: str = "tune", export: str | None = None, max_concurrent: int | None = None,
               num_samples: int | None = None, resume: bool = False) -> dict[str, Any]:
    import ray
    from ray import tune

    from .train import init_ray, prepare_config

    if "://" in storage:
        raise ConfigError(f"--storage: searches keep their results table, plots and the "
                          f"trials' checkpoints on a local or shared path, got {storage!r}")
    base = TrainConfig.from_dict({**spec.train, "data": data_dir, "storage": "", "name": name})
    base, train, val, test = prepare_config(base)
    experiment = Path(storage).absolute() / name
    base.storage = str(experiment / "trials")
    init_ray()
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
        tune.with_parameters(tune_trial, data=(train, val), base=base.to_dict()),
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
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                metric=spec.metric, mode=spec.mode, num_samples=num_samples or spec.num_samples,
                search_alg=_searcher(spec, concurrent), scheduler=_scheduler(spec, base.epochs),
                max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name=name, storage_path=str(Path(storage).absolute()),
                                      failure_config=tune.FailureConfig(max_failures=1)),
        )
    results = tuner.fit()
    return summarize(results, spec, base, experiment, export, data=(train, val, test))


def summarize(results, spec: TuneSpec, base: TrainConfig, experiment: Path,
              export: str | None, data=None) -> dict[str, Any]:
    """Trials table (printed and CSV), plots, and the best checkpoint exported (scored on
    the held-out test file when data = (train, validation, test) is given)."""
    import pandas as pd

    from .train import test_score_line, best_checkpoint_dir, export_checkpoint

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
        ckpt = best_checkpoint_dir(top["train_dir"], spec.metric, spec.mode)
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
                print(test_score_line(meta), flush=True)
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



def main(argv: list[str] | None = None) -> int:
    """`python -m resnet_ray.tune ...`: the entrypoint for `ray job submit` and a RayJob."""
    from .cli import main as cli_main

    return cli_main(["tune", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
