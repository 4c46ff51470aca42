"""Compute efficiency: the model's counted FLOPs times the measured images/s,
against the CPU's peak estimated from its core count, clock and vector width.

python -m bench.compute [--quick] [--steps 6] [--out bench/results/compute-DATE.json]

FLOPs are counted layer by layer (a multiply-add is 2 FLOPs) for convolutions and dense layers;
BatchNormalization, ReLU, pooling and additions are left out (well under 1% of a ResNet's).
A training step is taken as 3x the forward pass (the backward pass computes gradients for both
activations and weights), the usual convention. Training speed is plain Keras `fit`,
inference a `tf.function` in inference mode, as the Serve replica runs it. Both are measured
twice, each time in a fresh process: with TensorFlow's oneDNN kernels off and on
(TF_ENABLE_ONEDNN_OPTS=0/1, read when TensorFlow first optimizes a graph; TensorFlow leaves
them off by default on CPUs without AVX512-class features). --quick uses the tiny model and a
few steps: it keeps the harness working and measures nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

from .common import epoch_timer, inference_images_per_s, result_path, write_report


def count_flops(model) -> dict[str, int]:
    """Forward-pass FLOPs per image of a Keras functional model, per layer type."""
    out = {"conv": 0, "dense": 0}
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            _, h, w, c_out = layer.output_shape
            kh, kw = layer.kernel_size
            c_in = layer.input_shape[-1] // layer.groups
            out["conv"] += 2 * h * w * kh * kw * c_in * c_out
        elif kind == "Dense":
            out["dense"] += 2 * layer.input_shape[-1] * layer.units
        elif kind in ("DepthwiseConv2D", "SeparableConv2D", "Conv1D", "Conv3D",
                      "Conv2DTranspose"):
            raise ValueError(f"count_flops: layer {layer.name} ({kind}) is not counted; "
                             "extend bench/compute.py")
    out["total"] = out["conv"] + out["dense"]
    return out


# fp32 FLOPs per cycle per core: two FMA units, each a multiply and an add on every lane.
_VECTOR = (("avx512f", 2 * 2 * 16, "AVX-512"), ("avx2", 2 * 2 * 8, "AVX2+FMA"),
           ("avx", 2 * 8, "AVX"), ("sse2", 2 * 4, "SSE2"))


def cpu_peak() -> dict:
    """Peak fp32 FLOP/s estimated from /proc/cpuinfo: cores x clock x FLOPs per cycle."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if max_freq.exists():
        ghz, clock_source = int(max_freq.read_text()) / 1e6, "cpufreq max"
    elif "cpu MHz" in fields:
        ghz, clock_source = float(fields["cpu MHz"]) / 1e3, "/proc/cpuinfo cpu MHz"
    else:
        ghz, clock_source = 2.0, "unknown (2 GHz assumed)"
    if "avx2" in flags and "fma" not in flags:
        flags.discard("avx2")
    per_cycle, isa = next(((n, name) for flag, n, name in _VECTOR if flag in flags),
                          (2, "scalar"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": fields.get("model name", platform.processor() or "unknown"), "cores": cores,
            "ghz": round(ghz, 3), "clock_source": clock_source, "isa": isa,
            "flops_per_cycle_per_core": per_cycle,
            "peak_gflops": round(cores * ghz * per_cycle, 1)}


def tf_settings() -> dict:
    from resnet_ray.keras_backend import tf

    try:  # what TensorFlow decided, not what the environment asked for: unset means on
        # only for AVX512-class CPUs
        from tensorflow.python.util import _pywrap_util_port
        onednn = "on" if _pywrap_util_port.IsMklEnabled() else "off"
    except (ImportError, AttributeError):
        onednn = "unknown"
    return {"tensorflow": tf.__version__,
            "onednn": f"{onednn} (TF_ENABLE_ONEDNN_OPTS="
                      f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')})",
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or
            "0 (one per core)",
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads() or
            "0 (TensorFlow's choice)",
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset")}


def measure_training(model_name: str, batch: int, steps: int) -> float:
    """Steady-state images/s of Keras fit (the first epoch, tracing included, is discarded)."""
    import numpy as np

    from resnet_ray.config import TrainConfig
    from resnet_ray.keras_backend import keras
    from resnet_ray.optim import build_compiled

    keras.utils.set_random_seed(0)
    model, _ = build_compiled(TrainConfig(model=model_name, data="-"), steps)
    rng = np.random.default_rng(0)
    x = rng.random((batch * steps, 64, 64, 3), np.float32)
    y = np.eye(6, dtype=np.float32)[rng.integers(0, 6, batch * steps)]
    times: list[float] = []
    model.fit(x, y, batch_size=batch, epochs=3, verbose=0, callbacks=[epoch_timer(keras, times)],
              shuffle=False)
    return batch * steps / statistics.median(times[1:])


def measure_inference(model_name: str, batch: int, images: int) -> float:
    import numpy as np

    from resnet_ray.model import build_model

    x = np.random.default_rng(0).random((batch, 64, 64, 3), np.float32)
    return inference_images_per_s(build_model(model_name), x, max(1, images // batch))


ONEDNN = ("off", "on")


def measure(model_name: str, steps: int, quick: bool) -> dict:
    """This process's TensorFlow: settings, training and inference images/s."""
    return {"settings": tf_settings(),
            "train": measure_training(model_name, 32, steps),
            "inference": {batch: measure_inference(model_name, batch, 32 if quick else 256)
                          for batch in (1, 32)}}


def measure_in_child(onednn: str, model_name: str, steps: int, quick: bool) -> dict:
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1" if onednn == "on" else "0"}
    proc = subprocess.run([sys.executable, "-m", "bench.compute", "--child",
                           json.dumps([model_name, steps, quick])],
                          cwd=Path(__file__).resolve().parent.parent, env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"compute with oneDNN {onednn} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick: bool = False, steps: int | None = None, out: str | None = None) -> dict:
    from resnet_ray.model import build_model

    model_name = "tiny" if quick else "resnet50"
    steps = steps or (2 if quick else 6)
    flops = count_flops(build_model(model_name))
    peak = cpu_peak()
    rows, settings = [], {}
    for onednn in ONEDNN:
        got = measure_in_child(onednn, model_name, steps, quick)
        settings[onednn] = got["settings"]
        rows.append({"mode": "train (fit, batch 32)", "onednn": onednn,
                     "images_per_s": got["train"], "gflops_per_image": 3 * flops["total"] / 1e9})
        for batch, rate in got["inference"].items():
            rows.append({"mode": f"inference (batch {batch})", "onednn": onednn,
                         "images_per_s": rate, "gflops_per_image": flops["total"] / 1e9})
    for row in rows:
        row["achieved_gflops"] = row["images_per_s"] * row["gflops_per_image"]
        row["of_peak"] = row["achieved_gflops"] / peak["peak_gflops"]
    off = {r["mode"]: r["images_per_s"] for r in rows if r["onednn"] == "off"}
    onednn_speedup = {r["mode"]: r["images_per_s"] / off[r["mode"]]
                      for r in rows if r["onednn"] == "on"}
    report = {"part": "compute", "date": str(date.today()), "quick": quick,
              "model": f"{model_name} 64x64x3", "forward_flops_per_image": flops,
              "cpu": peak, "settings": settings, "rows": rows,
              "onednn_speedup": onednn_speedup}
    write_report(report, result_path(out, "compute", quick), markdown(report))
    return report


def markdown(report: dict) -> str:
    cpu, s = report["cpu"], report["settings"]
    lines = [f"{report['model']}: {report['forward_flops_per_image']['total'] / 1e9:.3f} GFLOPs "
             f"forward per image. CPU: {cpu['cpu']}, {cpu['cores']} cores x {cpu['ghz']} GHz "
             f"({cpu['clock_source']}) x {cpu['flops_per_cycle_per_core']} FLOPs/cycle "
             f"({cpu['isa']}) = {cpu['peak_gflops']} GFLOP/s peak (estimate). TensorFlow "
             f"{s['on']['tensorflow']}, oneDNN as measured: {s['off']['onednn']} / "
             f"{s['on']['onednn']}, intra-op threads {s['on']['intra_op_threads']}, inter-op "
             f"{s['on']['inter_op_threads']}.", "",
             "| mode | oneDNN | images/s | GFLOPs/image | GFLOP/s | of peak |",
             "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['mode']} | {r['onednn']} | {r['images_per_s']:.1f} | "
                     f"{r['gflops_per_image']:.3f} | {r['achieved_gflops']:.1f} | "
                     f"{100 * r['of_peak']:.1f}% |")
    lines += ["", "oneDNN on / off: " + ", ".join(
        f"{mode} {ratio:.2f}x" for mode, ratio in report["onednn_speedup"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, help="training steps of 32 per epoch (default 6)")
    parser.add_argument("--out", help="JSON path (a .md table is written beside it)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(*json.loads(args.child))))
        return
    run(args.quick, args.steps, args.out)


if __name__ == "__main__":
    main()
