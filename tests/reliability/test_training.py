"""Training under faults: a worker SIGKILLed at a random step (seeded runs), the driver killed
and the command re-run, a Tune trial whose worker dies once (in the shared smoke search)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from resnet_ray.config import TrainConfig
from resnet_ray.modeldir import load_model_dir
from resnet_ray.checkpoints import restore_checkpoint
from resnet_ray.optim import build_compiled
from resnet_ray.testhooks import KILL_ENV
from resnet_ray.sources import open_source
from resnet_ray.train import REPORTS_FILE, run_training

from conftest import internal_lines, run_cli

pytestmark = [pytest.mark.ray, pytest.mark.reliability]
EPOCHS, BATCH = 3, 32


def _reports(run_dir):
    path = Path(run_dir) / REPORTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_checkpoints_readable(run_dir, cfg):
    checkpoints = sorted(Path(run_dir).glob("checkpoint_epoch_*"))
    assert checkpoints
    for ckpt in checkpoints:
        model, optimizer = build_compiled(cfg)
        state = restore_checkpoint(ckpt, model, optimizer)  # raises if half-written
        assert state["epoch"] == int(ckpt.name.rsplit("_", 1)[1])
    # Half-written checkpoints would be left as temporary directories beside the real ones.
    leftovers = [p.name for p in Path(run_dir).iterdir()
                 if p.is_dir() and (p.name.startswith(".") or "tmp" in p.name)]
    assert not leftovers, leftovers


@pytest.mark.parametrize("seed", [0] + [pytest.param(s, marks=pytest.mark.long)
                                        for s in range(1, 10)])
def test_worker_sigkilled_at_a_random_step_is_recovered(ray_cluster, synth_dir, tmp_path,
                                                        monkeypatch, seed):
    cfg = TrainConfig(data=str(synth_dir), model="tiny", epochs=EPOCHS, batch_size=BATCH,
                      num_workers=2, max_failures=1, storage=str(tmp_path / "runs"),
                      name="kill", export=str(tmp_path / "model"), seed=seed)
    # The steps of the run itself: the validation split is taken out of the training file.
    steps = EPOCHS * (open_source(cfg).train_images // BATCH)
    rng = np.random.default_rng(seed)
    step, rank = int(rng.integers(1, steps)), int(rng.integers(0, 2))
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ENV, f"{step}:{rank}:{marker}")
    result = run_training(cfg, quiet=True)
    assert marker.exists(), f"rank {rank} was not killed at step {step}"
    assert result.metrics["epoch"] == EPOCHS
    reports = _reports(cfg.run_dir)
    for r in (0, 1):
        epochs = [x["epoch"] for x in reports if x["rank"] == r]
        assert epochs == list(range(1, EPOCHS + 1)), f"rank {r}: {epochs} (killed at {step})"
    _assert_checkpoints_readable(cfg.run_dir, cfg)
    assert load_model_dir(cfg.export)[1]["metrics"]["epoch"] >= 1
    print(f"\nseed {seed}: rank {rank} SIGKILLed after step {step}/{steps}; run completed")


def _kill_what_the_lost_machine_ran():
    """Ray's worker processes lead process groups of their own, so killing the driver's
    group leaves them to notice their raylet is gone; on a lost machine they would be gone
    with it. The shared cluster is stopped (private_ray): every Ray process here is the
    killed run's."""
    import psutil

    left = [p for p in psutil.process_iter(["cmdline"])
            if any(part.startswith("ray::") or part.endswith(("raylet", "gcs_server"))
                   for part in (p.info["cmdline"] or []))]
    for p in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(left, timeout=30)


def test_killed_driver_then_rerun_resumes(private_ray, synth_dir, tmp_path):
    """The re-run also asks for one epoch more than the killed run: a longer re-run resumes
    too (the config may change its epochs). It joins a cluster that `ray start` started, as a
    user's next step would be; Ray 2.60 starts one with token authentication."""
    args = ["train", "--data", synth_dir, "--model", "tiny", "--num-workers", 2,
            "--storage", tmp_path / "runs", "--name", "driver", "--export", tmp_path / "model"]
    epochs, run_dir = 5, tmp_path / "runs" / "driver"
    # Its own session: the driver and the Ray it started die together, as on a lost machine.
    proc = subprocess.Popen([sys.executable, "-m", "resnet_ray", *map(str, args),
                             "--epochs", str(epochs - 1)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while not any(r["epoch"] >= 2 for r in _reports(run_dir)):
        assert proc.poll() is None and time.time() < deadline, "no epoch 2 before the kill"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _kill_what_the_lost_machine_ran()
    before = _reports(run_dir)
    assert max(r["epoch"] for r in before) < epochs - 1, "finished before the kill"

    ray = Path(sys.executable).with_name("ray")
    subprocess.run([ray, "start", "--head", "--num-cpus", "2",
                    "--disable-usage-stats"], check=True, capture_output=True, timeout=120)
    try:
        again = run_cli(*args, "--epochs", epochs, timeout=900)
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "joining the Ray cluster already running at " in again.stderr
    assert "resumed from" in again.stdout, again.stdout[-2000:]
    # Quiet by default: where the logs are, then progress and results, none of Ray's or
    # TensorFlow's own lines (a fresh local Ray and TensorFlow print plenty).
    assert internal_lines(again.stdout, again.stderr) == [], again.stdout + again.stderr
    logs = again.stdout.splitlines()[0]
    assert logs.startswith("logs: Ray: ") and "--verbose" in logs, logs
    assert Path(logs.split()[2].rstrip(",")).is_dir()  # the Ray session's log folder
    assert again.stdout.splitlines()[-1].startswith(f"finished: {epochs} epochs")
    after = _reports(run_dir)[len(before):]
    first = min(r["epoch"] for r in after)
    assert 1 < first <= max(r["epoch"] for r in before) + 1, (before, after)
    for rank in (0, 1):
        epochs_after = [r["epoch"] for r in after if r["rank"] == rank]
        assert epochs_after == list(range(first, epochs + 1)), epochs_after
    assert load_model_dir(tmp_path / "model")[1]["metrics"]["epoch"] >= 1


def test_tune_trial_whose_worker_dies_once_recovers(smoke_search):
    """The smoke search (tests/conftest.py) killed one trial's worker once."""
    _, base, _, _, _ = smoke_search
    assert (base / "fault").exists(), "the fault was not injected"
    table = pd.read_csv(base / "smoke" / "trials.csv")
    assert (table["stop"] != "error").all(), table
    for reports in (base / "smoke").rglob(REPORTS_FILE):
        epochs = [json.loads(line)["epoch"] for line in reports.read_text().splitlines()]
        assert epochs == list(range(1, len(epochs) + 1)), (reports, epochs)
