"""`resnet-ray demo`, the README's first command, end to end on the embedded photos (the tiny
model and one epoch; the ResNet-50 run it makes by default is in the README)."""

import json

import pytest

from conftest import internal_lines, run_cli

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_demo_runs_the_whole_pipeline_quietly(private_ray, tmp_path):
    proc = run_cli("demo", "--workdir", tmp_path, "--model", "tiny", "--epochs", 1,
                   timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for step in ("1/6 data: the embedded photos", "2/6 search learning rate and batch size",
                 "3/6 train tiny with Ray Train: 1 epochs", "layout: ", "4/6 evaluate", "5/6 predict",
                 "6/6 serve", "== summary"):
        assert step in proc.stdout, step
    assert internal_lines(proc.stdout, proc.stderr) == []
    assert len((proc.stdout + proc.stderr).splitlines()) <= 80
    assert proc.stdout.count("POST /predict") == 6 and "Serve shut down" in proc.stdout

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["test_n"] > 0
    assert set(summary["params"]) == {"lr", "batch_size"} and summary["tuned"]
    assert [a["true"] for a in summary["served"]] == [0, 1, 2, 3, 4, 5]
    assert (tmp_path / "model" / "model.keras").is_file()
    # The export scored the model on the held-out photos the summary reports.
    meta = json.loads((tmp_path / "model" / "metadata.json").read_text())
    assert meta["test"]["images"] == summary["test_n"]
