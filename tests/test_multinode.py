"""A multi-node Ray cluster on this host (cluster/local_cluster.py: a head with no CPUs and
three 1-CPU worker nodes on 127.0.0.1): training spread over nodes through `ray job submit`,
a node lost mid-run, and Serve replicas on different nodes."""

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from resnet_ray.modeldir import load_model_dir
from resnet_ray.train import REPORTS_FILE

from conftest import ROOT, stop_ray, random_images

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.private_cluster]

SCRIPT = ROOT / "cluster" / "local_cluster.py"
RAY = str(Path(sys.executable).with_name("ray"))
SERVE = str(Path(sys.executable).with_name("serve"))
# Away from the job-submit test's cluster and from Ray's defaults.
PORT, DASHBOARD_PORT, HTTP_PORT = 6392, 8278, 8392


def script(state_dir, *args, check=True, timeout=300):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--state-dir", str(state_dir), *args],
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    stop_ray()  # two clusters on one host break Ray Train
    state_dir = tmp_path_factory.mktemp("cluster")
    script(state_dir, "start", "--workers", "3", "--cpus-per-worker", "1", "--head-cpus", "0",
           "--port", str(PORT), "--dashboard-port", str(DASHBOARD_PORT))
    state = json.loads((state_dir / "cluster.json").read_text())
    env = {**os.environ, "RAY_AUTH_MODE": "token",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    yield state_dir, state["address"], env
    script(state_dir, "stop")
    assert not (state_dir / "cluster.json").exists()


def nodes(state_dir):
    return json.loads(script(state_dir, "nodes").stdout)


def submit(address, env, args, wait=True, runtime_env="cluster/runtime_env.yaml"):
    job_id = f"resnet-ray-{uuid.uuid4().hex[:8]}"
    cmd = [RAY, "job", "submit", "--address", address, "--submission-id", job_id,
           "--runtime-env", str(runtime_env)]
    if not wait:
        cmd.append("--no-wait")
    proc = subprocess.run([*cmd, "--", "python", "-m", "resnet_ray.train", *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    return job_id, proc


def job_status(address, env, job_id):
    out = subprocess.run([RAY, "job", "status", "--address", address, job_id], env=env,
                         capture_output=True, text=True)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    found = re.findall(r"\b(PENDING|RUNNING|SUCCEEDED|FAILED|STOPPED)\b", plain, re.I)
    return found[-1].upper() if found else plain


def job_logs(address, env, job_id):
    return subprocess.run([RAY, "job", "logs", "--address", address, job_id], env=env,
                          capture_output=True, text=True).stdout


def reports(run_dir):
    path = Path(run_dir) / REPORTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cluster_has_a_cpu_less_head_and_three_worker_nodes(cluster):
    state_dir, _, _ = cluster
    assert set(nodes(state_dir)) == {"head", "worker1", "worker2", "worker3"}
    status = script(state_dir, "status").stdout
    assert re.search(r"\b3\.0 ?CPU\b", status), status


def test_job_trains_two_workers_on_two_nodes_and_exports(cluster, synth_dir, tmp_path):
    state_dir, address, env = cluster
    export = tmp_path / "model"
    job_id, proc = submit(address, env, [
        "--data", synth_dir, "--model", "tiny", "--epochs", 2, "--num-workers", 2,
        "--storage", tmp_path / "runs", "--name", "multi", "--export", export])
    assert job_status(address, env, job_id) == "SUCCEEDED", (proc.stdout[-3000:],
                                                             proc.stderr[-3000:])
    assert "epoch 2/2" in proc.stdout  # `ray job submit` streams the job's progress lines
    by_rank = {}
    run_reports = reports(tmp_path / "runs" / "multi")
    for r in run_reports:
        by_rank.setdefault(r["rank"], set()).add(r["node_id"])
    ids = nodes(state_dir)
    assert set(by_rank) == {0, 1}
    node_of = {rank: next(iter(n)) for rank, n in by_rank.items()}
    assert node_of[0] != node_of[1], "both workers ran on one node"
    assert ids["head"] not in node_of.values(), "a training worker ran on the head"
    _, meta = load_model_dir(export)
    # The export is this run's best epoch by validation accuracy (both epochs are kept).
    assert meta["config"]["num_workers"] == 2
    assert meta["metrics"]["val_accuracy"] == pytest.approx(
        max(r["val_accuracy"] for r in run_reports))


def test_workers_on_two_nodes_read_disjoint_shards_of_a_folder(cluster, tmp_path):
    from test_folders import write_folder

    from resnet_ray.testhooks import RECORD_ENV

    state_dir, address, env = cluster
    photos = write_folder(tmp_path / "photos", classes=(0, 1, 2), per_class=40)
    record = tmp_path / "files"
    record.mkdir()
    runtime_env = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    runtime_env["env_vars"][RECORD_ENV] = str(record)
    (tmp_path / "runtime_env.yaml").write_text(yaml.safe_dump(runtime_env))
    job_id, proc = submit(address, env, [
        "--data", photos, "--model", "tiny", "--epochs", 2, "--num-workers", 2,
        "--batch-size", 8, "--keep-images", 0, "--storage", tmp_path / "runs",
        "--name", "folder"],
        runtime_env=tmp_path / "runtime_env.yaml")
    assert job_status(address, env, job_id) == "SUCCEEDED", (proc.stdout[-3000:],
                                                             proc.stderr[-3000:])
    node_of = {r["rank"]: r["node_id"] for r in reports(tmp_path / "runs" / "folder")}
    assert set(node_of) == {0, 1} and node_of[0] != node_of[1], node_of
    read = {}
    for rank in (0, 1):
        for line in (record / f"files-{rank}.txt").read_text().splitlines():
            epoch, _, path = line.split(" ", 2)
            read.setdefault((int(epoch), rank), []).append(path)
    for epoch in (1, 2):
        first, second = read[(epoch, 0)], read[(epoch, 1)]
        assert len(first) == len(second) > 0  # equal shards: the all-reduce never waits
        assert len(set(first)) == len(first) and not set(first) & set(second), epoch
        assert all(p.startswith(str(photos)) for p in first + second)


def test_lost_node_is_survived_from_the_last_checkpoint(cluster, synth_dir, tmp_path):
    state_dir, address, env = cluster
    run_dir, epochs = tmp_path / "runs" / "lost", 10
    name_of = {i: n for n, i in nodes(state_dir).items()}
    job_id, proc = submit(address, env, [
        "--data", synth_dir, "--model", "tiny", "--epochs", epochs, "--num-workers", 2,
        "--max-failures", 2, "--storage", tmp_path / "runs", "--name", "lost",
        "--export", tmp_path / "model"], wait=False)
    assert proc.returncode == 0, proc.stderr
    deadline = time.time() + 600
    while not any(r["epoch"] >= 1 for r in reports(run_dir)):
        assert time.time() < deadline and job_status(address, env, job_id) in (
            "PENDING", "RUNNING"), job_logs(address, env, job_id)[-3000:]
        time.sleep(0.5)
    victim_id = next(r["node_id"] for r in reports(run_dir) if r["rank"] == 1)
    script(state_dir, "remove-node", name_of[victim_id].removeprefix("worker"))

    while (status := job_status(address, env, job_id)) in ("PENDING", "RUNNING"):
        assert time.time() < deadline, job_logs(address, env, job_id)[-3000:]
        time.sleep(2)
    assert status == "SUCCEEDED", job_logs(address, env, job_id)[-4000:]
    final = reports(run_dir)
    for rank in (0, 1):
        assert [r["epoch"] for r in final if r["rank"] == rank] == list(range(1, epochs + 1))
    # The node's processes take a moment to die after the SIGKILL of its raylet, so the run
    # may finish an epoch or two more there: what matters is that it went on elsewhere.
    last_on_victim = max(r["epoch"] for r in final if r["node_id"] == victim_id)
    assert last_on_victim < epochs, "the run finished before the node was lost"
    after = {r["node_id"] for r in final if r["epoch"] > last_on_victim}
    assert victim_id not in after and len(after) == 2, (victim_id, after)
    assert load_model_dir(tmp_path / "model")[1]["metrics"]["epoch"] >= 1


def test_serve_replicas_on_two_nodes_answer(cluster, tiny_model_dir, tmp_path):
    state_dir, address, env = cluster
    config = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    # Every node of this cluster shares 127.0.0.1, so one proxy (the head's) takes the port.
    config["proxy_location"] = "HeadOnly"
    config["http_options"]["port"] = HTTP_PORT
    app = config["applications"][0]
    app["args"]["model_dir"] = str(tiny_model_dir)
    app["deployments"][0]["num_replicas"] = 2
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    deploy = subprocess.run([SERVE, "deploy", str(path), "--address", address], env=env,
                            capture_output=True, text=True, cwd=ROOT)
    assert deploy.returncode == 0, deploy.stderr
    url = f"http://127.0.0.1:{HTTP_PORT}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            status = subprocess.run([SERVE, "status", "--address", address], env=env,
                                    capture_output=True, text=True).stdout
            assert time.time() < deadline and "DEPLOY_FAILED" not in status, status
            time.sleep(2)
        ids = nodes(state_dir)
        seen = set()
        while len(seen) < 2 and time.time() < deadline:
            seen.add(httpx.get(f"{url}/metadata", timeout=30).json()["replica"]["node_id"])
        assert len(seen) == 2, f"only replicas on {seen} answered"
        assert ids["head"] not in seen
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(random_images(1)[0]).save(buf, format="PNG")
        for _ in range(4):
            r = httpx.post(f"{url}/predict", files={"file": ("x.png", buf.getvalue())},
                           timeout=60)
            assert r.status_code == 200 and "probabilities" in r.json(), r.text
    finally:
        subprocess.run([SERVE, "shutdown", "--address", address, "--yes"], env=env,
                       capture_output=True, text=True, timeout=300)
