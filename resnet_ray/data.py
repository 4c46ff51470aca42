"""SIGNS-layout HDF5 data: load and validate, import from an image folder, write atomically.

Layout (the recipe's): `train_signs.h5` holds `train_set_x` (uint8, N x H x W x 3) and
`train_set_y` (N integer labels); `test_signs.h5` holds `test_set_x`, `test_set_y` and
`list_classes`. A label is an index into `list_classes`, which holds the digit each class means.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from .errors import DataError
from .images import IMAGE_SUFFIXES, decode_image, to_model_input

TRAIN_FILE = "train_signs.h5"
TEST_FILE = "test_signs.h5"
PREFIXES = ("train_set", "test_set")


@dataclass
class Signs:
    """Images (uint8) and integer labels indexing `classes` (the digit each label means)."""

    x: np.ndarray
    y: np.ndarray
    classes: list[int]
    source: str = ""

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x.shape[1:])

    def normalized(self) -> tuple[np.ndarray, np.ndarray]:
        """The recipe's preprocessing: pixels / 255 and one-hot labels with np.eye(C)[y]."""
        return to_model_input(self.x), one_hot(self.y, len(self.classes))


def one_hot(y: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[np.asarray(y, dtype=np.int64).reshape(-1)]


def load_signs(path: str | os.PathLike) -> Signs:
    """Load a train- or test-layout SIGNS file, checking every key, shape and dtype."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file; expected a SIGNS-layout HDF5 file "
                        f"({TRAIN_FILE} or {TEST_FILE})")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected a SIGNS-layout HDF5 file "
                        f"such as {path / TEST_FILE}")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    if not is_hdf5:
        raise DataError(f"{path}: not an HDF5 file; expected a SIGNS-layout .h5 file")
    try:
        with h5py.File(path, "r") as f:
            keys = sorted(f.keys())
            prefix = next((p for p in PREFIXES if f"{p}_x" in f), None)
            if prefix is None:
                raise DataError(f"{path}: missing key 'train_set_x' or 'test_set_x' "
                                f"(keys present: {keys or 'none'})")
            if f"{prefix}_y" not in f:
                raise DataError(f"{path}: missing key '{prefix}_y' (keys present: {keys})")
            x = _read(f, f"{prefix}_x", path)
            y = _read(f, f"{prefix}_y", path)
            classes = _read(f, "list_classes", path) if "list_classes" in f else None
    except DataError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: corrupt or truncated HDF5 file ({exc})") from None
    return _validate(path, prefix, x, y, classes)


def _read(f: h5py.File, key: str, path: Path) -> np.ndarray:
    obj = f[key]
    if not isinstance(obj, h5py.Dataset):
        raise DataError(f"{path}: key '{key}' is a group, expected an array")
    return obj[()]


def _validate(path: Path, prefix: str, x: np.ndarray, y: np.ndarray,
              classes: np.ndarray | None) -> Signs:
    kx, ky = f"{prefix}_x", f"{prefix}_y"
    if x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"{path}: key '{kx}' has shape {x.shape}, expected "
                        "(N, height, width, 3) RGB images")
    if x.dtype != np.uint8:
        raise DataError(f"{path}: key '{kx}' has dtype {x.dtype}, expected uint8 pixels 0-255")
    if y.ndim == 2 and 1 in y.shape:  # the recipe stores labels as (1, N) too
        y = y.reshape(-1)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: key '{ky}' has shape {y.shape} and dtype {y.dtype}, "
                        "expected N integer labels")
    if len(x) != len(y):
        raise DataError(f"{path}: '{kx}' has {len(x)} images but '{ky}' has {len(y)} labels; "
                        "expected the same number")
    if len(x) == 0:
        raise DataError(f"{path}: '{kx}' is empty; expected at least one image")
    if classes is None:
        classes = np.arange(int(y.max()) + 1)
    classes = np.asarray(classes).reshape(-1)
    if classes.size == 0 or not np.issubdtype(classes.dtype, np.integer):
        raise DataError(f"{path}: key 'list_classes' has dtype {classes.dtype} and "
                        f"{classes.size} entries, expected a non-empty list of integer digits")
    bad = (y < 0) | (y >= len(classes))
    if bad.any():
        raise DataError(f"{path}: key '{ky}' has label {int(y[bad][0])} at index "
                        f"{int(np.argmax(bad))}; expected labels 0..{len(classes) - 1}, "
                        f"one per entry of list_classes {classes.tolist()}")
    return Signs(x=x, y=y.astype(np.int64), classes=[int(c) for c in classes], source=str(path))


def load_data_dir(data_dir: str | os.PathLike) -> tuple[Signs, Signs]:
    """The train and test files of a data directory, checked to agree with each other."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: no such directory; expected a directory holding "
                        f"{TRAIN_FILE} and {TEST_FILE} (make one with `resnet-ray data synth` "
                        "or `resnet-ray data import`) or a folder with one sub-folder of "
                        "photos per class")
    train, test = load_signs(data_dir / TRAIN_FILE), load_signs(data_dir / TEST_FILE)
    if train.input_shape != test.input_shape:
        raise DataError(f"{test.source}: images are {test.input_shape}, but {train.source} has "
                        f"{train.input_shape}; expected the same shape")
    if train.classes != test.classes:
        raise DataError(f"{test.source}: list_classes {test.classes} differs from "
                        f"{train.source}'s {train.classes}; expected the same classes")
    return train, test


def split_validation(train: Signs, fraction: float, seed: int) -> tuple[Signs, Signs]:
    """(train, validation): about `fraction` of each class of the training file, kept out of
    training to pick checkpoints and stop trials, so that the test file decides nothing and
    its score stays a measurement. Whole near-duplicate groups go to one side; the same data
    and seed give the same split, so a resumed run validates on the same images."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"val_fraction: expected a number between 0 and 1, got {fraction}")
    val_idx = grouped_stratified_split(train.x, train.y, fraction, seed, part="validation",
                                       option="--val-fraction")
    mask = np.zeros(len(train), dtype=bool)
    mask[val_idx] = True
    source = f"{train.source} ({fraction:g} of each class, seed {seed})"
    return (Signs(train.x[~mask], train.y[~mask], train.classes, train.source),
            Signs(train.x[mask], train.y[mask], train.classes, source))


def write_signs_dir(out_dir: str | os.PathLike, train: Signs, test: Signs) -> tuple[Path, Path]:
    """Write both files so that either both appear complete or neither changes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    temps: list[tuple[Path, Path]] = []
    try:
        for name, prefix, part in ((TRAIN_FILE, "train_set", train), (TEST_FILE, "test_set", test)):
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir)
            os.close(fd)
            temps.append((Path(tmp), out_dir / name))
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the data from others
            with h5py.File(tmp, "w") as f:
                f.create_dataset(f"{prefix}_x", data=part.x.astype(np.uint8), compression="gzip")
                f.create_dataset(f"{prefix}_y", data=part.y.astype(np.int64))
                f.create_dataset("list_classes", data=np.asarray(part.classes, dtype=np.int64))
        for tmp, final in temps:
            os.replace(tmp, final)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
    return out_dir / TRAIN_FILE, out_dir / TEST_FILE


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def parse_classes(text: str) -> list[int]:
    try:
        classes = [int(c) for c in text.split(",") if c.strip() != ""]
    except ValueError:
        raise DataError(f"--classes: expected comma-separated digits such as 0,1,2, "
                        f"got {text!r}") from None
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise DataError(f"--classes: expected at least two distinct classes, got {text!r}")
    return classes


def import_images(images_dir: str | os.PathLike, out_dir: str | os.PathLike,
                  classes: Sequence[int] = (0, 1, 2, 3, 4, 5), size: int = 64,
                  test_fraction: float = 0.1, seed: int = 0, progress: bool = True,
                  ) -> tuple[Signs, Signs]:
    """A folder with one sub-folder per class -> SIGNS-layout train and test files.

    Near-duplicate photos (the same hand photographed twice) are kept on one side of the
    split, so that the test score measures photos the model has not seen in any form.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: no such directory; expected a folder with one "
                        "sub-folder of images per class (0/, 1/, ...)")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"--test-fraction: expected a number between 0 and 1, got {test_fraction}")
    if size < 8:
        raise DataError(f"--size: expected at least 8 pixels, got {size}")
    files: list[tuple[Path, int]] = []
    for label, digit in enumerate(classes):
        folder = images_dir / str(digit)
        if not folder.is_dir():
            present = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
            raise DataError(f"{folder}: no such folder for class {digit}; expected one "
                            f"sub-folder per class (found: {present or 'none'})")
        found = sorted(p for p in folder.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"{folder}: no images (expected files ending in "
                            f"{', '.join(sorted(IMAGE_SUFFIXES))})")
        files.extend((p, label) for p in found)

    x = np.empty((len(files), size, size, 3), dtype=np.uint8)
    bar = _progress(files, progress, "importing")
    for i, (path, _) in enumerate(bar):
        x[i] = decode_image(path, (size, size))
    y = np.array([label for _, label in files], dtype=np.int64)

    test_idx = grouped_stratified_split(x, y, test_fraction, seed)
    mask = np.zeros(len(y), dtype=bool)
    mask[test_idx] = True
    train = Signs(x[~mask], y[~mask], list(classes))
    test = Signs(x[mask], y[mask], list(classes))
    write_signs_dir(out_dir, train, test)
    return train, test


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm
    return tqdm(items, desc=desc, unit="img", file=sys.stderr, leave=False)


def dhash(images: np.ndarray, hash_size: int = 8) -> np.ndarray:
    """Difference hashes (rows of bools) of uint8 RGB images: close for near-duplicates."""
    gray = images.astype(np.float32).mean(axis=-1)
    n, h, w = gray.shape
    # Box-average down to (hash_size, hash_size + 1) so the hash ignores pixel noise.
    rows = np.linspace(0, h, hash_size + 1).astype(int)
    cols = np.linspace(0, w, hash_size + 2).astype(int)
    small = np.stack([
        np.stack([gray[:, rows[r]:rows[r + 1], cols[c]:cols[c + 1]].mean(axis=(1, 2))
                  for c in range(hash_size + 1)], axis=1)
        for r in range(hash_size)], axis=1)
    return (small[:, :, 1:] > small[:, :, :-1]).reshape(n, -1)


def duplicate_groups(images: np.ndarray, labels: np.ndarray, max_distance: int = 3) -> np.ndarray:
    """Group id per image: images of one class whose hashes differ in <= max_distance bits."""
    hashes = dhash(images)
    parent = np.arange(len(images))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        h = hashes[idx]
        dist = (h[:, None, :] != h[None, :, :]).sum(axis=-1)
        for a, b in zip(*np.nonzero(np.triu(dist <= max_distance, k=1))):
            ra, rb = find(idx[a]), find(idx[b])
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(len(images))])


def grouped_stratified_split(images: np.ndarray, labels: np.ndarray, test_fraction: float,
                             seed: int, part: str = "testing",
                             option: str = "--test-fraction") -> np.ndarray:
    """Indices of the held-out part: about test_fraction of each class, whole groups only."""
    rng = np.random.default_rng(seed)
    groups = duplicate_groups(images, labels)
    test: list[int] = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        want = max(1, int(round(len(idx) * test_fraction)))
        if want >= len(idx):
            raise DataError(f"class {label}: {len(idx)} images are too few to keep {want} "
                            f"for {part}; add images or lower {option}")
        members: dict[int, list[int]] = {}
        for i in idx:
            members.setdefault(int(groups[i]), []).append(int(i))
        order = list(members)
        rng.shuffle(order)
        taken: list[int] = []
        for g in order:
            if len(taken) >= want:
                break
            if len(taken) + len(members[g]) <= want + max(1, want // 10):
                taken.extend(members[g])
        test.extend(taken)
    return np.array(sorted(test), dtype=np.int64)
