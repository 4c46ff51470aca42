"""The embedded default data set: a 64x64 copy of the Sign Language Digits photos (real hands
signing 0-9; Apache-2.0, with LICENSE and ATTRIBUTION.md beside the images).

`--data builtin:sign-digits` (digits 0-5, SIGNS' six classes) or `builtin:sign-digits-10`
(all ten) name it wherever a data directory is expected: the photos are split once, as
`resnet-ray data import` splits a folder (near-duplicates on one side), into SIGNS-layout
files in a cache directory. `resnet-ray data sample --out DIR` writes such files anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from .errors import DataError

ROOT = Path(__file__).resolve().parent / "embedded" / "sign-digits"
MANIFEST = "manifest.json"
PREFIX = "builtin:"
NAMES = {"sign-digits": [0, 1, 2, 3, 4, 5], "sign-digits-10": list(range(10))}
SIZE, TEST_FRACTION, SEED = 64, 0.1, 0


def image_files(root: Path = ROOT) -> list[Path]:
    return sorted(p for p in root.glob("[0-9]/*.jpg"))


def digest(root: Path = ROOT) -> str:
    """sha256 over every image's relative path and bytes: names this copy of the data."""
    h = hashlib.sha256()
    for p in image_files(root):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def is_builtin(location: str) -> bool:
    return str(location).startswith(PREFIX)


def classes_of(location: str) -> list[int]:
    name = str(location)[len(PREFIX):]
    if name not in NAMES:
        raise DataError(f"{location}: no such embedded data set; expected one of "
                        f"{', '.join(PREFIX + n for n in NAMES)}")
    return NAMES[name]


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "resnet-ray"


def resolve(location: str) -> str:
    """A data directory for `location`: itself, or for a builtin name the SIGNS-layout files
    of its split, written to the cache on first use."""
    if not is_builtin(location):
        return location
    classes = classes_of(location)
    out = _cache_root() / f"{location[len(PREFIX):]}-{digest()[:12]}"
    if not (out / "test_signs.h5").is_file():
        sample(out, classes)
    return str(out)


def sample(out_dir: str | os.PathLike, classes: list[int], test_fraction: float = TEST_FRACTION,
           seed: int = SEED, progress: bool = False):
    """The embedded photos of `classes`, split into SIGNS-layout train and test files."""
    from .data import import_images

    missing = [c for c in classes if c not in NAMES["sign-digits-10"]]
    if missing:
        raise DataError(f"--classes: the embedded photos show digits 0-9, not {missing}")
    return import_images(ROOT, out_dir, classes, SIZE, test_fraction, seed, progress=progress)


def build(source: str | os.PathLike, out: Path = ROOT) -> dict:
    """Maintainers: write the 64x64 copy of a Sign Language Digits folder and its manifest
    (`python -m resnet_ray.embedded SOURCE`). LICENSE and ATTRIBUTION.md are kept by hand."""
    from PIL import Image

    from .images import IMAGE_SUFFIXES, decode_image

    source = Path(source)
    for digit in range(10):
        folder = out / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted((source / str(digit)).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                pixels = decode_image(path, (SIZE, SIZE))
                # Quality 95 without chroma subsampling: close to the decoded pixels at a
                # third of PNG's size.
                Image.fromarray(pixels).save(folder / f"{path.stem}.jpg", format="JPEG",
                                             quality=95, subsampling=0)
    files = image_files(out)
    manifest = {"images": len(files), "size": [SIZE, SIZE, 3], "sha256": digest(out),
                "per_digit": {str(d): sum(p.parent.name == str(d) for p in files)
                              for d in range(10)}}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def manifest() -> dict:
    return json.loads((ROOT / MANIFEST).read_text())


if __name__ == "__main__":
    print(json.dumps(build(sys.argv[1]), indent=2))
