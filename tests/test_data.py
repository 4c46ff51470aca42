import h5py
import numpy as np
import pytest
from PIL import Image

from resnet_ray.data import (grouped_stratified_split, load_data_dir, load_signs, split_validation,
                             write_signs_dir, Signs)
from resnet_ray.errors import DataError
from resnet_ray.images import decode_image
from resnet_ray.synth import synth_data, synth_signs

from conftest import DIGITS, assert_user_error, needs_digits, random_images, run_cli


def _write_h5(path, **arrays):
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return path


def test_load_normalises_and_one_hot_encodes(tmp_path):
    x = random_images(5)
    path = _write_h5(tmp_path / "test_signs.h5", test_set_x=x, test_set_y=np.array([0, 1, 2, 5, 1]),
                     list_classes=np.arange(6))
    signs = load_signs(path)
    xn, yn = signs.normalized()
    assert xn.dtype == np.float32 and xn.max() <= 1.0
    np.testing.assert_allclose(xn, x / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(yn, np.eye(6)[[0, 1, 2, 5, 1]])
    assert signs.classes == [0, 1, 2, 3, 4, 5]


def test_recipe_label_layout_1_by_n_and_train_file_without_classes(tmp_path):
    path = _write_h5(tmp_path / "train_signs.h5", train_set_x=random_images(3),
                     train_set_y=np.array([[0, 1, 3]]))
    signs = load_signs(path)
    assert signs.y.tolist() == [0, 1, 3] and signs.classes == [0, 1, 2, 3]


BAD_FILES = {
    "missing key x": ({"test_set_y": np.zeros(2, int)}, "missing key 'train_set_x' or 'test_set_x'"),
    "missing key y": ({"test_set_x": random_images(2)}, "missing key 'test_set_y'"),
    "wrong shape": ({"test_set_x": np.zeros((2, 64, 64), np.uint8), "test_set_y": np.zeros(2, int)},
                    "key 'test_set_x' has shape (2, 64, 64)"),
    "wrong dtype": ({"test_set_x": np.zeros((2, 64, 64, 3), np.float32),
                     "test_set_y": np.zeros(2, int)}, "dtype float32, expected uint8"),
    "label outside classes": ({"test_set_x": random_images(2), "test_set_y": np.array([0, 7]),
                               "list_classes": np.arange(6)}, "label 7 at index 1"),
    "length mismatch": ({"test_set_x": random_images(3), "test_set_y": np.array([0, 1])},
                        "3 images but 'test_set_y' has 2 labels"),
    "float labels": ({"test_set_x": random_images(2), "test_set_y": np.array([0.0, 1.0])},
                     "expected N integer labels"),
    "empty": ({"test_set_x": np.zeros((0, 64, 64, 3), np.uint8), "test_set_y": np.zeros(0, int)},
              "is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_h5_files_get_a_clear_error(tmp_path, case):
    arrays, fragment = BAD_FILES[case]
    path = _write_h5(tmp_path / "test_signs.h5", **arrays)
    with pytest.raises(DataError) as info:
        load_signs(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_signs(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(DataError, match="not an HDF5 file"):
        load_signs(junk)
    truncated = tmp_path / "trunc.h5"
    _write_h5(tmp_path / "full.h5", test_set_x=random_images(40), test_set_y=np.zeros(40, int))
    truncated.write_bytes((tmp_path / "full.h5").read_bytes()[:3000])
    with pytest.raises(DataError, match=str(truncated)):
        load_signs(truncated)


def test_data_dir_files_must_agree(tmp_path):
    write_signs_dir(tmp_path, Signs(random_images(4), np.array([0, 1, 0, 1]), [0, 1]),
                    Signs(random_images(2, size=32), np.array([0, 1]), [0, 1]))
    with pytest.raises(DataError, match="expected the same shape"):
        load_data_dir(tmp_path)
    with pytest.raises(DataError, match="no such directory"):
        load_data_dir(tmp_path / "absent")


def test_evaluate_cli_reports_bad_data_without_traceback(tmp_path):
    path = _write_h5(tmp_path / "bad.h5", test_set_x=random_images(2), test_set_y=np.array([0, 9]),
                     list_classes=np.arange(6))
    proc = run_cli("evaluate", tmp_path / "no-model", "--data", path)
    assert_user_error(proc, str(path), "label 9")


def test_synth_is_deterministic_balanced_and_varied():
    a, b = synth_signs(60, seed=4), synth_signs(60, seed=4)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert a.x.shape == (60, 64, 64, 3) and a.x.dtype == np.uint8
    assert np.bincount(a.y).tolist() == [10] * 6
    assert not np.array_equal(synth_signs(60, seed=5).x, a.x)
    # pictures of one class differ from each other (position, size, tone, background, noise)
    zeros = a.x[a.y == 0].astype(float)
    assert np.abs(zeros[0] - zeros[1]).mean() > 10
    train, test = synth_data(30, 12, seed=0)
    assert len(train) == 30 and len(test) == 12


def test_synth_cli_writes_signs_layout(cli, tmp_path):
    proc = cli("data", "synth", "--out", tmp_path, "--train", 24, "--test", 12)
    assert proc.returncode == 0, proc.stderr
    train, test = load_data_dir(tmp_path)
    assert (len(train), len(test)) == (24, 12) and train.classes == [0, 1, 2, 3, 4, 5]


def _image_folder(root, classes=(0, 1, 2), per_class=10):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / str(c)).mkdir(parents=True)
        for i in range(per_class):
            size = (int(rng.integers(40, 200)), int(rng.integers(40, 200)))
            pixels = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
            mode = ["RGB", "RGBA", "L"][i % 3]
            img = Image.fromarray(pixels, "RGBA").convert(mode)
            img.save(root / str(c) / f"img{i}.{'jpg' if mode != 'RGBA' else 'png'}")
    return root


def test_import_writes_a_stratified_signs_layout(cli, tmp_path):
    images = _image_folder(tmp_path / "images")
    proc = cli("data", "import", images, "--out", tmp_path / "out", "--classes", "0,1,2",
                   "--size", 32, "--test-fraction", 0.2)
    assert proc.returncode == 0, proc.stderr
    train, test = load_data_dir(tmp_path / "out")
    assert train.input_shape == (32, 32, 3) and train.classes == [0, 1, 2]
    assert np.bincount(test.y).tolist() == [2, 2, 2]
    assert len(train) == 24
    # Deterministic per seed.
    again = cli("data", "import", images, "--out", tmp_path / "again", "--classes", "0,1,2",
                    "--size", 32, "--test-fraction", 0.2)
    assert again.returncode == 0
    np.testing.assert_array_equal(load_data_dir(tmp_path / "again")[1].x, test.x)


def test_split_keeps_near_duplicates_on_one_side():
    base = random_images(20, size=32, seed=1)
    # every image appears twice, the copy with a little noise
    noisy = np.clip(base.astype(int) + np.random.default_rng(2).integers(-3, 4, base.shape), 0, 255)
    x = np.concatenate([base, noisy.astype(np.uint8)])
    y = np.zeros(40, dtype=np.int64)
    test = set(grouped_stratified_split(x, y, 0.2, seed=0).tolist())
    assert len(test) == 8
    for i in range(20):
        assert (i in test) == (i + 20 in test)


@pytest.mark.parametrize("case", ["corrupt jpeg", "empty folder", "missing class", "no such dir"])
def test_import_bad_inputs(cli, tmp_path, case):
    images = _image_folder(tmp_path / "images", classes=(0, 1), per_class=4)
    out = tmp_path / "out"
    if case == "corrupt jpeg":
        bad = images / "1" / "img0.jpg"
        bad.write_bytes(bad.read_bytes()[:200])
        fragments = [str(bad), "corrupt or truncated"]
    elif case == "empty folder":
        for p in (images / "1").iterdir():
            p.unlink()
        (images / "1" / "notes.txt").write_text("no images here")
        fragments = [str(images / "1"), "no images"]
    elif case == "missing class":
        fragments = [str(images / "2"), "no such folder for class 2"]
    else:
        images = tmp_path / "absent"
        fragments = [str(images), "no such directory"]
    classes = "0,1,2" if case == "missing class" else "0,1"
    proc = cli("data", "import", images, "--out", out, "--classes", classes, "--quiet")
    assert_user_error(proc, *fragments)
    assert not out.exists() or not any(out.iterdir())


def test_failed_write_leaves_existing_files_untouched(tmp_path):
    good = Signs(random_images(4), np.array([0, 1, 0, 1]), [0, 1])
    write_signs_dir(tmp_path, good, good)
    before = (tmp_path / "train_signs.h5").read_bytes()
    bad = Signs(np.array(["not", "pixels"]), np.array([0, 1]), [0, 1])
    with pytest.raises(ValueError):
        write_signs_dir(tmp_path, good, bad)
    assert (tmp_path / "train_signs.h5").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test_signs.h5", "train_signs.h5"]


def test_decode_handles_modes_and_rejects_bombs(tmp_path):
    gray16 = tmp_path / "g16.png"
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).save(gray16)
    out = decode_image(gray16, (32, 32))
    assert out.shape == (32, 32, 3) and out.max() > 200
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (50, 30), (0, 255, 255, 0)).save(cmyk)
    red = decode_image(cmyk, (8, 8))
    assert red[..., 0].mean() > 200 and red[..., 1].mean() < 60
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)
    with pytest.raises(DataError, match="limit of 40,000,000"):
        decode_image(bomb)


@needs_digits
def test_import_the_shared_sign_language_digits(cli, tmp_path):
    proc = cli("data", "import", DIGITS, "--out", tmp_path, "--quiet")
    assert proc.returncode == 0, proc.stderr
    train, test = load_data_dir(tmp_path)
    assert train.classes == [0, 1, 2, 3, 4, 5] and train.input_shape == (64, 64, 3)
    assert len(train) + len(test) == 1050
    assert 0.08 < len(test) / 1050 < 0.12
    assert set(np.bincount(test.y)) <= set(range(15, 21))


def _noisy_pairs(n, classes, seed):
    """n distinct images per class, each twice (the copy with a little noise): the same
    hand photographed twice."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n * classes, 64, 64, 3)).astype(np.uint8)
    noisy = np.clip(base.astype(int) + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
    y = np.repeat(np.arange(classes), n)
    return Signs(np.concatenate([base, noisy]), np.concatenate([y, y]), list(range(classes)),
                 "train_signs.h5")


def test_validation_split_is_stratified_grouped_and_repeatable():
    data = _noisy_pairs(20, 3, seed=4)
    train, val = split_validation(data, 0.1, seed=7)
    assert len(train) + len(val) == len(data)
    assert np.bincount(val.y).tolist() == [4, 4, 4]  # 10% of each class's 40, whole pairs
    rows = {img.tobytes(): i for i, img in enumerate(data.x)}
    val_rows = {rows[img.tobytes()] for img in val.x}
    train_rows = {rows[img.tobytes()] for img in train.x}
    assert not val_rows & train_rows
    n = len(data) // 2
    for i in range(n):  # an image and its near-duplicate are on the same side
        assert (i in val_rows) == (i + n in val_rows)
    again_train, again_val = split_validation(data, 0.1, seed=7)
    np.testing.assert_array_equal(again_val.x, val.x)
    assert not np.array_equal(split_validation(data, 0.1, seed=8)[1].x, val.x)


def test_training_validates_on_a_split_of_the_training_file_never_on_the_test_file(synth_dir):
    from resnet_ray.config import TrainConfig
    from resnet_ray.sources import open_source

    train_file, test_file = load_data_dir(synth_dir)
    source = open_source(TrainConfig(data=str(synth_dir), model="tiny", batch_size=8))
    train, val, test = source.train, source.val, source.test
    file_rows = {img.tobytes() for img in train_file.x}
    test_rows = {img.tobytes() for img in test_file.x}
    assert len(val) and all(img.tobytes() in file_rows for img in val.x)
    assert not {img.tobytes() for img in val.x} & test_rows
    assert not {img.tobytes() for img in train.x} & {img.tobytes() for img in val.x}
    np.testing.assert_array_equal(test.x, test_file.x)
    # val_fraction 0 is the seed recipe's way: validate on the test file, train on all of it
    source0 = open_source(TrainConfig(data=str(synth_dir), val_fraction=0.0))
    train0, val0 = source0.train, source0.val
    assert len(train0) == len(train_file)
    np.testing.assert_array_equal(val0.x, test_file.x)


def test_too_small_a_class_for_a_validation_split_is_named(cli, tmp_path):
    write_signs_dir(tmp_path, Signs(random_images(3), np.array([0, 1, 1]), [0, 1]),
                    Signs(random_images(2), np.array([0, 1]), [0, 1]))
    proc = cli("train", "--data", tmp_path, "--model", "tiny", "--num-workers", "0",
                   "--batch-size", "1", "--storage", tmp_path / "runs")
    assert_user_error(proc, "class 0", "validation", "--val-fraction")
    proc = cli("train", "--data", tmp_path, "--model", "tiny", "--val-fraction", "1.5",
                   "--storage", tmp_path / "runs")
    assert_user_error(proc, "val_fraction", "below 1")
