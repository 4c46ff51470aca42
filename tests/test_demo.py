"""`resnet-ray demo`, the README's first command, end to end (shortened to one epoch)."""

import json

import pytest

from conftest import run_cli

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_demo_runs_the_whole_pipeline(private_ray, tmp_path):
    proc = run_cli("demo", "--workdir", tmp_path, "--epochs", 1, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for step in ("1/6 synthesize", "2/6 train tiny on Ray Train with 2 workers",
                 "3/6 search learning rate and batch size with Ray Tune", "4/6 evaluate",
                 "5/6 predict", "6/6 serve"):
        assert step in proc.stdout
    assert proc.stdout.count("POST /predict") == 4 and "Serve shut down" in proc.stdout
    assert "epoch 1/1" in proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert (tmp_path / "model" / "model.keras").is_file()
    assert (tmp_path / "tuned" / "metadata.json").is_file()
    assert len(summary["http"]) == 4
