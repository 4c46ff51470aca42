"""`resnet-ray train ... --export REPO --next-version --deploy`: the run trains on the running
service's cluster, on the CPU its replica leaves free, and its export goes live only if it
scores at least as well as the live version on the run's own test data."""

import shutil

import httpx
import pytest

from conftest import SERVE_URL, assert_user_error, delete_apps, run_cli, write_easy_signs

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def service(serve_instance, tiny_model_dir, tmp_path_factory):
    """The digit service, one replica, deployed from a config as `resnet-ray serve` deploys
    it, on a repository whose version 1 is the tiny model trained on other pictures."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from resnet_ray.rollout import app_config
    from resnet_ray.serve import DEFAULT_USER_CONFIG

    base = tmp_path_factory.mktemp("promote")
    repo = base / "repo"
    shutil.copytree(tiny_model_dir, repo / "1")
    write_easy_signs(base / "easy")
    delete_apps()
    config = app_config(str(repo), {}, {**DEFAULT_USER_CONFIG, "model_version": 1}, 1, False)
    _get_global_client().deploy_apps(ServeDeploySchema(applications=[config]), _blocking=True)
    yield base, repo
    delete_apps()


def test_a_run_goes_live_unless_it_scores_worse_than_the_live_version(service):
    from resnet_ray.repository import versions

    base, repo = service
    run = ("train", "--data", base / "easy", "--model", "tiny", "--storage", base / "runs",
           "--export", repo, "--next-version", "--deploy")
    better = run_cli(*run, "--epochs", 4, "--bn-momentum", 0.5, "--name", "better")
    assert better.returncode == 0, better.stderr[-3000:]
    # The cluster has 2 CPUs and the replica holds one.
    assert "layout: 1 worker(s) x 1 CPU" in better.stdout
    assert "live version 1 " in better.stdout
    assert "version 2 serving on every replica (1)" in better.stdout
    assert httpx.get(f"{SERVE_URL}/metadata", timeout=30).json()["model_version"] == 2

    # Barely trained (in this process, which needs no free CPU): worse than version 2.
    worse = run_cli(*run, "--epochs", 1, "--lr", "1e-7", "--num-workers", 0, "--name", "worse")
    assert_user_error(worse, "version 3 scores", "below the live version 2's",
                      "without going live")
    assert versions(repo) == [1, 2, 3]  # kept, for `resnet-ray deploy --version 3` to force
    assert httpx.get(f"{SERVE_URL}/metadata", timeout=30).json()["model_version"] == 2


def test_deploy_needs_next_version(cli, synth_dir, tmp_path):
    assert_user_error(cli("train", "--data", synth_dir, "--export", tmp_path / "repo",
                          "--deploy"), "--deploy: applies with --export REPO --next-version")
