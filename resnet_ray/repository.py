"""Model repositories: numbered versions of exported models, the layout TF Serving and Triton
use. A repository is a directory whose sub-directories `1`, `2`, ... are each a model
directory (resnet_ray/modeldir.py), each written atomically, so a numbered directory that
exists is complete; the newest version is the highest number. A plain model directory (with
its own metadata.json) is served as it is, without a version."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ModelDirError
from .modeldir import METADATA_FILE

VERSION = re.compile(r"^[1-9][0-9]*$")


def is_plain(path: str | os.PathLike) -> bool:
    """A model directory itself rather than a repository of versions."""
    return (Path(path) / METADATA_FILE).is_file()


def versions(repo: str | os.PathLike) -> list[int]:
    """The repository's complete versions, oldest first."""
    repo = Path(repo)
    if not repo.is_dir():
        return []
    return sorted(int(d.name) for d in repo.iterdir()
                  if VERSION.match(d.name) and (d / METADATA_FILE).is_file())


def resolve(path: str | os.PathLike, version: int | None = None) -> tuple[str, int | None]:
    """(model directory, version) that `path` serves: a plain model directory as it is
    (version None; pinning one is an error), else the repository's version `version`, or
    its newest."""
    path = Path(path)
    if is_plain(path):
        if version is not None:
            raise ModelDirError(f"{path}: a model directory, not a repository of numbered "
                                f"versions; --version applies to a repository")
        return str(path), None
    if not path.is_dir():
        raise ModelDirError(f"{path}: no such model directory or repository; expected a "
                            f"model directory (made by `resnet-ray train --export DIR`) or a "
                            f"repository of numbered versions (`--export REPO --next-version`)")
    found = versions(path)
    if not found:
        raise ModelDirError(f"{path}: holds neither {METADATA_FILE} (a model directory) nor a "
                            f"numbered version 1, 2, ... (a repository)")
    if version is None:
        version = found[-1]
    elif version not in found:
        raise ModelDirError(f"{path}: no version {version}; versions: {found}")
    return str(path / str(version)), version


def check_repository(repo: str | None) -> None:
    """Before a run starts: --next-version needs --export naming a repository."""
    if repo is None:
        raise ModelDirError("--next-version: applies with --export REPO")
    next_version_dir(repo)


def claim_next_version(repo: str | os.PathLike) -> tuple[Path, int]:
    """Make the repository's next version directory, empty, and return it with its number:
    a concurrent export that claimed the same number first makes this take the next."""
    while True:
        path = next_version_dir(repo)
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            continue
        return path, int(path.name)


def next_version_dir(repo: str | os.PathLike) -> Path:
    """Where the repository's next version goes: one above the highest number, complete or
    being written (a version is never overwritten)."""
    repo = Path(repo)
    if is_plain(repo):
        raise ModelDirError(f"{repo}: a model directory, not a repository; --next-version "
                            f"writes REPO/1, REPO/2, ... into a directory of its own")
    taken = [int(d.name) for d in repo.iterdir() if VERSION.match(d.name)] \
        if repo.is_dir() else []
    return repo / str(max(taken, default=0) + 1)
