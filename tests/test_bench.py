"""The benchmark harness end to end on the tiny model: `python -m bench check --quick` (plain
Keras against Ray Train, every serving setting, the goals) and `python -m bench accuracy
--quick` (the training command as a user types it). Speeds are measured by the parts and
never asserted here; what is asserted is what a published table relies on."""

import json
import subprocess
import sys

import pytest

from bench.common import machine, profile
from conftest import ROOT


def _bench(*argv):
    return subprocess.run([sys.executable, "-m", "bench", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=400)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_check_and_accuracy_measure_on_this_machine_and_write_their_records(
        private_ray, tmp_path):
    proc = _bench("check", "--quick", "--out-dir", str(tmp_path))
    # The tiny model may miss a goal (exit 1); a failed part would be another status.
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    prof = profile(machine())
    train = json.loads((tmp_path / f"train-check-{prof}-quick.json").read_text())
    assert train["machine"] == machine() and train["command"].startswith("python -m bench ")
    # A row per setup, each ratio from this run's own timings of the same round.
    assert [r["setup"] for r in train["summary"]] == ["keras", f"ray 1x{train['cpus']}"]
    keras, ray = train["runs"]
    assert [len(r["epoch_times_s"]) for r in train["runs"]] == [2, 2]
    assert train["summary"][1]["vs_keras"] == pytest.approx(
        ray["steady_images_per_s"] / keras["steady_images_per_s"])
    assert all(r["fixed_s"] > 0 for r in train["runs"])
    assert "| keras |" in (tmp_path / f"train-check-{prof}-quick.md").read_text()

    serve = json.loads((tmp_path / f"serve-check-{prof}-quick.json").read_text())
    assert list(serve["settings"]) == ["tf", "tf, batching off", "openvino",
                                       "openvino, Ray's proxy"]
    points = [p for s in serve["settings"].values() for p in s["points"]]
    # Every request answered 200, none lost; the batcher's setting is what ran.
    assert all(set(p["codes"]) == {"200"} and p["unanswered"] == 0 for p in points)
    assert serve["settings"]["openvino"]["backend"].startswith("openvino")
    tf32 = next(r["images_per_s"] for r in serve["in_process"]
                if r["backend"].startswith("tf") and r["batch"] == 32)
    c32 = next(p for p in serve["settings"]["tf"]["points"] if p["concurrency"] == 32)
    assert serve["summary"]["tf_http_c32_vs_in_process"] == pytest.approx(
        c32["images_per_s"] / tf32)

    # The check's table: every goal, measured now or read from a stored run, and the verdict.
    out = proc.stdout
    assert f"({prof})" in out and "| ray_vs_keras | >= 0.95x |" in out
    assert ("missed, measured now:" in out) == (proc.returncode == 1)

    proc = _bench("accuracy", "--quick", "--out", str(tmp_path / "acc.json"), "--",
                  "--precision", "float32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    acc = json.loads((tmp_path / "acc.json").read_text())
    assert acc["train_command"].endswith("--epochs 3 --model tiny --precision float32")
    assert acc["precision"] == "float32" and acc["layout_line"].startswith("layout: ")
    # Timed from the command's start: the first epoch's mark includes Ray's start-up.
    walls = [c["wall_s"] for c in acc["curve"]]
    assert [c["epoch"] for c in acc["curve"]] == [1, 2, 3] and walls == sorted(walls)
    assert 0 < walls[-1] < acc["command_s"] and set(acc["reached"]) == {"0.95", "0.98", "0.99"}
    assert acc["test"]["images"] == 60 and 0 <= acc["test"]["right"] <= 60
    assert acc["classes"] == [0, 1, 2, 3, 4, 5]  # what the README's table selects runs by
