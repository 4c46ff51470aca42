"""Where training data comes from, decided once: SIGNS .h5 files, the embedded photos (the
same files, written on first use), or a folder or bucket of photos that Ray Data streams to
the workers. `open_source` is the one place that looks at a location to choose; the driver,
the workers, Tune, export and evaluate use the DataSource it returns without asking which.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from . import embedded, folders
from .config import TrainConfig
from .data import TEST_FILE, Signs, load_data_dir, parse_classes, split_validation
from .errors import ConfigError


class DataSource:
    """A checked data set: its classes and image shape, the training and validation images
    the workers see, and the test images that export scores once."""

    kind: str
    classes: list[int]
    input_shape: tuple[int, int, int]
    train_images: int
    val_images: int
    test_source: str

    def check(self, cfg: TrainConfig, in_process: bool) -> None:
        """Refuse, before any worker starts, a run this data cannot serve."""
        if self.train_images < cfg.update_batch_size:
            accumulate = f" x accumulate {cfg.accumulate}" if cfg.accumulate > 1 else ""
            raise ConfigError(f"batch_size: {cfg.batch_size}{accumulate} is larger than the "
                              f"{self.train_images} training images in {self.train_source}")

    def prepare(self, strict: bool = False) -> None:
        """On the driver, before training or export: whatever the source needs first."""

    def trainer_inputs(self, cfg: TrainConfig, shared: bool) -> tuple[Any, Any, Any]:
        """(Ray datasets, their DataConfig, the feed every worker gets in its loop config);
        shared: the workers are Ray processes, so arrays go through the object store."""
        raise NotImplementedError

    def test_scores(self, model) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, labels) of the test images, predicted by `model`."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """What metadata.json keeps of the data: enough to check that a repeat used the same."""
        raise NotImplementedError

    def warning(self) -> str | None:
        """One line for the end of the run (files skipped), or None."""
        return None


@dataclass
class ArraySource(DataSource):
    """SIGNS .h5 files: the training file less its validation split, and the test file."""

    train: Signs
    val: Signs
    test: Signs
    kind: str = "h5"

    def __post_init__(self):
        self.classes, self.input_shape = list(self.train.classes), self.train.input_shape
        self.train_images, self.val_images = len(self.train), len(self.val)
        self.train_source, self.test_source = self.train.source, self.test.source

    def trainer_inputs(self, cfg, shared):
        import ray

        data = (self.train, self.val)
        return None, None, ArrayFeed(ref=ray.put(data)) if shared else ArrayFeed(arrays=data)

    def test_scores(self, model):
        from .predict import predict_probs

        return predict_probs(model, self.test.x), self.test.y

    def record(self):
        def part(s: Signs, is_file: bool) -> dict[str, Any]:
            rec = {"source": s.source, "images": len(s),
                   "per_class": np.bincount(s.y, minlength=len(s.classes)).tolist()}
            if is_file:  # the validation split's source names a share of the training file
                rec["sha256"] = _sha256(s.source)
            return rec

        return {"train": part(self.train, True), "validation": part(self.val, False),
                "test": part(self.test, True)}


@dataclass
class FolderSource(DataSource):
    """A folder or bucket of photos in class sub-folders, listed here and streamed to the
    workers by Ray Data (resnet_ray/folders.py)."""

    data: folders.FolderData
    kind: str = "folder"

    def __post_init__(self):
        self.classes = list(self.data.classes)
        self.input_shape = (*self.data.size, 3)
        train, val, test = (self.data.split(s) for s in folders.SPLITS)
        self.train_images, self.val_images = len(train), len(val)
        self.train_source, self.test_source = train.source, test.source

    def check(self, cfg, in_process):
        if in_process:
            raise ConfigError(f"num_workers: a folder of photos ({cfg.data}) streams to Ray "
                              "Train workers through Ray Data; expected 1 or more, got 0")
        super().check(cfg, in_process)

    def prepare(self, strict=False):
        from .runtime import init_ray

        init_ray()  # Ray Data decodes the photos; the run's own cluster when it has one
        folders.count_skipped(self.data, strict)

    def trainer_inputs(self, cfg, shared):
        from ray.train import DataConfig

        train, val = self.data.split("train"), self.data.split("validation")
        # Every worker validates on all of the validation split, as with .h5 data.
        datasets = {"train": folders.dataset(train, shuffle_seed=cfg.seed),
                    "validation": folders.dataset(val)}
        return (datasets, DataConfig(datasets_to_split=["train"],
                                     execution_options=folders.ingest_options()),
                StreamFeed(len(train)))

    def test_scores(self, model):
        batches = folders.dataset(self.data.split("test")).iter_batches(
            batch_size=64, batch_format="numpy")  # a batch at a time, whatever the split's size
        return folders.predict_split(model, batches)

    def record(self):
        return self.data.record()

    def warning(self):
        return folders.skipped_line(self.data)


@dataclass
class ArrayFeed:
    """A worker's .h5 data: the arrays themselves in one process, else their object."""

    arrays: tuple[Signs, Signs] | None = None
    ref: Any = None

    def inputs(self, cfg: TrainConfig):
        """(training images, dataset_fn of the first epoch, validate(model) -> (probabilities,
        labels)) for this worker."""
        import ray

        from .input_pipeline import make_dataset_fn
        from .predict import predict_probs

        train, val = self.arrays or ray.get(self.ref)
        return (len(train), partial(make_dataset_fn, train, cfg),
                lambda model: (predict_probs(model, val.x), val.y))


@dataclass
class StreamFeed:
    """A worker's folder data: its shards of the Ray datasets the trainer was given."""

    train_images: int

    def inputs(self, cfg: TrainConfig):
        import ray.train

        from .input_pipeline import make_stream_fn

        shard, val_shard = (ray.train.get_dataset_shard(n) for n in ("train", "validation"))
        steps = self.train_images // cfg.update_batch_size
        return (self.train_images, partial(make_stream_fn, shard, cfg, steps),
                folders.ValidationStream(val_shard, cfg.keep_images))


def open_source(cfg: TrainConfig) -> DataSource:
    """The checked data source that cfg.data names, or one clear error before any worker
    starts. A folder of photos is only listed here: its splits stream to the workers."""
    if folders.is_folder(cfg.data):
        classes = parse_classes(cfg.data_classes) if cfg.data_classes else None
        return FolderSource(folders.list_folder(cfg.data, classes, cfg.val_fraction,
                                                tuple(cfg.input_shape[:2])))
    if cfg.data_classes or cfg.strict:
        flag = "--classes" if cfg.data_classes else "--strict"
        raise ConfigError(f"{flag}: applies to a folder of photos; {cfg.data} holds SIGNS "
                          ".h5 files (`resnet-ray data import --classes` chooses their classes)")
    train, test = load_data_dir(embedded.resolve(cfg.data))
    val = test
    if cfg.val_fraction:
        train, val = split_validation(train, cfg.val_fraction, cfg.seed)
    return ArraySource(train, val, test, kind="builtin" if embedded.is_builtin(cfg.data)
                       else "h5")


def test_file(location: str) -> str:
    """The SIGNS file that `resnet-ray evaluate --data` names: itself, or the held-out test
    file of an embedded data set (builtin:sign-digits)."""
    if embedded.is_builtin(location):
        return str(Path(embedded.resolve(location)) / TEST_FILE)
    return location


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
