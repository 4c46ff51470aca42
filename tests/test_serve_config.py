"""serve/config.yaml and `resnet-ray serve`: what `serve run`/`serve deploy` and users rely on."""

import signal
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from bench.serve_load import wait_ready
from conftest import ROOT


def test_serve_config_is_a_valid_serve_deploy_config(tiny_model_dir):
    from ray._common.utils import import_attr
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    schema = ServeDeploySchema.parse_obj(doc)
    app = schema.applications[0]
    assert schema.http_options.host == "127.0.0.1"
    builder = import_attr(app.import_path)
    deployment = app.deployments[0]
    assert deployment.name == "DigitService"
    user_config = deployment.user_config
    assert deployment.max_ongoing_requests >= user_config["max_batch_size"]  # ray#43288
    assert deployment.ray_actor_options.runtime_env["env_vars"]["TF_USE_LEGACY_KERAS"] == "1"
    # Called the way Serve calls it (a builder takes exactly one parameter, the args).
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    bound = call_user_app_builder_with_args_if_necessary(
        builder, {**app.args, "model_dir": str(tiny_model_dir)})
    assert type(bound).__name__ == "Application"


def test_serve_config_without_a_model_is_a_clear_error(tmp_path):
    from resnet_ray.errors import UserError
    from resnet_ray.serve import build_app

    with pytest.raises(UserError, match="no such model directory"):
        build_app({"model_dir": str(tmp_path / "absent")})
    with pytest.raises(UserError, match="unknown key 'batch'"):
        build_app({"model_dir": str(_fake_model_dir(tmp_path)), "batch": 3})


def _fake_model_dir(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "metadata.json").write_text('{"classes": [0, 1], "input_shape": [64, 64, 3]}')
    return d


@pytest.mark.ray
@pytest.mark.parametrize("ingress", ["proxy", "haproxy"])
def test_serve_command_runs_in_the_foreground_and_stops_on_ctrl_c(private_ray, tiny_model_dir,
                                                                   ingress):
    port = 8317
    proc = subprocess.Popen([sys.executable, "-m", "resnet_ray", "serve", str(tiny_model_dir),
                             "--port", str(port), "--ingress", ingress, "--verbose"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        try:
            wait_ready([f"http://127.0.0.1:{port}"], 180, alive=lambda: proc.poll() is None)
        except RuntimeError:
            pytest.fail(f"resnet-ray serve exited: {proc.stdout.read()[-3000:]}")
        assert httpx.get(f"http://127.0.0.1:{port}/metadata").json()["config"]["model"] == "tiny"
        _assert_loopback_only(proc.pid, port)
        if ingress == "haproxy":
            _assert_haproxy_is_private()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "stopping" in out and f"ingress {ingress}" in out
    # Nothing of the service outlives it (Serve's HAProxy is a separate process).
    assert not _processes_named("haproxy"), _processes_named("haproxy")
    # --verbose: Serve's own lines and its actors' output (hidden by default) are shown.
    assert "(ServeController pid=" in out or "(ProxyActor pid=" in out, out[-3000:]
    assert not out.startswith("logs:")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def _processes_named(name):
    import psutil

    return [p.info for p in psutil.process_iter(["pid", "name"]) if p.info["name"] == name]


def _assert_haproxy_is_private():
    """HAProxy's stats page and metrics port face this machine only; its admin socket is the
    owner's (Serve's own config opens them to every interface and every local user)."""
    import os

    import psutil

    from ray.serve._private.constants import (RAY_SERVE_HAPROXY_METRICS_PORT,
                                              RAY_SERVE_HAPROXY_STATS_PORT)

    for _ in range(10):  # an HAProxy reload replaces its process; look again if one went
        try:
            haproxies = [psutil.Process(p["pid"]) for p in _processes_named("haproxy")]
            assert haproxies, "no HAProxy process"
            listening = {(c.laddr.ip, c.laddr.port) for p in haproxies for c in
                         p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
            args = haproxies[0].cmdline()
            break
        except psutil.NoSuchProcess:
            time.sleep(0.5)
    else:
        pytest.fail("HAProxy's processes kept exiting while they were inspected")
    for port in (RAY_SERVE_HAPROXY_STATS_PORT, RAY_SERVE_HAPROXY_METRICS_PORT):
        assert {ip for ip, p in listening if p == port} == {"127.0.0.1"}, (port, listening)
    config = open(args[args.index("-f") + 1]).read()
    socket = next(line.split()[2] for line in config.splitlines()
                  if line.strip().startswith("stats socket "))
    assert os.stat(socket).st_mode & 0o777 == 0o600


def test_haproxy_guard_refuses_an_operator_port_facing_other_machines():
    from resnet_ray.haproxy_guard import harden

    served = harden("global\n    stats socket /tmp/a.sock mode 666 level admin\n"
                    "frontend prometheus\n    bind :9101\nfrontend http_frontend\n"
                    "    bind 0.0.0.0:8000\nlisten stats\n  bind *:8404\n")
    assert "mode 600 level admin" in served and "bind 127.0.0.1:9101" in served
    assert "bind 127.0.0.1:8404" in served and "bind 0.0.0.0:8000" in served  # --host's choice
    with pytest.raises(ValueError, match=r"\[listen stats\] bind 10.0.0.7:8404"):
        harden("listen stats\n  bind 10.0.0.7:8404\n")


def test_haproxy_guard_ends_haproxy_with_the_process_that_started_it(tmp_path):
    """A hard-killed Serve leaves no HAProxy holding the service port."""
    import psutil

    from resnet_ray import haproxy_guard

    config = tmp_path / "haproxy.cfg"
    config.write_text("listen stats\n  bind *:8404\n")
    # The parent starts the guard as Serve starts HAProxy; `sh` stands in for HAProxy.
    guarded = [sys.executable, "-I", "-S", haproxy_guard.__file__, "/bin/sh",
               "-c", "exec sleep 120", "-f", str(config)]
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "print(subprocess.Popen(sys.argv[1:]).pid, flush=True); "
                               "time.sleep(120)", *guarded], stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    deadline = time.time() + 10
    while child.name() != "sleep" and time.time() < deadline:
        time.sleep(0.05)
    assert "bind 127.0.0.1:8404" in config.read_text()
    parent.kill()
    parent.wait()
    deadline = time.time() + 10
    while child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
        assert time.time() < deadline, "HAProxy outlived the process that started it"
        time.sleep(0.05)


def _assert_loopback_only(pid, serve_port):
    """The HTTP service and the Ray dashboard it started listen on 127.0.0.1 only."""
    import psutil

    def listening(port):
        return {c.laddr.ip for c in psutil.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port}

    assert listening(serve_port) == {"127.0.0.1"}, listening(serve_port)
    dashboards = [p for p in psutil.Process(pid).children(recursive=True)
                  if any(a.endswith("dashboard/dashboard.py") for a in p.cmdline())]
    assert dashboards, "no Ray dashboard among the command's processes"
    for dash in dashboards:
        port = int(next(a.split("=", 1)[1] for a in dash.cmdline() if a.startswith("--port=")))
        assert listening(port) == {"127.0.0.1"}, (port, listening(port))
