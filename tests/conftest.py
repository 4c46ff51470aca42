import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DIGITS = SHARED / "datasets" / "sign-language-digits"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true",
                     help="the long reliability suite: every seeded fault run, more "
                          "Hypothesis examples, 5,000 load requests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="long version only (pytest --long)")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run `resnet-ray ARGS` in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, "-m", "resnet_ray", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_user_error(proc, *fragments):
    """Exit status 2, one clear message naming what was wrong, and no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """A small embedded-default data set (made by the project's own generator)."""
    from resnet_ray.data import write_signs_dir
    from resnet_ray.synth import synth_data

    out = tmp_path_factory.mktemp("synth")
    train, test = synth_data(192, 48, seed=1)
    write_signs_dir(out, train, test)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(synth_dir, tmp_path_factory):
    """A tiny model trained in this process (num_workers 0) and exported."""
    from resnet_ray.config import TrainConfig
    from resnet_ray.train import run_training

    base = tmp_path_factory.mktemp("tiny")
    cfg = TrainConfig(data=str(synth_dir), model="tiny", epochs=2, batch_size=32,
                      num_workers=0, storage=str(base / "runs"), name="tiny",
                      export=str(base / "model"))
    run_training(cfg, quiet=True)
    return base / "model"


def digits_available():
    return (DIGITS / "0").is_dir()


needs_digits = pytest.mark.skipif(
    not digits_available(),
    reason=f"{DIGITS} is absent (it is shared beside the repository, not part of a clone)")


def random_images(n, size=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
