"""Bad files: a clear error naming the file, exit status 2, nothing overwritten, and no code
run from a file."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, assert_user_error, run_cli

pytestmark = pytest.mark.reliability


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _damaged_data(synth_dir, tmp_path, how):
    d = tmp_path / "data"
    shutil.copytree(synth_dir, d)
    path = d / "train_signs.h5"
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 3])
    else:  # corrupted: the middle overwritten
        mid = len(data) // 2
        path.write_bytes(data[:mid] + b"\xff" * 4096 + data[mid + 4096:])
    return d


@pytest.mark.parametrize("how", ["truncated", "corrupted"])
def test_damaged_hdf5_is_named_and_the_previous_export_survives(cli, synth_dir, tiny_model_dir,
                                                                 tmp_path, how):
    data = _damaged_data(synth_dir, tmp_path, how)
    export = tmp_path / "model"
    shutil.copytree(tiny_model_dir, export)
    before = _digest(export)
    proc = cli("train", "--data", data, "--model", "tiny", "--epochs", 1,
                   "--num-workers", 0, "--storage", tmp_path / "runs", "--export", export)
    assert_user_error(proc, "train_signs.h5")
    assert _digest(export) == before
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("checkpoint_*"))
    if how == "truncated":
        assert_user_error(cli("evaluate", tiny_model_dir, "--data", data / "train_signs.h5"),
                          "train_signs.h5")


@pytest.mark.parametrize("damage", ["missing model file", "truncated model file",
                                    "model file is not a zip", "metadata not JSON"])
@pytest.mark.parametrize("command", ["predict", "evaluate", "serve"])
def test_damaged_model_directory_is_named(cli, tiny_model_dir, synth_dir, tmp_path, damage, command):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    keras_file = model / "model.keras"
    if damage == "missing model file":
        keras_file.unlink()
    elif damage == "truncated model file":
        keras_file.write_bytes(keras_file.read_bytes()[:2000])
    elif damage == "model file is not a zip":
        keras_file.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    else:
        (model / "metadata.json").write_text("{classes: [0, 1")
    before = _digest(model)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (64, 64)).save(image)
    args = {"predict": ["predict", model, image], "evaluate": ["evaluate", model, "--data",
                                                              synth_dir / "test_signs.h5"],
            "serve": ["serve", model, "--port", 8399]}[command]
    proc = cli(*args)
    culprit = "metadata.json" if damage == "metadata not JSON" else "model.keras"
    assert_user_error(proc, culprit)
    assert _digest(model) == before


@pytest.mark.parametrize("change, fragment", [
    ({"classes": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}, "10 classes"),
    ({"input_shape": [32, 32, 3]}, "input_shape"),
    ({"classes": [0, 1, 2, 3, 4, 4]}, "classes"),
])
def test_metadata_that_disagrees_with_the_model_is_refused(cli, tiny_model_dir, synth_dir, tmp_path,
                                                           change, fragment):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    meta = json.loads((model / "metadata.json").read_text())
    meta.update(change)
    (model / "metadata.json").write_text(json.dumps(meta))
    proc = cli("evaluate", model, "--data", synth_dir / "test_signs.h5")
    assert_user_error(proc, "metadata.json", fragment)


@pytest.mark.parametrize("edit, fragment", [
    (lambda c: c["train"].update(epochs="ten"), "epochs"),
    (lambda c: c["train"].update(lr=[0.1]), "lr"),
    (lambda c: c.update(num_samples="4"), "num_samples"),
    (lambda c: c["search_space"].update(lr={"loguniform": ["a", 1]}), "lr"),
    (lambda c: c["scheduler"].update(grace_period=-1), "grace_period"),
    (lambda c: c.update(search_space=[1, 2]), "search_space"),
])
def test_tune_yaml_with_wrong_types_is_named_and_nothing_is_written(cli, synth_dir, tmp_path, edit,
                                                                    fragment):
    config = yaml.safe_load((ROOT / "tune_configs" / "smoke.yaml").read_text())
    edit(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = cli("tune", "--config", path, "--data", synth_dir, "--storage", tmp_path / "runs",
                   "--name", "bad")
    assert_user_error(proc, str(path), fragment)
    assert not (tmp_path / "runs" / "bad").exists()


def test_damaged_training_checkpoint_stops_the_resume_and_is_kept(cli, synth_dir, tmp_path):
    args = ["train", "--data", synth_dir, "--model", "tiny", "--num-workers", 0,
            "--storage", tmp_path, "--name", "run"]
    assert cli(*args, "--epochs", 1).returncode == 0
    (ckpt,) = (tmp_path / "run").glob("checkpoint_epoch_*")
    weights = ckpt / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:500])
    before = _digest(tmp_path / "run")
    proc = cli(*args, "--epochs", 2)
    assert_user_error(proc, str(weights), "damaged")
    assert _digest(tmp_path / "run") == before


def test_checkpoint_arrays_are_loaded_without_pickle(tmp_path):
    """An optimizer file holding a pickled object must not run it."""
    from resnet_ray.config import TrainConfig
    from resnet_ray.errors import CheckpointError
    from resnet_ray.optim import build_compiled
    from resnet_ray.checkpoints import restore_checkpoint, save_checkpoint

    cfg = TrainConfig(data="x", model="tiny", input_shape=[64, 64, 3], classes=[0, 1])
    model, optimizer = build_compiled(cfg)
    save_checkpoint(tmp_path, model, optimizer, cfg, {"epoch": 1, "history": []})
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    np.savez(tmp_path / "optimizer.npz", np.array([Payload()], dtype=object))
    with pytest.raises(CheckpointError, match="optimizer.npz"):
        restore_checkpoint(tmp_path, model, optimizer)
    assert not marker.exists()


def test_model_file_with_code_is_refused_not_run(tiny_model_dir, tmp_path):
    """Keras safe mode: a Lambda layer's bytecode in model.keras is never deserialised."""
    from resnet_ray.modeldir import save_model_dir
    from resnet_ray.keras_backend import keras

    marker = tmp_path / "pwned"
    code = (f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch() "
            f"if __import__('os').environ.get('RESNET_RAY_ARM') else None, x)[1]")
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Lambda(eval(code))(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    evil = tmp_path / "evil"
    save_model_dir(keras.Model(inputs, outputs), evil,
                   {"classes": [0, 1], "config": {}, "metrics": {}})
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (64, 64)).save(image)
    proc = run_cli("predict", evil, image, env={"RESNET_RAY_ARM": "1"})
    assert_user_error(proc, "model.keras")
    assert not marker.exists()


def test_a_name_reused_for_an_incompatible_run_is_refused_before_training(cli, synth_dir,
                                                                         tiny_model_dir):
    runs = tiny_model_dir.parent / "runs"  # the tiny run of conftest: model tiny, 6 classes
    before = _digest(runs)
    proc = cli("train", "--data", synth_dir, "--model", "resnet50", "--num-workers", 2,
               "--storage", runs, "--name", "tiny")
    assert_user_error(proc, "--name tiny", "model 'resnet50' here, 'tiny' there",
                      "num_workers 2 here, 0 there", "another --name")
    assert _digest(runs) == before


def test_a_checkpoint_cut_off_while_written_or_pruned_is_ignored(tiny_model_dir, tmp_path):
    from resnet_ray.checkpoints import best_checkpoint, check_checkpoints

    source = sorted((tiny_model_dir.parent / "runs" / "tiny").glob("checkpoint_epoch_*"))[-1]
    whole = tmp_path / "checkpoint_epoch_0001"
    shutil.copytree(source, whole)
    # A driver killed while Ray deleted a pruned checkpoint leaves its state without weights.
    cut = tmp_path / "checkpoint_epoch_0002"
    cut.mkdir()
    state = json.loads((whole / "state.json").read_text())
    state["metrics"]["val_accuracy"] = 2.0  # would win if it counted
    (cut / "state.json").write_text(json.dumps(state))
    check_checkpoints(str(tmp_path))  # no error: nothing damaged, one incomplete
    assert best_checkpoint(str(tmp_path)).path == str(whole)


@pytest.mark.parametrize("score, best", [(("val_accuracy", "max"), 4), (("val_loss", "min"), 1)])
def test_a_run_keeps_and_exports_its_best_checkpoint_by_its_score(tiny_model_dir, tmp_path,
                                                                 monkeypatch, score, best):
    """A search that ranks by validation loss keeps (and exports) each trial's best by loss,
    also where the best-accuracy epoch is another one; of equal scores, the later epoch is
    kept and exported, as Ray Train keeps them."""
    import ray.train

    from resnet_ray.checkpoints import LocalCheckpoints, best_checkpoint

    monkeypatch.setattr(ray.train, "report", lambda metrics: None)  # no Train session here
    source = sorted((tiny_model_dir.parent / "runs" / "tiny").glob("checkpoint_epoch_*"))[-1]

    def writer(metrics):
        def write(directory):
            shutil.copytree(source, directory, dirs_exist_ok=True)
            state = json.loads((directory / "state.json").read_text())
            (directory / "state.json").write_text(json.dumps({**state, "metrics": metrics}))
        return write

    store = LocalCheckpoints(str(tmp_path), keep=1, score=score)
    for epoch, loss, accuracy in [(1, 0.30, 0.90), (2, 0.35, 0.95), (3, 0.50, 0.85),
                                  (4, 0.40, 0.95), (5, 0.60, 0.80)]:
        metrics = {"epoch": epoch, "val_loss": loss, "val_accuracy": accuracy}
        store.report(metrics, writer(metrics), rank=0)
    kept = sorted(p.name for p in tmp_path.glob("checkpoint_epoch_*"))
    assert kept == [f"checkpoint_epoch_{best:04d}", "checkpoint_epoch_0005"]  # best + latest
    assert best_checkpoint(str(tmp_path), score).path == str(
        tmp_path / f"checkpoint_epoch_{best:04d}")


def test_a_checkpoint_pruned_while_it_is_checked_is_ignored(tiny_model_dir, tmp_path,
                                                            monkeypatch):
    """The Ray of a run killed moments ago may still be deleting a pruned checkpoint while the
    re-run checks them: one that loses a file mid-check is cut off, not damaged."""
    from resnet_ray import checkpoints

    source = sorted((tiny_model_dir.parent / "runs" / "tiny").glob("checkpoint_epoch_*"))[-1]
    for name in ("checkpoint_epoch_0001", "checkpoint_epoch_0002"):
        shutil.copytree(source, tmp_path / name)
    read = checkpoints.read_checkpoint

    def pruned_while_read(directory, model=None):
        if directory.name == "checkpoint_epoch_0002":
            (directory / checkpoints.STATE_FILE).unlink()
        return read(directory, model)

    monkeypatch.setattr(checkpoints, "read_checkpoint", pruned_while_read)
    checkpoints.check_checkpoints(str(tmp_path))  # no error
    assert checkpoints.complete_checkpoints(tmp_path) == [tmp_path / "checkpoint_epoch_0001"]
