"""The benchmark harness runs end to end (quick mode: tiny model, seconds). Speeds are
measured by `python -m bench all`, never asserted here."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_bench_all_quick_writes_every_part(private_ray, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench", "all", "--quick",
                           "--out-dir", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = json.loads(next(tmp_path.glob("train-overhead-*-quick.json")).read_text())
    setups = [row["setup"] for row in train["summary"]]
    assert setups[0] == "keras" and len(setups) == 3 and train["model"] == "tiny"
    for row in train["summary"]:
        assert row["steady_images_per_s"] > 0 and row["fixed_s"] > 0
    assert train["summary"][0]["vs_keras"] == 1.0
    assert len(train["runs"]) == 3 and all(len(r["epoch_times_s"]) == 2 for r in train["runs"])
    assert "| keras |" in next(tmp_path.glob("train-overhead-*-quick.md")).read_text()
    # Every step split on the worker that ran it; the second worker adds an all-reduce.
    scaling_json = next(tmp_path.glob("scaling-*-quick.json"))
    scaling = json.loads(scaling_json.read_text())
    rows = {r["label"]: r for r in scaling["measured"]}
    assert list(rows) == [f"1x{scaling['cores']}", "1x1", "2x1", "2x1 accumulate 2"]
    assert all(r["compute_s"] > 0 and r["step_s"] > 0 for r in rows.values())
    assert [len(r["ranks"]) for r in rows.values()] == [1, 1, 2, 2]
    # Two micro-batches per update under MultiWorkerMirroredStrategy: twice the images.
    assert [r["images_per_update"] for r in rows["2x1 accumulate 2"]["ranks"]] == \
        [2 * rows["2x1"]["per_worker_batch"]] * 2
    assert rows["2x1"]["ranks"][1]["strategy"] == "MultiWorkerMirroredStrategy"
    assert rows["2x1"]["ranks"][0]["intra_op_threads"] == 1
    reference = rows[f"1x{scaling['cores']}"]
    assert reference["per_worker_batch"] == 2 * rows["2x1"]["per_worker_batch"]
    assert reference["vs_one_worker_all_cores"] == 1.0
    # Each multi-worker row is predicted by the model calibrated on the others.
    checks = scaling["scaling_model"]["checks"]
    assert [c["setup"] for c in checks] == ["2x1", "2x1 accumulate 2"]
    assert all(c["predicted_images_per_s"] > 0 for c in checks)
    assert [len(r["ranks"][0]["step_times_s"]) for r in rows.values()] == [2] * 4
    assert {p["workers"] for p in scaling["predictions"]} == {1, 2, 4, 8, 16, 32, 64}
    # A later model applied to the same measurements gives the same report, and says so.
    from bench.scaling import remodel
    again = remodel(str(scaling_json), str(tmp_path / "again.json"))
    assert again["scaling_model"] == scaling["scaling_model"]
    assert again["predictions"] == scaling["predictions"]
    assert again["remodelled_from"] == str(scaling_json)
    serve = json.loads(next(tmp_path.glob("serve-*-quick.json")).read_text())
    rows = [(s["name"], s["max_batch_size"], r) for s in serve["settings"] for r in s["rows"]]
    assert [(size, r["concurrency"]) for _, size, r in rows] == [
        (size, c) for size in (32, 1) for c in (1, 8, 32)] + [(32, 1), (32, 32)]
    assert all(r["errors"] == 0 and r["requests"] > 0 and r["p95_ms"] >= r["p50_ms"] > 0
               and 0 < r["client_cpu_share"] < 1 for _, _, r in rows)
    # The replica formed batches only where batching was on (the third row: Ray's batcher).
    assert [s["mean_batch"] > 1 for s in serve["settings"][:2]] == [True, False]
    assert serve["settings"][2]["ray_batch"] and serve["summary"]["tf_batcher_vs_serve_batch_c32"]
    assert [r["batch"] for r in serve["in_process"]] == [1, 8, 32]
    assert serve["summary"]["tf_batching_on_vs_off_c32"] > 0 and "cores" in serve["machine"]
    assert "| in process |" in next(tmp_path.glob("serve-*-quick.md")).read_text()

    # The user's own `resnet-ray serve` under load: every minute's answers and replica memory.
    soak = json.loads(next(tmp_path.glob("soak-*-quick.json")).read_text())
    assert [r["minute"] for r in soak["minutes"]] == [1, 2] and soak["ingress"] == "haproxy"
    assert soak["summary"]["codes"].get("200", 0) > 0 and soak["summary"]["unanswered"] == 0
    assert all(r["rss_mb"] > 100 for r in [soak["warmup"], *soak["minutes"]])
    assert soak["summary"]["rss_growth_mb"] == soak["minutes"][-1]["rss_mb"] - \
        soak["warmup"]["rss_mb"]

    comp = json.loads(next(tmp_path.glob("compute-*-quick.json")).read_text())
    assert comp["forward_flops_per_image"]["total"] > 0 and comp["cpu"]["peak_gflops"] > 0
    assert [(r["mode"].split()[0], r["onednn"]) for r in comp["rows"]] == [
        (mode, onednn) for onednn in ("off", "on") for mode in ("train", "inference", "inference")]
    assert all(0 < r["of_peak"] for r in comp["rows"])
    # Each setting is what TensorFlow ran with, not just what was asked for.
    assert [comp["settings"][s]["onednn"].split()[0] for s in ("off", "on")] == ["off", "on"]
    assert set(comp["onednn_speedup"]) == {r["mode"] for r in comp["rows"]}

    # The same trials with ASHA and to the full budget: FIFO runs every epoch, ASHA no more.
    tune = json.loads(next(tmp_path.glob("tune-*-quick.json")).read_text())
    asha, fifo = tune["rows"]
    assert (asha["scheduler"], fifo["scheduler"]) == ("asha", "fifo")
    assert fifo["epochs_run"] == fifo["epochs_budget"] == asha["epochs_budget"]
    assert asha["epochs_run"] <= fifo["epochs_run"]
    assert tune["summary"]["epochs_share"] == asha["epochs_run"] / fifo["epochs_run"]

    tta = json.loads(next(tmp_path.glob("time-to-accuracy-*-quick.json")).read_text())
    assert [c["epoch"] for c in tta["curve"]] == [1, 2, 3]
    assert set(tta["reached"]) == {"0.95", "0.98", "0.99"} and tta["config"]["model"] == "tiny"
    # The command a user types, timed from its start, with what it chose and its test score.
    assert tta["clock"] == "command start" and tta["layout_line"].startswith("layout: ")
    assert tta["curve"][0]["wall_s"] > tta["curve"][0]["epoch_time_s"]
    assert 0 < tta["test"]["images"] and tta["precision"] in ("float32", "mixed_bfloat16")
    assert next(tmp_path.glob("time-to-accuracy-*-quick.png")).stat().st_size > 0

    # Every photo scored once, by the fold that held it out.
    cv = json.loads(next(tmp_path.glob("cv-*-quick.json")).read_text())
    row = cv["rows"][0]
    assert sum(f["images"] for f in row["folds"]) == row["photos"] == 150
    assert row["errors"] == sum(f["errors"] for f in row["folds"])

    # The same photos from .h5 and from their folder; memory on a small and a bigger folder.
    ingest = json.loads(next(tmp_path.glob("ingest-*-quick.json")).read_text())
    assert [r["kind"] for r in ingest["speed"]["runs"]] == ["h5", "folder"]
    assert ingest["speed"]["ratio"] == pytest.approx(
        ingest["speed"]["folder_images_per_s"] / ingest["speed"]["h5_images_per_s"], abs=1e-3)
    memory = ingest["memory"]
    assert memory["small"]["files"] < memory["big"]["files"]
    assert set(memory["small"]["peak_rss_mb"]) == {"0", "1"}
    assert all(mb > 100 for mb in memory["big"]["peak_rss_mb"].values())
    assert all(0 < memory["big"]["private_mb"][r] < memory["big"]["peak_rss_mb"][r]
               for r in ("0", "1"))

    combined = json.loads(next(tmp_path.glob("2*-quick.json")).read_text())
    assert list(combined["parts"]) == ["train", "scaling", "compute", "serve", "soak", "tune",
                                       "accuracy", "ingest", "cv"]
    assert combined["parts"]["tune"] == {**tune, "bench_s": combined["parts"]["tune"]["bench_s"]}
    assert "## serve" in next(tmp_path.glob("2*-quick.md")).read_text()


def test_train_bench_adds_and_selects_a_setup_with_communication_options():
    from bench.train_overhead import _setups, select

    setups = _setups(2, {"allreduce_dtype": "float16", "accumulate": 4})
    assert setups[-1] == {"setup": "ray 2x1 float16, accumulate 4", "num_workers": 2,
                          "cpus_per_worker": 1,
                          "options": {"allreduce_dtype": "float16", "accumulate": 4}}
    assert [s["setup"] for s in select(setups, "ray 2x1 float16, ray 1x2")] == \
        ["ray 1x2", "ray 2x1 float16, accumulate 4"]
    assert [s["setup"] for s in select(setups, "ray 2x1")] == ["ray 2x1"]
    with pytest.raises(SystemExit, match="no setup 'ray 4x1'"):
        select(setups, "ray 4x1")
    # One CPU: one worker is the only Ray layout, named once.
    assert [s["setup"] for s in _setups(1)] == ["keras", "ray 1x1"]


def test_an_out_option_goes_to_the_part_not_to_out_dir(monkeypatch, tmp_path, capsys):
    import bench.__main__ as cli

    ran = []
    monkeypatch.setattr(cli, "PARTS", {"scaling": ("scaling", ran.append)})
    monkeypatch.chdir(tmp_path)
    # With abbreviations argparse would read "--out" as --out-dir and make a directory
    # named like the file; the part's own --out comes last, so it wins there.
    cli.main(["scaling", "--out", "scaling.json"])
    assert ran[0][-2:] == ["--out", "scaling.json"] and not (tmp_path / "scaling.json").exists()
    assert capsys.readouterr().out == "== scaling -> scaling.json\n"  # where it will be


def test_train_bench_pairs_each_round_with_the_one_worker_run_of_the_same_round():
    from bench.train_overhead import markdown, summarize

    def run(setup, round_, rate):
        return {"setup": setup, "round": round_, "steady_images_per_s": rate, "fixed_s": 50.0,
                "first_epoch_extra_s": 9.0}

    # Round 2 is a slow patch for both: per round the pair runs at 0.8x and 0.9x.
    runs = [run("ray 1x2", 1, 60.0), run("ray 2x1 f16", 1, 48.0),
            run("ray 1x2", 2, 40.0), run("ray 2x1 f16", 2, 36.0)]
    one, two = summarize(runs)
    assert two["vs_ray_one_worker_by_round"] == pytest.approx([0.8, 0.9])
    assert two["vs_ray_one_worker_round_median"] == pytest.approx(0.85)
    assert two["vs_ray_one_worker"] == pytest.approx(42.0 / 50.0)  # medians of the rates
    assert one["vs_ray_one_worker_by_round"] == [1.0, 1.0]
    assert "| 0.80 / 0.90 (0.85) |" in markdown([one, two])
