"""Serving a repository of versions: every answer names its version, and a new version goes
live through `user_config.model_version` (as `serve deploy`, KubeRay and `resnet-ray deploy`
change it) without restarting the replica; a version that cannot serve is refused while the
live one answers."""

import json
import shutil

import httpx
import pytest

from conftest import SERVE_URL as URL, delete_apps

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def repo(tiny_model_dir, tmp_path_factory):
    """Versions 1 and 2 (the same tiny model), 3 with ten classes in its metadata, 4 with a
    damaged model file."""
    repo = tmp_path_factory.mktemp("repo")
    for n in (1, 2, 3, 4):
        shutil.copytree(tiny_model_dir, repo / str(n))
    meta = json.loads((repo / "3" / "metadata.json").read_text())
    (repo / "3" / "metadata.json").write_text(json.dumps({**meta, "classes": list(range(10))}))
    keras_file = repo / "4" / "model.keras"
    keras_file.write_bytes(keras_file.read_bytes()[:5000])
    return repo


def _deploy(repo, version):
    """What `serve deploy` does with a config: the same app, a new user_config."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    config = {"applications": [{
        "name": "digits", "route_prefix": "/", "import_path": "resnet_ray.serve:build_app",
        "args": {"model_dir": str(repo)},
        "deployments": [{"name": "DigitService",
                         "user_config": {"max_batch_size": 16, "batch_wait_timeout_s": 0.01,
                                         "model_version": version}}]}]}
    _get_global_client().deploy_apps(ServeDeploySchema.parse_obj(config), _blocking=True)


@pytest.fixture(scope="module")
def served(serve_instance, repo):
    delete_apps()
    _deploy(repo, 1)
    yield repo
    delete_apps()


def _metadata():
    return httpx.get(f"{URL}/metadata", timeout=30).json()


def _predict(png):
    r = httpx.post(f"{URL}/predict", content=png, headers={"content-type": "image/png"},
                   timeout=60)
    assert r.status_code == 200, r.text
    return r


def test_answers_name_their_version_errors_included(served, png):
    r = _predict(png)
    assert r.json()["model_version"] == 1 and r.headers["x-model-version"] == "1"
    bad = httpx.post(f"{URL}/predict", content=b"x", headers={"content-type": "text/plain"})
    assert bad.status_code == 415 and bad.headers["x-model-version"] == "1"
    missing = httpx.get(f"{URL}/no-such-route")
    assert missing.status_code == 404 and missing.headers["x-model-version"] == "1"


def test_a_new_version_goes_live_in_place_and_a_bad_one_is_refused(served, png):
    from resnet_ray import rollout
    from resnet_ray.errors import ModelDirError, UserError

    before = _metadata()["replica"]
    replicas = rollout.deploy(str(served), 2, timeout=120, say=lambda line: None)
    assert [r["version"] for r in replicas] == [2]
    assert _predict(png).json()["model_version"] == 2
    assert _metadata()["replica"] == before  # the same replica: not restarted

    for bad, reason in ((3, "classes"), (4, "model.keras")):
        with pytest.raises(UserError, match=f"version {bad} refused: .*{reason}"):
            rollout.deploy(str(served), bad, timeout=120, say=lambda line: None)
        meta = _metadata()
        assert meta["refusal"]["version"] == bad and meta["model_version"] == 2
        assert _predict(png).json()["model_version"] == 2  # the live version answers
    with pytest.raises(ModelDirError, match="no version 9"):
        rollout.deploy(str(served), 9)
    status = rollout.status(str(served))
    assert f"versions in {served}: [1, 2, 3, 4]" in status
    assert f"replica {before['id']}: version 2" in status and "last refused: version 4" in status

    rollout.deploy(str(served), 1, timeout=120, say=lambda line: None)  # rollback
    assert _metadata()["model_version"] == 1 and _metadata()["replica"] == before


@pytest.fixture(scope="module")
def png(synth_dir):
    import io

    from PIL import Image

    from resnet_ray.data import load_signs

    buf = io.BytesIO()
    Image.fromarray(load_signs(synth_dir / "test_signs.h5").x[0]).save(buf, format="PNG")
    return buf.getvalue()
