import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE_SEARCH = ROOT / "tune_configs" / "smoke.yaml"  # the shipped search the tests run
SHARED = ROOT.parent / "shared"
DIGITS = SHARED / "datasets" / "sign-language-digits"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.pop("RAY_ADDRESS", None)  # the suite starts its own cluster, never a user's
# Credentials for the tests' S3 server (moto accepts any), set before the shared cluster
# starts so that its workers hold them as a real cluster's nodes would; yours are kept.
for _key, _value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                     ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_EC2_METADATA_DISABLED", "true")):
    os.environ.setdefault(_key, _value)


SERVE_PORT = 8311
SERVE_URL = f"http://127.0.0.1:{SERVE_PORT}"


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true",
                     help="the long reliability suite: every seeded fault run, more "
                          "Hypothesis examples, 5,000 load requests")


def pytest_collection_modifyitems(config, items):
    # Tests with a private cluster stop the shared one; running them last starts it once.
    items.sort(key=lambda item: "private_ray" in getattr(item, "fixturenames", ())
               or item.get_closest_marker("private_cluster") is not None)
    for item in items:  # the first user of the shared search also waits for the search
        if "smoke_search" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(2400))
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="long version only (pytest --long)")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


def plan_of(cfg, cpus: int = 2):
    """The plan of a config on a one-node cluster of `cpus` CPUs, without starting Ray."""
    from resnet_ray.layout import Node
    from resnet_ray.plan import resolve

    return resolve(cfg, lambda: [Node(cpus=cpus)])


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run `resnet-ray ARGS` in a fresh interpreter, as a user would. With the shared
    cluster up, the command joins it through RAY_ADDRESS."""
    return subprocess.run([sys.executable, "-m", "resnet_ray", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **(env or {})})


class CliResult:
    """What `cli.main` returned and printed, shaped like a finished subprocess."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    """`resnet-ray ARGS` in this process: the same parser, errors and exit status as the
    command, without a new interpreter's imports."""
    from resnet_ray.cli import main

    def run(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


def assert_user_error(proc, *fragments):
    """Exit status 2, one clear message naming what was wrong, and no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)


def stop_ray():
    import ray
    from ray.serve.context import _set_global_client

    if ray.is_initialized():
        ray.shutdown()
    _set_global_client(None)  # a Serve handle to the stopped cluster would be stale
    os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture(scope="session")
def ray_cluster():
    """The Ray cluster shared by every test that needs *a* cluster; CLI subprocesses join it
    through RAY_ADDRESS. Tests with a private cluster run after all of its users. Its Serve
    answers HTTP as `resnet-ray serve` does by default: through the guarded HAProxy."""
    import ray

    from resnet_ray.runtime import init_ray
    from resnet_ray.serve_run import choose_ingress

    if not ray.is_initialized():
        before = set(os.environ)
        choose_ingress("haproxy")
        added = set(os.environ) - before
        init_ray()
        for key in added:  # private clusters, started later, start as a user's would
            del os.environ[key]
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    yield
    stop_ray()


@pytest.fixture
def private_ray():
    """For a test that starts its own cluster or kills one: two clusters on one host break
    Ray Train, so the shared one is stopped first."""
    stop_ray()
    yield
    stop_ray()


@pytest.fixture(scope="session")
def serve_instance(ray_cluster):
    """Ray Serve on the shared cluster, on one HTTP port for all tests; a module's
    applications are deleted when it ends (delete_apps), as in Ray's own conftest."""
    from ray import serve

    serve.start(http_options={"host": "127.0.0.1", "port": SERVE_PORT})
    yield SERVE_URL


def delete_apps():
    from ray import serve

    for name in list(serve.status().applications):
        serve.delete(name)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """A small embedded-default data set (made by the project's own generator)."""
    from resnet_ray.data import write_signs_dir
    from resnet_ray.synth import synth_data

    out = tmp_path_factory.mktemp("synth")
    train, test = synth_data(192, 48, seed=1)
    write_signs_dir(out, train, test)
    return out


def write_easy_signs(out) -> None:
    """SIGNS files that a tiny model learns to 100% in four epochs with --bn-momentum 0.5
    (the digit is where a bright square sits on dark noise): for a test whose outcome rests
    on one model scoring better than another."""
    from resnet_ray.data import Signs, write_signs_dir

    def part(n, seed):
        rng = np.random.default_rng(seed)
        y = np.resize(np.arange(6), n)
        rng.shuffle(y)
        x = rng.integers(0, 40, (n, 64, 64, 3)).astype(np.uint8)
        for image, digit in zip(x, y):
            row, col = divmod(int(digit), 3)
            image[8 + row * 28:28 + row * 28, 2 + col * 21:20 + col * 21] = 230
        return Signs(x=x, y=y.astype(np.int64), classes=list(range(6)), source=f"easy({seed})")

    write_signs_dir(out, part(192, 0), part(48, 1))


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


@pytest.fixture(scope="session")
def smoke_search(ray_cluster, synth_dir, tmp_path_factory):
    """The shipped smoke search from the command line, with one trial's worker killed at the
    start of its second epoch, interrupted with Ctrl-C once a trial has finished, then
    resumed with --resume: one search serves every Tune test."""
    from resnet_ray.testhooks import FAULT_ENV

    base = tmp_path_factory.mktemp("tune")
    marker = base / "fault"
    args = ["tune", "--config", SMOKE_SEARCH, "--data", synth_dir,
            "--storage", base, "--name", "smoke", "--export", base / "best"]
    proc = subprocess.Popen([sys.executable, "-m", "resnet_ray", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, FAULT_ENV: f"2:0:{marker}"})
    experiment = base / "smoke"

    def finished_trials():
        return [p.parent for p in experiment.glob("tune_trial_*/result.json")
                if any(json.loads(line).get("done") for line in p.read_text().splitlines())]

    deadline = time.time() + 600
    while not finished_trials() and time.time() < deadline and proc.poll() is None:
        time.sleep(1)
    assert proc.poll() is None, "the search ended before it could be interrupted"
    done = {p.name: p.joinpath("result.json").read_text() for p in finished_trials()}
    assert done, "no trial finished in time"
    proc.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its state and stops
    proc.wait(timeout=300)
    resumed = run_cli(*args, "--resume", timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    release_orphaned_placement_groups()
    summary = json.loads((experiment / "summary.json").read_text())
    from resnet_ray.tune_spec import load_spec

    yield load_spec(args[2]), base, summary, done, args


def release_orphaned_placement_groups():
    """Ray can keep the placement group that a trial's Train run created moments before the
    search was interrupted, after its driver and controller are gone: one CPU of the shared
    cluster held for good, and a later two-worker run would wait forever for it. The two
    search drivers have exited, so any group not made by this process is such an orphan."""
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import (PlacementGroup, placement_group_table,
                                          remove_placement_group)

    from resnet_ray.waiting import made_by

    ours = ray.get_runtime_context().get_job_id()
    for pg_id, info in placement_group_table().items():
        if info["state"] == "CREATED" and not made_by(pg_id, ours):
            remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))


def digits_available():
    return (DIGITS / "0").is_dir()


needs_digits = pytest.mark.skipif(
    not digits_available(),
    reason=f"{DIGITS} is absent (it is shared beside the repository, not part of a clone)")


def random_images(n, size=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# Lines that only Ray's or TensorFlow's own logging writes: worker output prefixes, absl and
# glog records, CUDA probes, Python logging levels, Train's and Tune's internal reports.
INTERNAL_LINE = re.compile(
    r"pid=|^[IWEF]\d{4} |absl|(?i:cuinit|cuda)|WARNING|INFO|DEBUG|raylet|TrainingReport|"
    r"PlacementGroup|Preemption|Trial status|\+-{5}")


def internal_lines(*outputs: str) -> list[str]:
    """The lines of a command's output that come from Ray's or TensorFlow's internals."""
    return [line for out in outputs for line in out.splitlines() if INTERNAL_LINE.search(line)]
