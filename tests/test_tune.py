"""Ray Tune: search-space files, the smoke search with ASHA, export, resume (the search is
the session's smoke_search fixture in tests/conftest.py)."""

import pandas as pd
import pytest
import yaml

from resnet_ray.config import MODEL_NAMES
from resnet_ray.errors import ConfigError
from resnet_ray.modeldir import load_model_dir
from resnet_ray.tune import load_spec

from conftest import ROOT, SMOKE_SEARCH, assert_user_error

CONFIGS = sorted((ROOT / "tune_configs").glob("*.yaml"))


def test_model_names_match_the_builders():
    from resnet_ray.model import MODELS

    assert set(MODELS) == set(MODEL_NAMES)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_search_spaces_load(path):
    spec = load_spec(path)
    assert {"lr", "batch_size"} <= set(spec.search_space)
    assert spec.num_samples >= 4


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_resnet50_searches_leave_each_trial_the_automatic_layout(path):
    """One worker with a node's CPUs per trial: 2 x 1 CPU on one host gains nothing."""
    train = load_spec(path).train
    if train.get("model", "resnet50") == "resnet50":
        assert not {"num_workers", "cpus_per_worker"} & set(train), path.name


def test_one_shipped_config_searches_more_than_lr_and_batch_size():
    assert any(set(load_spec(p).search_space) - {"lr", "batch_size"} for p in CONFIGS)


def _write(tmp_path, doc):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return path


GOOD = {"train": {"model": "tiny", "epochs": 2, "num_workers": 1},
        "search_space": {"lr": {"loguniform": [1e-4, 1e-2]}, "batch_size": {"choice": [16, 32]}}}

BAD = {
    "unknown top key": ({**GOOD, "trials": 3}, "unknown key 'trials'"),
    "unknown train key": ({**GOOD, "train": {"epochz": 3}}, "train.epochz"),
    "unknown option in space": ({**GOOD, "search_space": {"momentum": {"uniform": [0, 1]}}},
                                "search_space.momentum"),
    "bad distribution": ({**GOOD, "search_space": {"lr": {"logunif": [1e-4, 1e-2]}}},
                         "unknown distribution 'logunif'"),
    "empty choice": ({**GOOD, "search_space": {"batch_size": {"choice": []}}},
                     "search_space.batch_size.choice: expected a non-empty list"),
    "low above high": ({**GOOD, "search_space": {"lr": {"uniform": [0.1, 0.01]}}},
                       "search_space.lr.uniform"),
    "string bounds": ({**GOOD, "search_space": {"lr": {"loguniform": ["a", "b"]}}},
                      "expected [low, high] numbers"),
    "uneven batch": ({**GOOD, "train": {"num_workers": 2},
                      "search_space": {"batch_size": {"choice": [16, 33]}}},
                     "search_space.batch_size: value 33 is invalid"),
    "wrong type": ({**GOOD, "num_samples": "many"}, "key 'num_samples' must be a int"),
    "bad scheduler": ({**GOOD, "scheduler": {"type": "pbt"}}, "scheduler.type"),
    "bad searcher": ({**GOOD, "searcher": "grid"}, "key 'searcher' must be one of"),
    "not a mapping": ("- just\n- a list\n", "expected a mapping"),
    "not yaml": ("train: [unclosed\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_search_space_files_are_named(tmp_path, case):
    doc, fragment = BAD[case]
    path = _write(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert str(path) in str(info.value) and fragment in str(info.value), str(info.value)


def test_cli_reports_a_bad_yaml_without_traceback(cli, tmp_path, synth_dir):
    path = _write(tmp_path, BAD["bad distribution"][0])
    assert_user_error(cli("tune", "--config", path, "--data", synth_dir,
                              "--storage", tmp_path), str(path), "logunif")


def test_asha_stops_a_trial_below_its_first_rung_cutoff():
    """The smoke search's scheduler as Tune gets it: epochs as time, its metric and mode.
    Whether a 4-trial search stops any trial depends on the order its trials reach a rung,
    so the search itself is not asked to stop one (bench tune measures what ASHA saves)."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from resnet_ray.tune_space import scheduler as make_scheduler

    spec = load_spec(SMOKE_SEARCH)
    scheduler = make_scheduler(spec, spec.train["epochs"])
    scheduler.set_search_properties(spec.metric, spec.mode)  # as tune.TuneConfig passes them
    trials = {name: SimpleNamespace(trial_id=name) for name in ("first", "worse", "better")}
    for trial in trials.values():
        scheduler.on_trial_add(None, trial)
    first, worse, better = (0.4, 0.3, 0.5) if spec.mode == "max" else (1.80, 1.87, 1.73)
    actions = {name: scheduler.on_trial_result(None, trials[name],
                                               {"epoch": 1, spec.metric: value})
               for name, value in (("first", first), ("worse", worse), ("better", better))}
    assert actions == {"first": TrialScheduler.CONTINUE, "worse": TrialScheduler.STOP,
                       "better": TrialScheduler.CONTINUE}


@pytest.mark.ray
def test_smoke_search_runs_every_trial_and_draws_its_curves(smoke_search):
    spec, base, _, _, _ = smoke_search
    table = pd.read_csv(base / "smoke" / "trials.csv")
    assert len(table) == spec.num_samples and (table["stop"] != "error").all(), table
    assert {"lr", "batch_size", "epochs", f"best_{spec.metric}", "stop"} <= set(table.columns)
    assert table["epochs"].between(1, spec.train["epochs"]).all(), table
    for name in ("lr_vs_accuracy.png", "learning_curves.png"):
        assert (base / "smoke" / name).read_bytes()[:4] == b"\x89PNG"
    # TensorBoard event files for every trial under the search's directory
    assert len(list((base / "smoke").rglob("events.out.tfevents.*"))) >= len(table)


@pytest.mark.ray
def test_smoke_search_exports_the_best_trial(smoke_search):
    spec, base, summary, _, _ = smoke_search
    model, meta = load_model_dir(base / "best")
    table = pd.read_csv(base / "smoke" / "trials.csv")
    best = table.iloc[0]
    assert meta["tune"]["trial"] == best["trial"]
    assert meta["config"]["lr"] == pytest.approx(best["lr"])
    assert meta["metrics"][spec.metric] == pytest.approx(best[f"best_{spec.metric}"])


@pytest.mark.ray
def test_interrupted_search_resumes_without_rerunning_finished_trials(smoke_search, cli):
    _, base, _, done, args = smoke_search
    for name, before in done.items():  # finished trials were not run again
        assert (base / "smoke" / name / "result.json").read_text() == before
    assert_user_error(cli(*args), "already exists")
