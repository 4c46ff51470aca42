"""A run's plan: the config resolved once, before any worker starts, and never changed after;
the one rule that chooses checkpoints; run directories of older versions still resume."""

import dataclasses
import json
import shutil

import pytest

from resnet_ray.checkpoints import CONFIG_FILE, ranked
from resnet_ray.config import TrainConfig
from resnet_ray.errors import ConfigError
from resnet_ray.layout import Node
from resnet_ray.plan import RAY_SNAPSHOT, resolve


def _nowhere():
    raise AssertionError("the plan asked for the cluster")


def test_the_plan_is_resolved_once_and_frozen(synth_dir, tmp_path):
    cfg = TrainConfig(data=str(synth_dir), model="tiny", storage=str(tmp_path))
    asked = []
    plan = resolve(cfg, lambda: asked.append(1) or [Node(cpus=2, flags=frozenset({"avx2"}))])
    assert asked == [1]  # the cluster was asked once, for the layout
    c = plan.config
    assert (c.num_workers, c.cpus_per_worker, c.allreduce_dtype, c.precision) == \
        (1, 2, "float32", "float32")
    assert c.classes == [0, 1, 2, 3, 4, 5] and c.input_shape == (64, 64, 3)
    assert plan.layout_line.startswith("layout: 1 worker(s) x 2 CPU, precision float32")
    assert cfg.num_workers is None and cfg.precision == "auto"  # the user's config is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.config.epochs = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.in_process = True
    record = plan.record()
    assert (record["num_workers"], record["precision"], record["data_source"]) == \
        (1, "float32", "h5")
    assert record["checkpoints"] == {"keep": 2, "by": ["val_accuracy", "max"]}


def test_a_run_in_this_process_never_asks_for_a_cluster(synth_dir, tmp_path):
    plan = resolve(TrainConfig(data=str(synth_dir), num_workers=0, storage=str(tmp_path)),
                   _nowhere)
    assert plan.in_process and plan.threads is None and plan.config.precision != "auto"
    with pytest.raises(ConfigError, match="storage: a single-process run"):
        resolve(TrainConfig(data=str(synth_dir), num_workers=0, storage="s3://b/runs"),
                _nowhere)
    with pytest.raises(ConfigError, match="trials run on Ray workers"):
        resolve(TrainConfig(data=str(synth_dir), num_workers=0), _nowhere, search=True)


def test_one_rule_chooses_checkpoints():
    pairs = [("e1", {"epoch": 1, "val_accuracy": 0.9, "val_loss": 0.3}),
             ("e2", {"epoch": 2, "val_accuracy": 1.0, "val_loss": 0.2}),
             ("e3", {"epoch": 3, "val_accuracy": 1.0, "val_loss": 0.2}),
             ("e4", {"epoch": 4, "val_accuracy": float("nan"), "val_loss": 0.1}),
             ("e5", {"epoch": 5})]
    # Of equal scores the later epoch first, as Ray Train keeps them; NaN last; none: out.
    assert ranked(pairs) == ["e3", "e2", "e1", "e4"]
    assert ranked(pairs, ("val_loss", "min")) == ["e4", "e3", "e2", "e1"]


def test_a_finished_run_of_an_older_version_exports_without_a_cluster(tiny_model_dir,
                                                                        synth_dir, tmp_path):
    """A run directory written before plans existed: its config still says "auto" where the
    plan now records what ran. Re-running it asks nothing of a cluster and exports again."""
    from resnet_ray.export import export_checkpoint
    from resnet_ray.checkpoints import best_checkpoint

    run_dir = tmp_path / "runs" / "old"
    source = sorted((tiny_model_dir.parent / "runs" / "tiny").glob("checkpoint_epoch_*"))[-1]
    shutil.copytree(source, run_dir / source.name)
    old = json.loads((run_dir / source.name / CONFIG_FILE).read_text())
    old.update(num_workers=1, cpus_per_worker=2, precision="auto", allreduce_dtype="auto",
               storage=str(tmp_path / "runs"), name="old")
    (run_dir / source.name / CONFIG_FILE).write_text(json.dumps(old))
    (run_dir / RAY_SNAPSHOT).write_text("{}")
    cfg = TrainConfig(data=str(synth_dir), model="tiny", epochs=2, storage=str(tmp_path / "runs"),
                      name="old", export=str(tmp_path / "model"))
    plan = resolve(cfg, _nowhere)
    assert plan.finished == 2 and plan.config.precision == "auto"
    assert plan.config.export == str(tmp_path / "model")
    meta = export_checkpoint(best_checkpoint(plan.run_dir, plan.score), cfg.export, plan)
    assert meta["test"]["images"] == len(plan.source.test) and meta["plan"]["in_process"] is False
    # Another model under the same name is refused, naming what differs.
    with pytest.raises(ConfigError, match="model 'resnet50' here, 'tiny' there"):
        resolve(dataclasses.replace(cfg, model="resnet50"), _nowhere)
