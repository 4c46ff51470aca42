"""The benchmark harness runs end to end (quick mode: tiny model, seconds). Speeds are
measured by `python -m bench all`, never asserted here."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.ray


def test_bench_all_quick_writes_every_part(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench", "all", "--quick",
                           "--out-dir", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = json.loads(next(tmp_path.glob("train-overhead-*-quick.json")).read_text())
    setups = [row["setup"] for row in train["summary"]]
    assert setups[0] == "keras" and len(setups) == 3 and train["model"] == "tiny"
    for row in train["summary"]:
        assert row["steady_images_per_s"] > 0 and row["fixed_s"] > 0
    assert train["summary"][0]["vs_keras"] == 1.0
    assert len(train["runs"]) == 3 and all(len(r["epoch_times_s"]) == 2 for r in train["runs"])
    assert "| keras |" in next(tmp_path.glob("train-overhead-*-quick.md")).read_text()
    serve = json.loads(next(tmp_path.glob("serve-*-quick.json")).read_text())
    assert {(r["batching"], r["concurrency"]) for r in serve["rows"]} == {
        ("on", 1), ("on", 32), ("off", 1), ("off", 32)}
    assert all(r["errors"] == 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in serve["rows"])
