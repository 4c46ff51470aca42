"""The embedded photos: what ships in the package, the builtin: names, and `data sample`."""

import json

import numpy as np
import pytest
from PIL import Image

from resnet_ray import embedded
from resnet_ray.config import TrainConfig
from resnet_ray.data import load_data_dir
from resnet_ray.errors import DataError

from conftest import assert_user_error, plan_of


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def test_the_package_holds_the_photos_their_license_and_checksum():
    files = embedded.image_files()
    manifest = embedded.manifest()
    assert len(files) == manifest["images"] == 1760
    assert {p.parent.name for p in files} == {str(d) for d in range(10)}
    assert manifest["per_digit"] == {str(d): sum(p.parent.name == str(d) for p in files)
                                     for d in range(10)}
    assert embedded.digest() == manifest["sha256"]
    with Image.open(files[0]) as image:
        assert image.size == (64, 64) and image.mode == "RGB"
    assert "Apache License" in (embedded.ROOT / "LICENSE").read_text()
    assert "Sign Language Digits" in (embedded.ROOT / "ATTRIBUTION.md").read_text()
    assert sum(p.stat().st_size for p in embedded.ROOT.rglob("*") if p.is_file()) < 10e6


@pytest.mark.parametrize("name, classes", [("builtin:sign-digits", list(range(6))),
                                           ("builtin:sign-digits-10", list(range(10)))])
def test_builtin_names_train_on_a_held_out_split(name, classes):
    plan = plan_of(TrainConfig(data=name))
    cfg, train, val, test = plan.config, plan.source.train, plan.source.val, plan.source.test
    assert plan.source.kind == "builtin" and cfg.classes == classes and cfg.input_shape == (64, 64, 3) and cfg.data == name
    per_digit = embedded.manifest()["per_digit"]
    assert len(train) + len(val) + len(test) == sum(per_digit[str(c)] for c in classes)
    assert 0.08 < len(test) / (len(train) + len(val) + len(test)) < 0.12
    # No test photo is also a training photo.
    seen = {x.tobytes() for x in train.x}
    assert not any(x.tobytes() in seen for x in test.x)


def test_unknown_builtin_name_is_named():
    with pytest.raises(DataError, match="builtin:sign-digits, builtin:sign-digits-10"):
        embedded.resolve("builtin:hands")


def test_data_sample_writes_signs_files_that_evaluate_reads(cli, tmp_path, tiny_model_dir):
    proc = cli("data", "sample", "--out", tmp_path, "--classes", "0,1,2,3,4,5")
    assert proc.returncode == 0, proc.stderr
    train, test = load_data_dir(tmp_path)
    assert train.classes == [0, 1, 2, 3, 4, 5] and train.input_shape == (64, 64, 3)
    same = load_data_dir(embedded.resolve("builtin:sign-digits"))[1]
    np.testing.assert_array_equal(test.x, same.x)  # the split builtin:sign-digits trains on
    proc = cli("evaluate", tiny_model_dir, "--data", tmp_path / "test_signs.h5", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n"] == len(test)
    assert_user_error(cli("data", "sample", "--out", tmp_path, "--classes", "3,12"), "12")


def test_train_on_all_ten_embedded_digits(cli, tmp_path):
    proc = cli("train", "--data", "builtin:sign-digits-10", "--model", "tiny", "--epochs", 1,
               "--num-workers", 0, "--storage", tmp_path, "--export", tmp_path / "model")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "model" / "metadata.json").read_text())
    assert meta["classes"] == list(range(10)) and meta["config"]["data"] == "builtin:sign-digits-10"
    assert meta["test"]["images"] == len(load_data_dir(
        embedded.resolve("builtin:sign-digits-10"))[1])
