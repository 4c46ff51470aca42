"""A search's Ray Tune parts: its search space, searcher and scheduler translated from a
search-space file (resnet_ray/tune_spec.py), and the trial function, a Ray Train run of the
project's trainer with the trial's options."""

from __future__ import annotations

import os
from typing import Any

from .errors import ConfigError
from .tune_spec import TuneSpec


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


def searcher(spec: TuneSpec, max_concurrent: int):
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


def scheduler(spec: TuneSpec, max_epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler["type"] == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", max_t=max_epochs,
                         grace_period=min(spec.scheduler.get("grace_period", 1), max_epochs),
                         reduction_factor=spec.scheduler.get("reduction_factor", 2))


def tune_trial(params: dict[str, Any], plan=None, hooks: dict[str, str] | None = None) -> None:
    """One trial: a Ray Train run of the project's trainer, the search's plan with this
    trial's parameters. A restored search re-runs an unfinished trial under the same name,
    so its Train run resumes from its own latest checkpoint; checkpoints are kept by the
    search's metric, so the one exported is the trial's best."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from .train import build_trainer

    os.environ.update(hooks or {})  # test-only fault hooks set where the search started
    trial = plan.for_trial(dict(params), f"train-{ray.tune.get_context().get_trial_id()}")
    build_trainer(trial, callbacks=[TuneReportCallback()]).fit()
