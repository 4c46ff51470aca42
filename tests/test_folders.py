"""Photo folders as training data: the listing, its splits and its errors (no Ray), then
training streamed by Ray Data from a local folder and from an S3-compatible server on
loopback (moto), read through the same pyarrow filesystem a user's bucket would use."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import SMOKE_SEARCH, assert_user_error

from resnet_ray.config import TrainConfig
from resnet_ray.folders import is_folder, list_folder

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def write_folder(root, classes=(0, 1), per_class=36, seed=0):
    """Photos of `classes`, each class its own colour, in several sizes, modes and formats."""
    rng = np.random.default_rng(seed)
    for digit in classes:
        (root / str(digit)).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (40 + 8 * (i % 3), 32 + 4 * (i % 4))
            base = np.zeros((size[1], size[0], 3), np.uint8)
            base[..., digit % 3] = 200
            img = Image.fromarray(np.clip(base + rng.integers(0, 50, base.shape), 0, 255)
                                  .astype(np.uint8))
            if i % 3 == 0:
                img.convert("L").save(root / str(digit) / f"img{i:03d}.png")
            else:
                img.save(root / str(digit) / f"img{i:03d}.jpg", quality=85)
    return root


def add_bad_files(root):
    """A truncated JPEG and a text file named like a photo: what a real bucket holds."""
    good = (root / "0" / "img001.jpg").read_bytes()
    (root / "0" / "truncated.jpg").write_bytes(good[:len(good) // 3])
    (root / "1" / "notes.png").write_text("not an image\n")
    return ["0/truncated.jpg", "1/notes.png"]


def test_a_file_keeps_its_split_when_the_folder_grows(tmp_path):
    root = write_folder(tmp_path / "photos", classes=(0, 1, 2))
    before = list_folder(str(root))
    assert before.classes == [0, 1, 2]
    splits = {p: s for s, files in before.files.items() for p, _ in files}
    assert len(splits) == 3 * 36  # every file in exactly one split
    assert all(before.files[s] for s in ("train", "validation", "test"))
    write_folder(root, classes=(0, 1, 2), per_class=48, seed=1)  # adds img036..img047
    after = list_folder(str(root))
    assert after.digest != before.digest
    moved = [p for s, files in after.files.items() for p, _ in files
             if p in splits and splits[p] != s]
    assert moved == []
    record = after.record()
    assert sum(record[s]["images"] for s in ("train", "validation", "test")) == 3 * 48
    assert record["test"]["per_class"] == after.per_class("test")
    only = list_folder(str(root), classes=[2, 0])
    assert only.classes == [2, 0] and {label for _, label in only.files["train"]} == {0, 1}


def test_photo_folder_or_signs_directory(tmp_path, synth_dir):
    assert is_folder(str(write_folder(tmp_path / "p"))) and is_folder("s3://bucket/photos")
    assert not is_folder(str(synth_dir))


class _Shard:
    """A worker's Ray Data shard of 44 images whose pixels are their index; counts passes."""

    def __init__(self, n=44):
        self.images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None],
                                      (n, 4, 4, 3))
        self.passes = 0

    def iter_batches(self, batch_size, **_):
        self.passes += 1
        for i in range(0, len(self.images), batch_size):
            index = np.arange(i, min(i + batch_size, len(self.images)))
            yield {"image": self.images[index], "label": index % 2,
                   "path": np.asarray([f"p{j}" for j in index])}


@pytest.mark.parametrize("keep", [44, 43, 0])
def test_a_small_share_is_read_once_then_reshuffled_in_memory(keep):
    from resnet_ray.input_pipeline import make_stream_fn

    class Context:
        input_pipeline_id = 0

        def get_per_replica_batch_size(self, size):
            return size

    cfg = TrainConfig(input_shape=(4, 4, 3), classes=[0, 1], epochs=3, batch_size=8,
                      augment=0, keep_images=keep)
    shard, steps = _Shard(), 5
    ds = make_stream_fn(shard, cfg, steps, 0)(Context())
    epochs = [[], [], []]
    for i, (x, y) in enumerate(ds.take(3 * steps)):
        index = np.rint(x.numpy()[:, 0, 0, 0] * 255).astype(int)
        assert (y.numpy().argmax(axis=1) == index % 2).all()
        epochs[i // steps] += index.tolist()
    # Each epoch: 40 different images of the 44 (full batches only).
    assert all(len(set(e)) == 40 and set(e) <= set(range(44)) for e in epochs)
    # Read once when the share fits in keep_images, then in a new order each epoch (the last
    # partial batch kept too); else streamed every epoch.
    assert shard.passes == (1 if keep >= 44 else 3)
    if keep >= 44:
        assert epochs[1] != epochs[2] and set(epochs[1] + epochs[2]) - set(epochs[0])


@pytest.mark.parametrize("case", ["missing", "no_class_folders", "empty_class",
                                  "absent_class", "h5_with_classes"])
def test_bad_folders_get_one_clear_error_before_any_worker(cli, tmp_path, synth_dir, case):
    root = tmp_path / "photos"
    extra = []
    if case == "missing":
        expect = [f"{root}: no such directory", "one sub-folder of photos per class"]
    elif case == "no_class_folders":
        root.mkdir()
        (root / "a.jpg").write_bytes(b"x")
        (root / "cats").mkdir()
        expect = [f"{root}: no class sub-folders", "found ['cats']"]
    elif case == "empty_class":
        write_folder(root)
        for p in (root / "1").iterdir():
            p.unlink()
        expect = [f"{root}/1: no images"]
    elif case == "absent_class":
        write_folder(root)
        extra = ["--classes", "0,1,7"]
        expect = [f"{root}/7: no such class folder (found: [0, 1])"]
    else:
        root = synth_dir
        extra = ["--classes", "0,1"]
        expect = ["--classes: applies to a folder of photos"]
    proc = cli("train", "--data", root, "--model", "tiny", "--storage", tmp_path / "runs",
               *extra)
    assert_user_error(proc, *expect)
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def moto():
    """An S3-compatible server on loopback (moto), as a user's bucket would be reached."""
    port = _free_port()
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"),
                             "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    _wait_for_port(port)
    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=url)
    yield url
    proc.terminate()
    proc.wait(10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"moto_server did not listen on {port}")


def upload(local, bucket, prefix):
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    for p in sorted(local.rglob("*")):
        if p.is_file():
            s3.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(local).as_posix()}")
    return f"s3://{bucket}/{prefix}"


def test_unreachable_or_refused_bucket_is_one_clear_error(cli, tmp_path, moto, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    proc = cli("train", "--data", "s3://photos/set", "--model", "tiny")
    assert_user_error(proc, "s3://photos/set: cannot list", "credentials")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    proc = cli("train", "--data", "s3://no-such-bucket/set", "--model", "tiny")
    assert_user_error(proc, "s3://no-such-bucket/set: no such folder")
    # Refused credentials: a second server that checks them.
    port = _free_port()
    auth = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"),
                             "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        proc = cli("train", "--data", "s3://photos/set", "--model", "tiny")
        assert_user_error(proc, "s3://photos/set: cannot list", "ACCESS_DENIED", "credentials")
    finally:
        auth.terminate()
        auth.wait(10)


@pytest.mark.ray
@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("command", [["train", "--model", "tiny"],
                                     ["tune", "--config", SMOKE_SEARCH]], ids=["train", "tune"])
def test_strict_names_the_unreadable_files_before_training(cli, tmp_path, command):
    root = write_folder(tmp_path / "photos")
    bad = add_bad_files(root)
    proc = cli(*command, "--data", root, "--strict", "--storage", tmp_path / "runs")
    assert_user_error(proc, f"{root}: 2 file(s) are not readable images (--strict)",
                      *[str(root / b) for b in bad])
    assert not list((tmp_path / "runs").rglob("checkpoint_*"))


@pytest.mark.ray
@pytest.mark.usefixtures("ray_cluster")
def test_a_search_on_a_folder_skips_unreadable_files_and_says_so(cli, tmp_path):
    root = write_folder(tmp_path / "photos")
    bad = add_bad_files(root)
    proc = cli("tune", "--config", SMOKE_SEARCH, "--data", root, "--num-samples", 1,
               "--storage", tmp_path / "runs", "--export", tmp_path / "model")
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "skipped" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: skipped 2 file(s)")
    assert all(str(root / b) in warning[0] for b in bad)
    meta = json.loads((tmp_path / "model" / "metadata.json").read_text())
    assert meta["data"] == list_folder(str(root)).record()


@pytest.mark.ray
@pytest.mark.usefixtures("ray_cluster")
def test_two_workers_train_from_a_bucket_and_skip_a_corrupt_file(cli, tmp_path, moto):
    local = write_folder(tmp_path / "photos")
    bad = add_bad_files(local)
    uri = upload(local, "photos", "hands")
    listing = list_folder(uri)
    proc = cli("train", "--data", uri, "--model", "tiny", "--epochs", "2", "--batch-size", "8",
               "--num-workers", "2", "--storage", tmp_path / "runs", "--export", tmp_path / "model")
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "skipped" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: skipped 2 file(s)")
    assert all(f"photos/hands/{b}" in warning[0] for b in bad)
    assert "epoch 2/2" in proc.stdout and "test split" in proc.stdout
    meta = json.loads((tmp_path / "model" / "metadata.json").read_text())
    assert meta["data"] == listing.record() and meta["data"]["location"] == uri
    in_test = sum(1 for p, _ in listing.files["test"] if any(p.endswith(b) for b in bad))
    assert meta["test"]["images"] == len(listing.files["test"]) - in_test
    reports = [json.loads(line) for line in
               (tmp_path / "runs" / "resnet-ray" / "reports.jsonl").read_text().splitlines()]
    assert sorted((r["rank"], r["epoch"]) for r in reports) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    shutil.rmtree(tmp_path / "runs")
