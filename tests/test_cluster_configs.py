"""cluster/: the manifests, launcher config, image recipe and runtime_env agree with the code,
with pyproject.toml and with each other. No Kubernetes or cloud needed."""

import argparse
import functools
import importlib.util
import json
import re
import shlex
import tomllib

import pytest
import yaml

from conftest import ROOT, SHARED

CLUSTER = ROOT / "cluster"
CRDS = SHARED / "kuberay-crds"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
PINS = dict(re.match(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+)", d).groups()
            for d in PYPROJECT["project"]["dependencies"] if "==" in d)
MANIFESTS = {"rayjob-train.yaml": "RayJob", "rayjob-tune.yaml": "RayJob",
             "rayservice.yaml": "RayService"}
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_ENABLE_ONEDNN_OPTS": "1",
              "MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "17179869184",
              "MALLOC_TOP_PAD_": "268435456"}


def load(name):
    return yaml.safe_load((CLUSTER / name).read_text())


def cluster_spec(doc):
    return doc["spec"]["rayClusterSpec" if doc["kind"] == "RayJob" else "rayClusterConfig"]


def pod_specs(doc):
    spec = cluster_spec(doc)
    yield spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["template"]["spec"]


def test_every_yaml_under_cluster_parses():
    names = sorted(p.name for p in CLUSTER.glob("*.yaml"))
    assert set(MANIFESTS) | {"aws.yaml", "runtime_env.yaml", "shared-storage.yaml"} <= set(names)
    for name in names:
        assert isinstance(load(name), dict), name


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_versions_and_images_match_pyproject(name):
    doc = load(name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == MANIFESTS[name]
    spec = cluster_spec(doc)
    assert spec["rayVersion"] == PINS["ray"]
    for pod in pod_specs(doc):
        for container in pod["containers"]:
            repo, _, tag = container["image"].rpartition(":")
            assert repo.endswith("resnet-ray") and tag == VERSION, container["image"]


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifests_are_private_by_default(name):
    doc = load(name)
    spec = cluster_spec(doc)
    # Ray's job API runs arbitrary code: token auth on, and the head does no work.
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    text = (CLUSTER / name).read_text()
    # 0.0.0.0 only where a pod must be reached over the pod network, each with its reason.
    for line in text.splitlines():
        if "0.0.0.0" in line and not line.lstrip().startswith("#"):
            assert "#" in line or "host: 0.0.0.0" in line, line
    assert "LoadBalancer" not in text and "NodePort" not in text


@pytest.mark.parametrize("name", ["rayjob-train.yaml", "rayjob-tune.yaml"])
def test_rayjob_entrypoints_run_project_modules_with_valid_options(name):
    doc = load(name)
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:2] == ["python", "-m"]
    module = argv[2]
    assert importlib.util.find_spec(module) is not None, module
    entry = importlib.import_module(module)  # `python -m` runs this module's main()
    command = module.rsplit(".", 1)[-1]
    parser = argparse.ArgumentParser()
    entry.add_arguments(parser)
    args = parser.parse_args(argv[3:])  # exits on an unknown option
    assert args.data.startswith("/shared/") and args.storage.startswith("/shared/")
    if command == "tune":
        # The config named must be one the image holds (cluster/Dockerfile copies tune_configs/).
        assert args.config.startswith("/app/")
        assert (ROOT / args.config.removeprefix("/app/")).is_file()
    env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env.items() >= WORKER_ENV.items()
    assert doc["spec"]["shutdownAfterJobFinishes"] is True


def test_rayservice_serve_config_is_serve_config_yaml_but_for_pod_settings():
    from ray.serve.schema import ServeDeploySchema

    service = yaml.safe_load(load("rayservice.yaml")["spec"]["serveConfigV2"])
    local = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    ServeDeploySchema.model_validate(service)
    # The documented differences (see the manifest's header) and nothing else.
    assert service["http_options"].pop("host") == "0.0.0.0"
    assert local["http_options"].pop("host") == "127.0.0.1"
    assert service["applications"][0]["args"].pop("model_dir").startswith("/shared/models/")
    local["applications"][0]["args"].pop("model_dir")
    assert service == local


def test_image_recipe_pins_what_pyproject_pins():
    text = (CLUSTER / "Dockerfile").read_text()
    python = re.search(r"^FROM python:(\d+\.\d+)", text, re.M).group(1)
    assert f">={python}" in PYPROJECT["project"]["requires-python"]
    # The project, and through it every pin, is installed from pyproject.toml ...
    assert re.search(r"pip install --no-cache-dir \.\s", text)
    # ... and any version written here again must be pyproject's.
    for package, version in re.findall(r"([a-z][a-z0-9_\-]*)(?:\[[^\]]*\])?==([0-9.]+)", text):
        assert PINS[package] == version, (package, version)
    for var, value in WORKER_ENV.items():
        assert f"{var}={value}" in text
    # Everything the manifests refer to inside the image is copied into it.
    for path in ("resnet_ray/", "serve/", "tune_configs/", "pyproject.toml"):
        assert f"COPY {path}" in text or f" {path}" in text, path
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in dockerignore and "*.h5" in dockerignore


def test_runtime_env_yaml_is_valid_and_sets_worker_env():
    from ray.runtime_env import RuntimeEnv

    doc = load("runtime_env.yaml")
    RuntimeEnv(**doc)  # Ray's own validation of the fields
    assert doc["env_vars"].items() >= WORKER_ENV.items()
    assert ".venv/" in doc["excludes"]


def test_worker_env_carries_the_projects_settings_unless_the_user_set_them(monkeypatch):
    from resnet_ray.runtime import WORKER_ENV_VARS, worker_env_vars

    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    assert worker_env_vars()["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert WORKER_ENV_VARS.items() >= WORKER_ENV.items()
    # Someone who measured their CPU and wants TensorFlow's Eigen kernels keeps them.
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert worker_env_vars()["TF_ENABLE_ONEDNN_OPTS"] == "0"


def test_launcher_config_validates_against_rays_schema():
    import jsonschema
    import ray.autoscaler

    from pathlib import Path

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    doc = load("aws.yaml")
    jsonschema.validate(doc, schema)
    types = doc["available_node_types"]
    assert types[doc["head_node_type"]]["resources"] == {"CPU": 0}
    assert {"cpu_worker", "gpu_worker"} <= set(types)
    images = [doc["docker"]["image"], types["gpu_worker"]["docker"]["worker_image"]]
    assert [i.rpartition(":")[2] for i in images] == [VERSION, f"{VERSION}-gpu"]
    head = " ".join(doc["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "--dashboard-host=127.0.0.1" in head
    assert all("RAY_AUTH_MODE=token" in c for c in doc["worker_start_ray_commands"]
               if c.strip().startswith("RAY_AUTH_MODE") or "ray start" in c)


@pytest.mark.skipif(not (CRDS / "ray.io_rayjobs.yaml").exists(),
                    reason=f"{CRDS} is absent (shared beside the repository, not in a clone)")
@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifests_validate_against_kuberay_crds(name):
    import jsonschema

    doc = load(name)
    # OpenAPI v3 extensions that jsonschema does not know are ignored; types and required
    # fields, enums and unknown fields (additionalProperties) are what catch typos.
    jsonschema.validate(doc, _crd_schema(doc["kind"], doc["apiVersion"].split("/")[1]))


@functools.lru_cache
def _crd_schema(kind, version):
    """The strict schema of a KubeRay CRD version (each file is read once: ~1 MB of YAML)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((CRDS / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader=loader)
    return _strict(next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]
                        if v["name"] == version))


def _strict(schema):
    """Kubernetes prunes unknown fields silently; make them errors so a typo fails here."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if schema.get("type") == "object" and "properties" in schema \
                and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def test_a_typo_in_a_manifest_fails_crd_validation():
    """The check above can fail: a misspelt field is caught."""
    if not (CRDS / "ray.io_rayjobs.yaml").exists():
        pytest.skip(f"{CRDS} is absent")
    import jsonschema

    doc = load("rayjob-train.yaml")
    doc["spec"]["shutdownAfterJobFinished"] = doc["spec"].pop("shutdownAfterJobFinishes")
    with pytest.raises(jsonschema.ValidationError, match="shutdownAfterJobFinished"):
        jsonschema.validate(doc, _crd_schema("RayJob", "v1"))
