"""What the benchmark parts decide from their measurements: which runs a ratio pairs, which
answers count as errors, which stored runs a published table takes and how it names them.
(The harness itself runs in tests/test_bench.py; speeds are never asserted.)"""

import json

import numpy as np
import pytest

from bench import check, common, cv, report, serve_load

MACHINE = "AMD EPYC, 2 cores, avx2 avx512_bf16 avx512f"


def test_cv_folds_keep_groups_whole_and_classes_even():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 40)
    groups = np.array([i // rng.integers(1, 4) * 3 + label for i, label in enumerate(labels)])
    fold = cv.grouped_folds(labels, groups, 5, seed=0)
    assert set(fold) == set(range(5))  # every photo in one fold
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1, "a near-duplicate group was split"
    for label in range(3):
        counts = np.bincount(fold[labels == label], minlength=5)
        assert counts.max() - counts.min() <= 3, counts


def test_sides_alternate_and_each_ratio_pairs_runs_of_the_same_round(capsys):
    rates = {("a", 1): 100.0, ("b", 1): 80.0, ("b", 2): 45.0, ("a", 2): 50.0}
    order = []

    def measure(name, side, r):
        order.append(name)
        return {"steady_images_per_s": rates[name, r], "side_value": side}

    runs = common.alternate({"a": 1, "b": 2}, 2, measure)
    assert order == ["a", "b", "b", "a"]  # a noisy patch slows both sides alike
    assert [(r["side"], r["round"], r["side_value"]) for r in runs] == [
        ("a", 1, 1), ("b", 1, 2), ("b", 2, 2), ("a", 2, 1)]
    # Round 2 ran at half speed for both: per round b is 0.8x and 0.9x of a.
    assert common.by_round(runs, "b", "a") == pytest.approx([0.8, 0.9])
    assert "round 2, b: 45.0 images/s" in capsys.readouterr().out


def test_soak_counts_every_error_but_503_and_memory_from_after_the_warm_up():
    def minute(codes, unanswered, rss):
        return {"requests": sum(codes.values()) + unanswered, "codes": codes,
                "unanswered": unanswered, "rss_mb": rss}

    warm = minute({"200": 5}, 0, 900.0)
    rows = [minute({"200": 8, "503": 2}, 0, 950.0), minute({"200": 7, "500": 1}, 2, 930.0)]
    s = serve_load.soak_summary(warm, rows)
    assert s["codes"] == {"200": 15, "503": 2, "500": 1} and s["unanswered"] == 2
    assert s["errors_other_than_503"] == 3 and s["requests"] == 20
    assert (s["rss_after_warmup_mb"], s["rss_growth_mb"]) == (900.0, 30.0)


def test_rollouts_count_every_answer_but_200_against_the_steady_minute_before():
    steady = {"requests": 100, "codes": {"200": 100}, "p99_ms": 100.0, "max_ms": 150.0}
    rolling = {"requests": 90, "codes": {"200": 86, "503": 1}, "p99_ms": 250.0,
               "max_ms": 900.0}  # and 3 with no answer
    deploys = [{"version": 2, "seconds": 30.0}, {"version": 3, "seconds": 40.0},
               {"version": 2, "seconds": 2.0}]
    s = serve_load.rollout_summary([steady, steady, rolling], deploys)
    assert s["rollout_not_200"] == 4 and s["rollout_p99_vs_steady"] == 2.5
    assert (s["deploy_new_version_s"], s["deploy_kept_version_s"]) == (40.0, 2.0)


def test_serve_ratios_are_against_tensorflow_in_process_at_batch_32():
    def setting(c32, json32=None, p50=10.0):
        points = [{"concurrency": 32, "images": 1, "images_per_s": c32},
                  {"concurrency": 1, "images": 1, "images_per_s": 5.0, "p50_ms": p50}]
        return {"points": points + ([{"concurrency": 1, "images": 32,
                                      "images_per_s": json32}] if json32 else [])}

    settings = {"tf": setting(60, json32=80), "tf, batching off": setting(20),
                "openvino": setting(120, p50=9.0), "openvino, Ray's proxy": setting(70, p50=18)}
    local = [{"backend": "tf (f32)", "batch": 32, "images_per_s": 100},
             {"backend": "openvino (bf16)", "batch": 32, "images_per_s": 300},
             {"backend": "tf (f32)", "batch": 1, "images_per_s": 40}]
    s = serve_load.summarize(settings, local)
    assert s["tf_in_process_batch32"] == 100 and s["fastest_backend_vs_tf_batch32"] == 3.0
    assert s["tf_http_c32_vs_in_process"] == pytest.approx(0.6)
    assert s["tf_batching_on_vs_off_c32"] == pytest.approx(3.0)
    assert s["tf_json32_vs_in_process"] == pytest.approx(0.8)
    assert s["openvino_http_c32_vs_tf_in_process"] == pytest.approx(1.2)
    assert s["proxy_ingress_http_c32_vs_tf_in_process"] == pytest.approx(0.7)
    assert (s["openvino_p50_ms_c1"], s["proxy_ingress_p50_ms_c1"]) == (9.0, 18)
    # A setting left out leaves out the ratios that need it, not the others.
    partial = serve_load.summarize({"tf": settings["tf"]}, local)
    assert "tf_batching_on_vs_off_c32" not in partial and "tf_http_c32_vs_in_process" in partial


def test_waiting_for_a_server_ends_as_soon_as_it_has_exited():
    # Without `alive`, this wait would end in a TimeoutError after 30 s.
    with pytest.raises(RuntimeError, match="exited before it answered"):
        serve_load.wait_ready(["http://127.0.0.1:9"], timeout=30, alive=lambda: False)


def _write(directory, name, **record):
    (directory / name).write_text(json.dumps(record))


def _train_result(vs_keras, date, **extra):
    return {"part": "train", "machine": MACHINE, "date": date, "cpus": 2,
            "command": "python -m bench train", **extra,
            "summary": [{"setup": "keras", "vs_keras": 1.0},
                        {"setup": "ray 1x2", "vs_keras": vs_keras}]}


def test_tables_take_the_newest_real_run_per_profile_and_name_where_it_came_from(tmp_path):
    _write(tmp_path, "train-a.json", **_train_result(0.90, "2026-12-01"))
    _write(tmp_path, "train-b.json", **_train_result(0.97, "2026-12-03"))
    _write(tmp_path, "train-c.json", **_train_result(0.50, "2026-12-04", quick=True))
    _write(tmp_path, "train-d.json", **_train_result(0.40, "2026-12-05", probe=True))
    _write(tmp_path, "train-e.json", **{**_train_result(0.30, "2026-12-06"), "machine": ""})
    results = report.load(tmp_path)
    assert [r["_file"] for r in results] == ["train-a.json", "train-b.json"]
    assert results[0]["_profile"] == "avx512-bf16"
    text = report.targets_table(results, "performance")
    row = next(ln for ln in text.splitlines() if ln.startswith("| Ray Train with 1 worker"))
    assert "| >= 0.95x | 0.97x [1] |" in row
    assert "- [1] AMD EPYC, 2 cores, avx512_bf16, 2026-12-03: `python -m bench train` " \
           "(`bench/results/train-b.json`)" in text


def test_an_accuracy_run_names_the_training_command_it_ran_without_paths_or_defaults():
    flags = report.train_flags("resnet-ray train --data WORK/d --storage WORK/runs --name run "
                               "--export WORK/model --epochs 20 --model resnet50 --use-gpu "
                               "--precision float32 --epochs-per-eval 2")
    assert flags == ["--precision", "float32", "--epochs-per-eval", "2"]
    assert report.train_flags("resnet-ray train --data D --epochs 5") == ["--epochs", "5"]


def test_render_rewrites_only_between_the_markers_of_a_known_block(tmp_path):
    _write(tmp_path, "train-b.json", **_train_result(0.97, "2026-12-03"))
    page = "intro\n<!-- bench:performance -->\nold table\n<!-- /bench:performance -->\nend\n"
    new = report.render(page, report.load(tmp_path))
    assert new.startswith("intro\n<!-- bench:performance -->\n| measure |")
    assert new.endswith("\n<!-- /bench:performance -->\nend\n") and "old table" not in new
    assert report.render(new, report.load(tmp_path)) == new


def test_check_measures_what_it_can_reads_the_rest_and_fails_on_a_measured_miss(
        tmp_path, monkeypatch, capsys):
    prof = common.profile(common.machine())
    machine = common.machine()

    def fake_train(argv):
        out = argv[argv.index("--out") + 1]
        _write(tmp_path, out.rpartition("/")[2], **{**_train_result(0.80, "2026-12-07"),
                                                    "machine": machine, "quick": True})

    def fake_serve(argv):
        out = argv[argv.index("--out") + 1]
        _write(tmp_path, out.rpartition("/")[2], part="serve", machine=machine, quick=True,
               date="2026-12-07", command="python -m bench serve",
               summary={"tf_batching_on_vs_off_c32": 3.0})

    stored = tmp_path / "stored"
    stored.mkdir()
    _write(stored, "cv-x.json", part="cv", machine=machine, date="2026-12-01",
           rows=[{"flags": "", "photos": 1050, "error_rate": 0.002}])
    _write(stored, "cv-y.json", part="cv", date="2026-12-02", rows=[{"flags": "", "photos": 1050,
           "error_rate": 0.5}], machine="Intel Xeon, 2 cores, amx_bf16 avx512_bf16")
    load = report.load
    monkeypatch.setattr(check.report, "load", lambda d=stored, quick=False: load(d, quick))
    monkeypatch.setattr(check.train_overhead, "main", fake_train)
    monkeypatch.setattr(check.serve_load, "main", fake_serve)
    assert check.main(["--quick", "--out-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"({prof})" in out and "missed, measured now: ray_vs_keras\n" in out
    assert "| ray_vs_keras | >= 0.95x | 0.80x | measured now | MISSED |" in out
    assert "| tf_batching_on_vs_off_c32 | >= 2.50x | 3.00x | measured now | met |" in out
    # A measure not checked now comes from a stored run of this profile only, named by its file.
    assert "| cv_error_rate | <= 0.5% | 0.2% | stored: cv-x.json (2026-12-01) | met |" in out
    assert "| asha_epochs_share | <= 40% | - | no result on this profile | - |" in out
    # Every goal met: exit 0.
    monkeypatch.setattr(check.train_overhead, "main", lambda argv: None)
    (tmp_path / next(p.name for p in tmp_path.glob("train-check-*"))).unlink()
    _write(tmp_path, f"train-check-{prof}-quick.json", **{
        **_train_result(0.99, "2026-12-07"), "machine": machine, "quick": True})
    assert check.main(["--quick", "--out-dir", str(tmp_path)]) == 0
