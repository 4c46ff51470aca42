"""The benchmark parts compute what their tables claim: FLOPs, thresholds, ratios. (The
whole harness runs in tests/test_bench.py; speeds are never asserted.)"""

import json

import numpy as np
import pytest

from bench import compute, cv, serve_load, time_to_accuracy


def test_flops_are_counted_per_layer_as_two_per_multiply_add():
    from resnet_ray.keras_backend import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.Conv2D(2, 1, strides=2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(5)(x))
    flops = compute.count_flops(model)
    assert flops["conv"] == 2 * (8 * 8 * 3 * 3 * 3 * 4) + 2 * (4 * 4 * 4 * 2)
    assert flops["dense"] == 2 * 2 * 5
    assert flops["total"] == flops["conv"] + flops["dense"]


def test_resnet50_flops_match_the_published_figure():
    from resnet_ray.model import build_model

    # He et al. (2015), table 1: 3.8 x 10^9 multiply-adds at 224x224, 1000 classes.
    macs = compute.count_flops(build_model("resnet50", (224, 224, 3), 1000))["total"] / 2
    assert 3.7e9 < macs < 4.0e9


def test_an_uncounted_layer_is_refused_by_name():
    from resnet_ray.keras_backend import keras

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.DepthwiseConv2D(3, name="dw")(inputs))
    with pytest.raises(ValueError, match="dw"):
        compute.count_flops(model)


def test_cpu_peak_is_cores_times_clock_times_vector_width():
    peak = compute.cpu_peak()
    assert peak["cores"] >= 1 and peak["ghz"] > 0 and peak["flops_per_cycle_per_core"] >= 2
    assert peak["peak_gflops"] == pytest.approx(
        peak["cores"] * peak["ghz"] * peak["flops_per_cycle_per_core"], abs=0.1)


def _report(epoch, acc, t, rank=0, epoch_time=10.0):
    return json.dumps({"epoch": epoch, "val_accuracy": acc, "time": t, "rank": rank,
                       "epoch_time_s": epoch_time})


def test_time_to_accuracy_reads_the_first_report_of_each_epoch(tmp_path):
    lines = [_report(1, 0.90, 110), _report(1, 0.90, 110, rank=1),
             _report(2, 0.96, 120),
             # the run failed after epoch 2's report, and epoch 2 was re-run 60 s later
             _report(2, 0.99, 190), _report(3, 0.985, 200), _report(4, 0.995, 210),
             _report(5, 0.999, 220, rank=1)]
    (tmp_path / "reports.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "config.json").write_text(json.dumps({"model": "tiny", "epochs": 5}))
    out = time_to_accuracy.analyse(tmp_path)
    assert [c["epoch"] for c in out["curve"]] == [1, 2, 3, 4]
    assert out["reached"]["0.95"] == {"epoch": 2, "wall_s": 20.0}  # from epoch 1's start, 100
    assert out["reached"]["0.98"] == {"epoch": 3, "wall_s": 100.0}
    assert out["reached"]["0.99"] == {"epoch": 4, "wall_s": 110.0}
    assert out["config"] == {"model": "tiny", "epochs": 5}
    assert out["clock"] == "start of epoch 1"
    assert "| >= 99% | 4 | 110 s |" in time_to_accuracy.markdown(
        {**out, "quick": False, "machine": "test"})


def test_time_to_accuracy_says_what_it_needs(tmp_path):
    with pytest.raises(SystemExit, match="reports.jsonl"):
        time_to_accuracy.analyse(tmp_path)
    (tmp_path / "reports.jsonl").write_text(_report(1, 0.5, 10) + "\n")
    assert time_to_accuracy.analyse(tmp_path)["reached"]["0.95"] is None


def test_serve_ratios_compare_like_with_like():
    """Every ratio is against TensorFlow's in-process batch of 32 (not a faster backend's),
    and each "~ batching off" variant is compared with the chain row it varies."""
    def setting(name, c32, c1_p50=10.0, json=None):
        rows = [{"images": 1, "concurrency": 32, "images_per_s": c32},
                {"images": 1, "concurrency": 1, "images_per_s": 5, "p50_ms": c1_p50}]
        rows += [{"images": 32, "concurrency": c, "images_per_s": json * c ** 0.5}
                 for c in (1, 2)] if json else []
        return {"name": name, "rows": rows}

    settings = [setting("tf, proxy (the old defaults)", 30), setting("tf, proxy, batching off", 10),
                setting("+ HAProxy ingress", 60, json=80), setting("~ Ray's @serve.batch", 40),
                setting("~ batching off", 20),
                setting("+ OpenVINO backend", 120, c1_p50=9.0), setting("~ batching off", 50),
                setting("~ Ray's @serve.batch", 80),
                setting("~ Ray's proxy", 70, c1_p50=18.0)]
    local = [{"backend": "tf (f32)", "batch": 32, "images_per_s": 100},
             {"backend": "openvino (bf16)", "batch": 32, "images_per_s": 300},
             {"backend": "tf (f32)", "batch": 1, "images_per_s": 40}]
    s = serve_load.summarize(settings, local)
    assert s["tf_in_process_batch32"] == 100 and s["fastest_backend_vs_tf_batch32"] == 3.0
    assert s["tf_http_c32_vs_in_process"] == pytest.approx(0.6)
    assert s["tf_batching_on_vs_off_c32"] == pytest.approx(3.0)
    assert s["tf_batcher_vs_serve_batch_c32"] == pytest.approx(1.5)
    assert s["openvino_batcher_vs_serve_batch_c32"] == pytest.approx(1.5)
    assert s["tf_json32_vs_in_process"] == pytest.approx(0.8)
    assert s["tf_json32_c2_vs_in_process"] == pytest.approx(0.8 * 2 ** 0.5)
    assert s["openvino_http_c32_vs_tf_in_process"] == pytest.approx(1.2)
    assert s["proxy_ingress_http_c32_vs_tf_in_process"] == pytest.approx(0.7)
    assert (s["openvino_p50_ms_c1"], s["proxy_ingress_p50_ms_c1"]) == (9.0, 18.0)

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


def test_one_part_takes_its_own_flags_and_all_refuses_them(monkeypatch, tmp_path, capsys):
    import bench.__main__ as bench_main

    seen = []
    monkeypatch.setitem(bench_main.PARTS, "cv", ("cv", seen.append))
    bench_main.main(["cv", "--out-dir", str(tmp_path), "--data", "D", "--folds", "5",
                     "--candidate", "wd=--weight-decay 0.1"])
    assert seen[0][-6:] == ["--data", "D", "--folds", "5", "--candidate",
                            "wd=--weight-decay 0.1"]
    with pytest.raises(SystemExit) as exc:
        bench_main.main(["all", "--folds", "5"])
    assert exc.value.code == 2 and "--folds 5" in capsys.readouterr().err


def test_soak_counts_every_error_but_503_and_memory_from_after_the_warm_up():
    from bench.soak import summarize

    def minute(codes, unanswered, rss):
        return {"requests": sum(codes.values()) + sum(unanswered.values()), "codes": codes,
                "unanswered": unanswered, "rss_mb": rss, "requests_per_s": 10.0}

    warm = minute({200: 5}, {}, 900.0)
    rows = [minute({200: 8, 503: 2}, {}, 950.0),
            minute({200: 7, 500: 1}, {"connection reset": 2}, 930.0)]
    s = summarize(warm, rows)
    assert s["codes"] == {"200": 15, "503": 2, "500": 1} and s["unanswered"] == 2
    assert s["errors_other_than_503"] == 3 and s["requests"] == 20
    assert (s["rss_growth_mb"], s["rss_max_mb"]) == (30.0, 950.0)


def test_waiting_for_a_server_ends_as_soon_as_it_has_exited():
    from bench.http_load import wait_ready

    # Without `alive`, this wait would end in a TimeoutError after 30 s.
    with pytest.raises(RuntimeError, match="exited before it answered"):
        wait_ready(["http://127.0.0.1:9"], timeout=30, alive=lambda: False)
