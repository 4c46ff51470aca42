"""cluster/local_cluster.py's start logic without starting Ray: `ray start` is replaced by
plain processes and `ray status` by what the cluster would answer."""

import importlib.util
import json
import subprocess

import pytest

from conftest import ROOT


def load_script():
    spec = importlib.util.spec_from_file_location("local_cluster",
                                                  ROOT / "cluster" / "local_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_ray(monkeypatch):
    """`ray start` attempts that exit (a head that times out during startup) until
    `fail_first` of them have, then ones that stay up and are reported as nodes."""
    lc = load_script()
    procs, live = [], []
    plan = {"fail_first": 0}

    def spawn(args, log):
        fail = len(procs) < plan["fail_first"]
        proc = subprocess.Popen(["true"] if fail else ["sleep", "60"], start_new_session=True)
        if fail:
            proc.wait()
        else:
            live.append(proc)
        procs.append((args, proc))
        return proc.pid

    def status(address):
        up = [p for p in live if p.poll() is None]
        return "Active:\n" + "".join(f" 1 node_{i}\n" for i in range(len(up))) + "Pending:\n"

    monkeypatch.setattr(lc, "_spawn", spawn)
    monkeypatch.setattr(lc, "_ray_status", status)
    monkeypatch.setattr(lc.time, "sleep", lambda s: None)
    yield lc, procs, plan
    for _, proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start(lc, state_dir, workers=1):
    return lc.start(state_dir, workers=workers, cpus_per_worker=1, head_cpus=0,
                    port=6399, dashboard_port=8299, timeout=5)


def test_head_that_exits_while_starting_is_started_again(fake_ray, tmp_path):
    lc, procs, plan = fake_ray
    plan["fail_first"] = 1
    state = start(lc, tmp_path, workers=1)
    heads = [p for args, p in procs if "--head" in args]
    assert len(heads) == 2, "the head was not started a second time"
    assert [n["name"] for n in state["nodes"]] == ["head", "worker1"]
    assert state["nodes"][0]["pid"] == heads[1].pid
    assert json.loads((tmp_path / "cluster.json").read_text()) == state
    assert "starting it again" in (tmp_path / "head.log").read_text()


def test_head_that_keeps_exiting_fails_with_its_log(fake_ray, tmp_path):
    lc, procs, plan = fake_ray
    plan["fail_first"] = lc.HEAD_ATTEMPTS
    with pytest.raises(SystemExit, match=r"node head exited while starting; see .*head\.log"):
        start(lc, tmp_path)
    assert len(procs) == lc.HEAD_ATTEMPTS
    assert not (tmp_path / "cluster.json").exists(), "a failed start left a cluster recorded"


def test_worker_that_exits_is_not_retried_and_the_cluster_is_stopped(fake_ray, tmp_path):
    lc, procs, plan = fake_ray
    calls = {"n": 0}
    real_spawn = lc._spawn

    def spawn(args, log):
        calls["n"] += 1
        if "--head" not in args:
            proc = subprocess.Popen(["true"], start_new_session=True)
            proc.wait()
            procs.append((args, proc))
            return proc.pid
        return real_spawn(args, log)

    lc._spawn = spawn
    with pytest.raises(SystemExit, match="node worker1 exited while starting"):
        start(lc, tmp_path)
    assert calls["n"] == 2
    head = next(p for args, p in procs if "--head" in args)
    assert head.wait(timeout=10) is not None, "the head was left running"
