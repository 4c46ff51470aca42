"""serve/config.yaml and `resnet-ray serve`: what `serve run`/`serve deploy` and users rely on."""

import signal
import subprocess
import sys
import time

import httpx
import pytest
import yaml

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
        deadline = time.time() + 180
        while time.time() < deadline:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        else:
            pytest.fail("resnet-ray serve did not answer /healthz")
        assert httpx.get(f"http://127.0.0.1:{port}/metadata").json()["config"]["model"] == "tiny"
        _assert_loopback_only(proc.pid, port)
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
