"""`ray job submit` against a cluster started with `ray start --head` on loopback."""

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from resnet_ray.export import load_model_dir

from conftest import ROOT

pytestmark = pytest.mark.ray

# Outside Ray's default worker port range (10002-19999) and away from a default cluster's.
GCS_PORT, DASHBOARD_PORT, AGENT_PORT = 6391, 8277, 52391
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def head_node(tmp_path_factory):
    """A one-node cluster in its own process group, so that stopping it stops nothing else."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    temp = tmp_path_factory.mktemp("ray")
    log = open(temp / "head.log", "w")
    # A job's `python` is whatever the head's PATH finds first: this interpreter, as in an
    # activated virtual environment or the project's container image.
    env = {**os.environ, "RAY_AUTH_MODE": "token",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={GCS_PORT}", f"--dashboard-port={DASHBOARD_PORT}",
         "--dashboard-host=127.0.0.1", f"--dashboard-agent-listen-port={AGENT_PORT}",
         "--num-cpus=2", "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    address = f"http://127.0.0.1:{DASHBOARD_PORT}"
    deadline = time.time() + 120
    while time.time() < deadline:
        ready = subprocess.run([RAY, "job", "list", "--address", address], env=env,
                               capture_output=True, text=True)
        if ready.returncode == 0:
            break
        assert proc.poll() is None, (temp / "head.log").read_text()
        time.sleep(2)
    else:
        pytest.fail(f"cluster did not come up: {(temp / 'head.log').read_text()[-2000:]}")
    yield address, env
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()
    # `ray stop` would remove this pointer to the cluster, but would also stop every other
    # Ray on the machine; remove just ours.
    from resnet_ray.train import CURRENT_CLUSTER_FILE

    if CURRENT_CLUSTER_FILE.exists() and \
            CURRENT_CLUSTER_FILE.read_text().strip().endswith(f":{GCS_PORT}"):
        CURRENT_CLUSTER_FILE.unlink()


def test_job_submit_trains_two_workers_and_exports(head_node, synth_dir, tmp_path):
    address, env = head_node
    job_id = f"resnet-ray-test-{uuid.uuid4().hex[:8]}"
    export = tmp_path / "model"
    submit = subprocess.run(
        [RAY, "job", "submit", "--address", address, "--submission-id", job_id,
         "--runtime-env", "cluster/runtime_env.yaml", "--",
         "python", "-m", "resnet_ray.train", "--data", str(synth_dir), "--model", "tiny",
         "--epochs", "1", "--num-workers", "2", "--storage", str(tmp_path / "runs"),
         "--name", "job", "--export", str(export)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    status = subprocess.run([RAY, "job", "status", "--address", address, job_id], env=env,
                            capture_output=True, text=True)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", status.stdout + status.stderr)
    assert re.search(r"succeeded", plain, re.I) and not re.search(r"failed", plain, re.I), \
        (plain, submit.stdout[-3000:], submit.stderr[-3000:])
    assert "epoch 1/1" in submit.stdout
    model, meta = load_model_dir(export)
    assert meta["config"]["num_workers"] == 2 and meta["metrics"]["epoch"] == 1
