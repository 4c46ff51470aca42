"""Ray Train: 2 workers, identical replicas, export, resume, worker failure recovery."""

import contextlib
import io
import json
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from resnet_ray import waiting
from resnet_ray.config import TrainConfig
from resnet_ray.modeldir import load_model_dir
from resnet_ray.train import REPORTS_FILE, run_training

from conftest import assert_user_error, plan_of

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster")]


def _reports(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / REPORTS_FILE).read_text().splitlines()]


def _config(synth_dir, tmp_path, **overrides):
    values = dict(data=str(synth_dir), model="tiny", epochs=2, batch_size=32, num_workers=2,
                  storage=str(tmp_path / "runs"), name="run", export=str(tmp_path / "model"))
    values.update(overrides)
    return TrainConfig(**values)


@contextlib.contextmanager
def one_cpu_held_until_a_run_waits(waited_s: float):
    """A placement group holds one of the cluster's two CPUs, as one left by an interrupted
    run does, and lets it go once another group has waited `waited_s` to be placed."""
    import ray
    from ray.util.placement_group import (placement_group, placement_group_table,
                                          remove_placement_group)

    held = placement_group([{"CPU": 1}])
    ray.get(held.ready())

    def release():
        since = None
        while since is None or time.monotonic() - since < waited_s:
            time.sleep(0.2)
            if since is None and any(i["state"] == "PENDING"
                                     for i in placement_group_table().values()):
                since = time.monotonic()
        remove_placement_group(held)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(timeout=1)
        remove_placement_group(held)


@pytest.fixture(scope="module")
def two_worker_run(ray_cluster, synth_dir, tmp_path_factory):
    """Two workers, 2 epochs; they first wait for a CPU that another placement group holds."""
    tmp_path = tmp_path_factory.mktemp("two")
    cfg = _config(synth_dir, tmp_path)
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, one_cpu_held_until_a_run_waits(4.0), \
            contextlib.redirect_stdout(out):
        mp.setattr(waiting, "WAIT_S", 1.0)
        mp.setattr(waiting, "POLL_S", 0.5)
        result = run_training(cfg, quiet=True)
    return cfg, result, out.getvalue()


def test_a_run_that_cannot_place_its_workers_says_what_it_waits_for(two_worker_run):
    lines = [line for line in two_worker_run[2].splitlines() if line.startswith("waiting")]
    assert len(lines) == 1, two_worker_run[2]
    assert re.match(r"waiting for the cluster to place 2 worker\(s\) of 1 CPU: [\d.]+ of 2 "
                    r"CPUs are free\. The run starts when they are free", lines[0]), lines[0]


def test_the_wait_line_names_cpus_that_other_jobs_hold():
    table = {"aa01000000": {"state": "PENDING", "bundles": {0: {"CPU": 1.0}, 1: {"CPU": 1.0}}},
             "bb02000000": {"state": "CREATED", "bundles": {0: {"CPU": 1.0}}},
             "cc02000000": {"state": "REMOVED", "bundles": {0: {"CPU": 2.0}}}}
    line = waiting.pending_line(table, "01000000", {"CPU": 1.0}, {"CPU": 2.0})
    assert line.startswith("waiting for the cluster to place 2 worker(s) of 1 CPU: 1 of 2 CPUs "
                           "are free; placement groups of other jobs hold 1 CPUs (see docs")
    assert waiting.pending_line(table, "02000000", {}, {}) is None  # nothing of its own waits


def test_two_workers_train_and_export(two_worker_run):
    cfg, result, _ = two_worker_run
    assert result.metrics["epoch"] == 2 and result.metrics["world_size"] == 2
    model, meta = load_model_dir(cfg.export)
    assert meta["config"]["num_workers"] == 2 and meta["classes"] == cfg.classes
    assert model.output_shape == (None, 6)
    checkpoints = sorted(Path(cfg.run_dir).glob("checkpoint_epoch_*"))
    assert checkpoints, "no checkpoint kept"
    for ckpt in checkpoints:  # the run's plan travels with every checkpoint
        assert TrainConfig.load(ckpt / "config.json") == plan_of(cfg).config
    assert list((Path(cfg.run_dir) / "tensorboard").glob("events.out.tfevents.*"))


def test_export_scores_the_held_out_test_file_and_records_the_split(two_worker_run):
    from resnet_ray.data import load_data_dir
    from resnet_ray.evaluate import evaluate

    cfg, _, _ = two_worker_run
    _, meta = load_model_dir(cfg.export)
    train, test = load_data_dir(cfg.data)
    split = meta["data"]
    assert split["train"]["images"] + split["validation"]["images"] == len(train)
    assert split["test"]["images"] == meta["test"]["images"] == len(test)
    assert split["train"]["sha256"] and split["test"]["sha256"] != split["train"]["sha256"]
    # the number recorded at export is what `resnet-ray evaluate` measures on that file
    assert meta["test"]["accuracy"] == pytest.approx(
        evaluate(cfg.export, test.source)["accuracy"])


def test_every_epoch_reports_metrics_and_replicas_stay_identical(two_worker_run):
    cfg, _, _ = two_worker_run
    reports = _reports(cfg.run_dir)
    for epoch in (1, 2):
        at = [r for r in reports if r["epoch"] == epoch]
        assert sorted(r["rank"] for r in at) == [0, 1]
        assert len({r["weights_digest"] for r in at}) == 1, "replicas diverged"
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s"):
            assert np.isfinite(at[0][key])
    assert reports[0]["weights_digest"] != reports[-1]["weights_digest"], "weights never changed"


def test_rerun_of_a_finished_run_trains_nothing_more_and_exports(two_worker_run, tmp_path,
                                                                    cli):
    """(A re-run that asks for more epochs resumes: tests/reliability/test_training.py.)"""
    cfg, _, _ = two_worker_run
    reports = _reports(cfg.run_dir)
    proc = cli("train", "--data", cfg.data, "--model", cfg.model, "--epochs", cfg.epochs,
               "--num-workers", cfg.num_workers, "--storage", cfg.storage, "--name", cfg.name,
               "--export", tmp_path / "again")
    assert proc.returncode == 0, proc.stderr
    assert f"already holds {cfg.epochs} epochs: nothing to train" in proc.stdout, proc.stdout
    assert proc.stdout.splitlines()[-1].startswith(f"finished: {cfg.epochs} epochs")
    assert _reports(cfg.run_dir) == reports
    assert load_model_dir(tmp_path / "again")[1]["metrics"]["epoch"] == cfg.epochs


def test_one_and_two_workers_learn_alike(two_worker_run, tiny_model_dir, synth_dir, tmp_path):
    from resnet_ray.checkpoints import CONFIG_FILE, checkpoint_score, complete_checkpoints

    two, result, _ = two_worker_run
    # Plain Keras in this process: the session's tiny model is that run (num_workers 0).
    plain_dir = tiny_model_dir.parent / "runs" / "tiny"
    plain = TrainConfig.load(plain_dir / CONFIG_FILE)
    same = {"storage", "name", "export"}
    assert {k: v for k, v in plain.to_dict().items() if k not in same} == \
        {k: v for k, v in plan_of(_config(synth_dir, tmp_path, num_workers=0)).config
         .to_dict().items() if k not in same}
    last = complete_checkpoints(plain_dir)[-1]
    assert checkpoint_score(last, "epoch") == two.epochs
    losses = {0: checkpoint_score(last, "loss"), 2: result.metrics["loss"]}
    # The lone Ray worker gets every CPU, so its thread pools are the size of this
    # process's (TensorFlow's defaults): with other sizes the kernels sum in another
    # order, and that rounding grows over the epochs.
    one = _config(synth_dir, tmp_path, num_workers=1, name="w1", export=None,
                  storage=str(tmp_path / "runs1"), cpus_per_worker=os.cpu_count())
    losses[1] = run_training(one, quiet=True).metrics["loss"]
    for cfg in (plan_of(two).config, plan_of(one).config):
        reports = [r for r in _reports(cfg.run_dir) if r["epoch"] <= 2]
        assert {r["strategy"] for r in reports} == {
            "MultiWorkerMirroredStrategy" if cfg.num_workers == 2 else
            "default (one worker, no all-reduce)"}
        # TensorFlow sizes its pools by the host's cores; a worker uses what Ray gave it.
        assert {r["tf_threads"] for r in reports} == {cfg.cpus_per_worker}
    # A lone Ray worker trains as plain Keras in this process does: same gradients, same
    # data order, same augmentation.
    assert losses[1] == pytest.approx(losses[0], rel=1e-3), losses
    # Same seed, same global batch, same examples per step: only BatchNormalization's
    # per-worker batch statistics differ.
    assert losses[2] == pytest.approx(losses[1], rel=0.15), losses


def test_uneven_global_batch_is_refused(cli, synth_dir, tmp_path):
    proc = cli("train", "--data", synth_dir, "--batch-size", 33, "--num-workers", 2,
                   "--storage", tmp_path)
    assert_user_error(proc, "batch_size", "33", "2 workers")


def test_a_gpu_run_asks_ray_for_one_gpu_per_worker(synth_dir, tmp_path):
    """What can be checked without a GPU: the placement request (bench/gpu_check.sh runs the
    rest on a GPU machine)."""
    from resnet_ray.train import build_trainer

    plan = plan_of(_config(synth_dir, tmp_path, use_gpu=True, cpus_per_worker=4))
    assert plan.config.precision == "mixed_float16"
    trainer = build_trainer(plan)
    assert trainer.scaling_config.num_workers == 2
    assert trainer.scaling_config._resources_per_worker_not_none == {"CPU": 4, "GPU": 1}
