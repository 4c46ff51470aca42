import json
import shutil

import numpy as np
import pytest
from PIL import Image

from resnet_ray.data import load_signs
from resnet_ray.predict import NOT_FOUND, interpret

from conftest import assert_user_error


def test_export_directory_holds_model_and_metadata(tiny_model_dir):
    meta = json.loads((tiny_model_dir / "metadata.json").read_text())
    assert (tiny_model_dir / "model.keras").is_file()
    assert meta["classes"] == [0, 1, 2, 3, 4, 5] and meta["input_shape"] == [64, 64, 3]
    assert meta["config"]["model"] == "tiny" and meta["config"]["epochs"] == 2
    assert set(meta["metrics"]) >= {"epoch", "val_accuracy", "accuracy", "loss"}
    assert {"tensorflow", "keras", "ray"} <= set(meta["versions"])
    assert meta["versions"]["keras"].startswith("2.")


@pytest.mark.parametrize("which", ["test_signs.h5", "train_signs.h5"])
def test_evaluate_json_on_either_layout(cli, tiny_model_dir, synth_dir, tmp_path, which):
    proc = cli("evaluate", tiny_model_dir, "--data", synth_dir / which, "--json",
                   "--plots", tmp_path)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    n = len(load_signs(synth_dir / which))
    assert m["n"] == n and 0.0 <= m["accuracy"] <= 1.0 and m["loss"] > 0
    assert np.array(m["confusion"]).sum() == n
    assert len(m["precision"]) == len(m["recall"]) == 6
    # accuracy is the confusion matrix's diagonal share
    assert m["accuracy"] == pytest.approx(np.trace(np.array(m["confusion"])) / n)
    png = tmp_path / "confusion.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_text_report(cli, tiny_model_dir, synth_dir):
    proc = cli("evaluate", tiny_model_dir, "--data", synth_dir / "test_signs.h5")
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" in proc.stdout and "confusion" in proc.stdout and "precision" in proc.stdout


def test_predict_any_size_and_mode(cli, tiny_model_dir, synth_dir, tmp_path):
    x = load_signs(synth_dir / "test_signs.h5").x
    paths = []
    for i, mode in enumerate(["RGB", "RGBA", "L"]):
        img = Image.fromarray(x[i]).resize((300, 200)).convert(mode)
        paths.append(tmp_path / f"img{i}.png")
        img.save(paths[-1])
    proc = cli("predict", tiny_model_dir, *paths)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3
    for path, line in zip(paths, lines):
        assert line.startswith(f"{path}: ")
        assert line.split(": ", 1)[1].split(" ")[0] in {"0", "1", "2", "3", "4", "5", "can"}


def test_predict_rule_follows_the_recipe():
    classes = [0, 1, 2, 3, 4, 5]
    assert interpret(np.array([0.05, 0.05, 0.8, 0.05, 0.05, 0.0]), classes).digit == 2
    unsure = interpret(np.array([0.5, 0.5, 0, 0, 0, 0]), classes)
    assert unsure.digit is None and NOT_FOUND in unsure.describe()
    assert interpret(np.array([0.1, 0.9]), [3, 7]).digit == 7


def test_predict_bad_image_is_a_clear_error(cli, tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert_user_error(cli("predict", tiny_model_dir, bad), str(bad))


def test_model_dir_errors(cli, tiny_model_dir, tmp_path, synth_dir):
    data = synth_dir / "test_signs.h5"
    assert_user_error(cli("evaluate", tmp_path / "absent", "--data", data),
                      "no such model directory")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.keras").write_bytes(b"garbage")
    assert_user_error(cli("evaluate", broken, "--data", data), "model.keras")
    liar = tmp_path / "liar"
    shutil.copytree(tiny_model_dir, liar)
    meta = json.loads((liar / "metadata.json").read_text())
    meta["classes"] = list(range(10))
    (liar / "metadata.json").write_text(json.dumps(meta))
    assert_user_error(cli("evaluate", liar, "--data", data), "lists 10 classes",
                      "predicts 6")
