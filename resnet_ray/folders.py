"""Folders of photos as training data, local or in a bucket, streamed to the workers by Ray Data.

A location holds one sub-folder per class (`0/`, `1/`, ...), on any filesystem pyarrow opens
(a local path, s3://, gs://, ...; credentials from the usual environment). The driver only
lists it: every check that can fail before a worker starts happens here. Each file's split
(train, validation, test) follows from a hash of its path relative to the location, so a file
never changes side between runs and test photos never reach training. Decoding and resizing
run as Ray Data operations; a file that is not a readable image is skipped and counted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import is_remote
from .errors import DataError
from .images import IMAGE_SUFFIXES, ImageError, decode_image

TEST_FRACTION = 0.1  # as `resnet-ray data import` keeps for its test file
SPLITS = ("train", "validation", "test")
DECODE_BATCH = 32
FILES_PER_TASK = 400
INGEST_STORE_BYTES = 64 * 2 ** 20  # Ray Data's object store budget per stream to the workers


@dataclass
class FolderData:
    """The listing of a photo folder: per split, (path on `filesystem`, label) pairs."""

    location: str
    root: str
    filesystem: Any
    classes: list[int]
    files: dict[str, list[tuple[str, int]]]
    digest: str
    size: tuple[int, int] = (64, 64)
    val_from_test: bool = False  # val_fraction 0: validate on the test split, as with .h5
    skipped: Any = field(default=None, repr=False)  # the actor that counts skipped files

    def per_class(self, split: str) -> list[int]:
        labels = [label for _, label in self.files[split]]
        return np.bincount(np.asarray(labels, dtype=np.int64),
                           minlength=len(self.classes)).tolist()

    def split(self, name: str) -> "FolderSplit":
        return FolderSplit(self, name)

    def record(self) -> dict[str, Any]:
        """What metadata.json keeps: where, which files (a digest), how many per split."""
        return {"location": self.location, "files_sha256": self.digest,
                "classes": self.classes,
                **{split: {"images": len(self.files[split]),
                           "per_class": self.per_class(split)} for split in SPLITS}}


@dataclass
class FolderSplit:
    """One split of a photo folder, where the .h5 path has a `Signs`."""

    data: FolderData
    name: str

    def files(self) -> list[tuple[str, int]]:
        d = self.data
        return d.files["test" if self.name == "validation" and d.val_from_test else self.name]

    def __len__(self) -> int:
        return len(self.files())

    @property
    def classes(self) -> list[int]:
        return self.data.classes

    @property
    def source(self) -> str:
        return f"{self.data.location} ({self.name} split)"


def is_folder(location: str) -> bool:
    """A photo folder or URI, rather than a directory of SIGNS .h5 files."""
    if is_remote(location):
        return True
    path = Path(location)
    return path.is_dir() and not (path / "train_signs.h5").exists()


def split_of(relative: str, val_fraction: float) -> str:
    """train, validation or test, from the file's relative path alone."""
    u = int.from_bytes(hashlib.sha256(relative.encode()).digest()[:8], "big") / 2.0 ** 64
    if u < TEST_FRACTION:
        return "test"
    return "validation" if u < TEST_FRACTION + (1 - TEST_FRACTION) * val_fraction else "train"


def _open(location: str):
    import pyarrow.fs as pafs

    if not is_remote(location):
        return pafs.LocalFileSystem(), str(Path(location).absolute()).rstrip("/")
    try:
        fs, root = pafs.FileSystem.from_uri(location)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError or ValueError
        raise DataError(f"{location}: cannot open ({_first_line(exc)}); expected a folder or "
                        "a URI such as s3://bucket/photos") from None
    return fs, root.rstrip("/")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def list_folder(location: str, classes: list[int] | None = None, val_fraction: float = 0.1,
                size: tuple[int, int] = (64, 64)) -> FolderData:
    """List and split a photo folder, or one clear DataError before any worker starts."""
    import pyarrow.fs as pafs

    fs, root = _open(location)
    try:
        info = fs.get_file_info(root)
        entries = fs.get_file_info(pafs.FileSelector(root, recursive=True)) \
            if info.type == pafs.FileType.Directory else []
    except Exception as exc:  # OSError from pyarrow's filesystems: network, auth, ...
        creds = (" and the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                 "AWS_PROFILE for s3://)" if is_remote(location) else "")
        raise DataError(f"{location}: cannot list ({_first_line(exc)}); check the location"
                        f"{creds}") from None
    if info.type != pafs.FileType.Directory:
        what = "no such folder" if info.type == pafs.FileType.NotFound else "not a folder"
        raise DataError(f"{location}: {what}; expected a folder with one sub-folder of photos "
                        "per class (0/, 1/, ...) or a directory of SIGNS .h5 files")
    by_class: dict[str, list[Any]] = {}
    for e in entries:
        parts = e.path[len(root) + 1:].split("/")
        if len(parts) == 1 and e.type == pafs.FileType.Directory:
            by_class.setdefault(parts[0], [])
        elif len(parts) >= 2 and e.type == pafs.FileType.File and \
                Path(e.path).suffix.lower() in IMAGE_SUFFIXES:
            by_class.setdefault(parts[0], []).append(e)
    found = sorted((int(n) for n in by_class if n.isdigit()))
    if not found:
        raise DataError(f"{location}: no class sub-folders; expected one sub-folder per class "
                        f"named by its digit (0/, 1/, ...), found {sorted(by_class) or 'none'}")
    classes = list(classes or found)
    files: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    digest = hashlib.sha256()
    if len(classes) < 2:
        raise DataError(f"{location}: expected at least two classes, got {classes}")
    for label, digit in enumerate(classes):
        if str(digit) not in by_class:
            raise DataError(f"{location}/{digit}: no such class folder (found: {found})")
        images = sorted(by_class[str(digit)], key=lambda e: e.path)
        if not images:
            raise DataError(f"{location}/{digit}: no images; expected files ending in "
                            f"{', '.join(sorted(IMAGE_SUFFIXES))}")
        for e in images:
            relative = e.path[len(root) + 1:]
            digest.update(f"{relative}\t{e.size}\n".encode())
            files[split_of(relative, val_fraction)].append((e.path, label))
    for split in ("train", "test") + (("validation",) if val_fraction else ()):
        if not files[split]:
            raise DataError(f"{location}: too few photos to hold any in the {split} split; "
                            "expected at least a few dozen per class")
    return FolderData(location, root, fs, classes, files, digest.hexdigest(), size,
                      val_from_test=not val_fraction)


def label_of(path: str, root: str, classes: list[int]) -> int:
    """The label of a file: the index of its class folder's digit in `classes`."""
    return classes.index(int(path[len(root) + 1:].split("/", 1)[0]))


def decode_batch(batch: dict[str, np.ndarray], root: str, classes: list[int],
                 size: tuple[int, int], skipped=None) -> dict[str, np.ndarray]:
    """Ray Data batch of file bytes -> {"image": uint8 (n, h, w, 3), "label": int64 (n,),
    "path"}:
    the same decoding as `data import`, predict and Serve; unreadable files are left out."""
    images, labels, paths, bad = [], [], [], []
    for data, path in zip(batch["bytes"], batch["path"]):
        try:
            images.append(decode_image(bytes(data), size, source=str(path)))
            labels.append(label_of(str(path), root, classes))
            paths.append(str(path))
        except ImageError as exc:
            bad.append(str(exc))
    if bad and skipped is not None:
        import ray

        # Waited for: the driver counts right after the last block, and an unanswered call
        # from this task could reach the counter after the driver's question.
        ray.get(skipped.add.remote(bad))
    h, w = size
    return {"image": np.stack(images) if images else np.zeros((0, h, w, 3), np.uint8),
            "label": np.asarray(labels, dtype=np.int64), "path": np.asarray(paths, dtype=str)}


def dataset(part: FolderSplit, shuffle_seed: int | None = None):
    """A Ray Dataset of one split's decoded photos; with a seed, a new file order every epoch."""
    import ray.data
    from ray.data.datasource import FileShuffleConfig

    quiet_ray_data()
    data, files = part.data, part.files()
    shuffle = None if shuffle_seed is None else FileShuffleConfig(
        seed=shuffle_seed, reseed_after_execution=True)
    # Reading and decoding ask for no CPU: the workers hold the CPUs they asked for, and a
    # task waiting for one would stall the stream. Each task reads and decodes a few hundred
    # files, two at a time: a new task may mean a new worker process, which costs seconds.
    blocks = max(2, -(-len(files) // FILES_PER_TASK))
    ds = ray.data.read_binary_files([p for p, _ in files], filesystem=data.filesystem,
                                    include_paths=True, shuffle=shuffle, num_cpus=0,
                                    override_num_blocks=blocks, concurrency=2)
    return ds.map_batches(decode_batch, batch_size=DECODE_BATCH, num_cpus=0, fn_kwargs={
        "root": data.root, "classes": data.classes, "size": data.size,
        "skipped": data.skipped})


def ingest_options():
    """Ray Data's options for the streams that feed the workers: Train's defaults with the
    object store memory in flight capped, so the store pages a worker maps stay a bounded
    set however large the folder (docs/performance.md)."""
    import copy

    import ray.data

    # Train's own default is this context's options; a copy keeps the rest of them.
    options = copy.deepcopy(ray.data.DataContext.get_current().execution_options)
    options.resource_limits = options.resource_limits.copy(
        object_store_memory=INGEST_STORE_BYTES)
    return options


def count_skipped(data: FolderData, strict: bool = False) -> None:
    """Skipped files are counted from here on (an actor every reader reports to). With
    strict (--strict), every file of every split is decoded once first (Ray Data, in
    parallel), and one error names the unreadable ones before training starts."""
    import ray

    if data.skipped is None:
        data.skipped = _skipped_counter()
    if not strict:
        return
    for split in SPLITS:
        for _ in dataset(data.split(split)).iter_batches(batch_size=None, batch_format="numpy"):
            pass
    bad = ray.get(data.skipped.get.remote())
    if bad:
        raise DataError(f"{data.location}: {len(bad)} file(s) are not readable images "
                        f"(--strict): " + "; ".join(bad[:5]) + ("; ..." if len(bad) > 5 else ""))


def _skipped_counter():
    """An actor that collects the messages of skipped files, one entry per file."""
    import ray

    @ray.remote(num_cpus=0)
    class Skipped:
        def __init__(self):
            self.messages: dict[str, None] = {}

        def add(self, messages: list[str]) -> None:
            self.messages.update(dict.fromkeys(messages))

        def get(self) -> list[str]:
            return list(self.messages)

    return Skipped.remote()


def skipped_line(data: FolderData, first: int = 3) -> str | None:
    """The one warning line about the files skipped so far, or None when there were none."""
    import ray

    messages = [] if data.skipped is None else ray.get(data.skipped.get.remote())
    if not messages:
        return None
    return (f"warning: skipped {len(messages)} file(s) that are not readable images "
            f"(--strict makes this an error): " + "; ".join(messages[:first])
            + ("; ..." if len(messages) > first else ""))


def quiet_ray_data() -> None:
    """Ray Data's progress bars and plan lines stay out of the console without --verbose;
    datasets made after this carry the setting to the workers that run them."""
    import logging

    import ray.data

    from . import console

    if not console.verbose():
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)


def predict_split(model, batches) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of decoded batches ({"image", "label"} dicts), batch by batch:
    memory stays a batch, whatever the split's size."""
    from .predict import predict_probs

    probs, labels = [], []
    for b in batches:
        if len(b["label"]):
            probs.append(predict_probs(model, b["image"]))
            labels.append(b["label"])
    if not probs:
        raise DataError("no readable images in the split; every file was skipped")
    return np.concatenate(probs), np.concatenate(labels)


class ValidationStream:
    """A worker's validation split: streamed on the first epoch and kept when it holds at
    most `keep` images (each Ray Data pass takes seconds to start), streamed every epoch
    when larger, so a worker's memory stays bounded whatever the folder's size."""

    def __init__(self, shard, keep: int):
        self.shard, self.keep, self.kept = shard, keep, None

    def __call__(self, model) -> tuple[np.ndarray, np.ndarray]:
        if self.kept is not None:
            return predict_split(model, self.kept)
        kept: list = []
        result = predict_split(model, keep_if_small(
            self.shard.iter_batches(batch_size=64, batch_format="numpy"), self.keep, kept))
        self.kept = kept or None
        return result


def keep_if_small(batches, keep: int, kept: list):
    """The batches, unchanged; each also goes into `kept`, which ends empty when they held
    more than `keep` images (a worker keeps a small split between epochs, never a large one)."""
    seen = 0
    for b in batches:
        seen += len(b["label"])
        if seen <= keep:
            kept.append(b)
        elif kept:
            kept.clear()
        yield b
