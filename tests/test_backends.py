"""Inference backends: OpenVINO (float32, the CPU's own precision, int8) against TensorFlow on
the same model and photos, and the errors a user meets on the way."""

import gc
import json
import shutil

import numpy as np
import pytest

from resnet_ray.backends import load_predictor, resolve
from resnet_ray.data import load_signs
from resnet_ray.predict import predict_probs


@pytest.fixture(scope="module")
def quantized(tiny_model_dir, synth_dir, tmp_path_factory):
    """A copy of the tiny model with its int8 version, calibrated on the training file."""
    from resnet_ray.backends import quantize

    model_dir = tmp_path_factory.mktemp("int8") / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    info = quantize(model_dir, synth_dir, count=64)
    return model_dir, info


def test_auto_is_openvino_where_it_is_installed(monkeypatch):
    import importlib.util

    assert resolve("auto") == "openvino"  # a dependency
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert resolve("auto") == "tf"
    assert resolve("openvino-f32") == "openvino-f32"


def test_openvino_predicts_what_tensorflow_predicts(tiny_model_dir, synth_dir):
    test = load_signs(synth_dir / "test_signs.h5")
    tf_probs = predict_probs(load_predictor(tiny_model_dir, "tf")[0], test.x)
    f32, _ = load_predictor(tiny_model_dir, "openvino-f32")
    assert f32.description == "openvino-f32 (f32)"
    # A busy process (a Serve replica) reuses whatever memory was freed since the load.
    gc.collect()
    churn = [np.full(n, np.nan, np.float32) for n in (2 ** np.arange(4, 20)).repeat(16)]
    np.testing.assert_allclose(predict_probs(f32, test.x), tf_probs, atol=1e-4)
    del churn
    # The CPU's own precision (bfloat16 where it has AVX512_BF16) keeps the top class.
    native = predict_probs(load_predictor(tiny_model_dir, "openvino")[0], test.x)
    assert (native.argmax(1) == tf_probs.argmax(1)).mean() >= 0.95
    np.testing.assert_allclose(native.sum(1), 1.0, atol=1e-2)


def test_the_conversion_is_kept_for_later_loads_of_the_same_model_only(tiny_model_dir,
                                                                       synth_dir, tmp_path):
    from resnet_ray.backends import IR_FILE, IR_META
    from resnet_ray.model import build_model
    from resnet_ray.modeldir import save_model_dir

    x = load_signs(synth_dir / "test_signs.h5").x
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir, ignore=shutil.ignore_patterns("openvino.*"))
    first = predict_probs(load_predictor(model_dir, "openvino-f32")[0], x)
    kept = [model_dir / name for name in (IR_FILE, "openvino.bin", IR_META)]
    written = [path.stat().st_mtime_ns for path in kept]
    # The next load reads the kept files (unchanged) and predicts the same.
    np.testing.assert_array_equal(predict_probs(load_predictor(model_dir, "openvino-f32")[0], x),
                                  first)
    assert [path.stat().st_mtime_ns for path in kept] == written
    # Beside another model.keras they are stale: that model is converted and kept afresh.
    other = tmp_path / "other"
    save_model_dir(build_model("tiny"), other, {"classes": [0, 1, 2, 3, 4, 5]})
    for path in kept:
        shutil.copy(path, other / path.name)
    np.testing.assert_allclose(predict_probs(load_predictor(other, "openvino-f32")[0], x),
                               predict_probs(load_predictor(other, "tf")[0], x), atol=1e-4)
    assert json.loads((other / IR_META).read_text()) != json.loads(kept[2].read_text())


def test_int8_copy_is_calibrated_on_training_images_and_served(quantized, synth_dir):
    model_dir, info = quantized
    assert info["images"] == 64 and info["calibration"].endswith(synth_dir.name)
    assert (model_dir / "openvino-int8.xml").is_file() and (model_dir / "openvino-int8.bin").is_file()
    test = load_signs(synth_dir / "test_signs.h5")
    int8, _ = load_predictor(model_dir, "openvino-int8")
    assert int8.description.startswith("openvino-int8 (int8")
    ref = predict_probs(load_predictor(model_dir, "tf")[0], test.x)
    probs = predict_probs(int8, test.x)
    np.testing.assert_allclose(probs, ref, atol=0.05)
    # int8 rounding may swap near-ties (the tiny model is barely trained); elsewhere the top
    # class is TensorFlow's.
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.02
    assert clear.sum() >= 5 and (probs.argmax(1) == ref.argmax(1))[clear].all()


def test_int8_copy_of_another_model_is_refused(quantized, tiny_model_dir, tmp_path):
    model_dir, _ = quantized
    other = tmp_path / "model"
    shutil.copytree(model_dir, other)
    (other / "model.keras").write_bytes((other / "model.keras").read_bytes() + b"\0")
    missing = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, missing)
    from resnet_ray.errors import ModelDirError
    with pytest.raises(ModelDirError, match="made from another model.keras"):
        load_predictor(other, "openvino-int8")
    with pytest.raises(ModelDirError, match=r"openvino-int8.xml: missing.*resnet-ray quantize"):
        load_predictor(missing, "openvino-int8")


@pytest.mark.parametrize("damage", ["json", "xml", "shape"])
def test_damaged_int8_copy_gets_one_clear_error(quantized, tmp_path, damage):
    from resnet_ray.errors import ModelDirError

    model_dir = tmp_path / "model"
    shutil.copytree(quantized[0], model_dir)
    if damage == "json":
        (model_dir / "openvino-int8.json").write_text('{"model_sha256": ')
        expect = r"openvino-int8.json: not valid JSON"
    elif damage == "xml":
        (model_dir / "openvino-int8.xml").write_text("<net")
        expect = r"openvino-int8.xml: OpenVINO cannot read it"
    else:
        meta = json.loads((model_dir / "metadata.json").read_text())
        meta["input_shape"] = [meta["input_shape"][0] + 1, *meta["input_shape"][1:]]
        (model_dir / "metadata.json").write_text(json.dumps(meta))
        expect = r"openvino-int8.xml: input shape .* does not match metadata.json"
    with pytest.raises(ModelDirError, match=expect + r".*resnet-ray quantize"):
        load_predictor(model_dir, "openvino-int8")


def test_quantize_never_calibrates_on_test_photos(cli, tiny_model_dir, synth_dir):
    proc = cli("quantize", tiny_model_dir, "--data", synth_dir / "test_signs.h5")
    assert proc.returncode == 2 and "test_signs.h5: a held-out test file" in proc.stderr
    proc = cli("quantize", tiny_model_dir, "--data", synth_dir, "--images", "0")
    assert proc.returncode == 2 and "--images 0: expected a positive number" in proc.stderr
    assert not (tiny_model_dir / "openvino-int8.xml").exists()


def test_evaluate_and_predict_take_a_backend(cli, tiny_model_dir, synth_dir):
    ev = cli("evaluate", tiny_model_dir, "--data", synth_dir / "test_signs.h5", "--json",
             "--backend", "openvino-f32")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["backend"] == "openvino-f32 (f32)"
    tf = json.loads(cli("evaluate", tiny_model_dir, "--data", synth_dir / "test_signs.h5",
                        "--json", "--backend", "tf").stdout)
    assert tf["backend"] == "tf (f32)" and tf["confusion"] == json.loads(ev.stdout)["confusion"]
