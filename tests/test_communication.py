"""Data-parallel communication options: gradients that travel in float16 or
bfloat16 sum to what float32 gives, within the format's precision; the options are checked."""

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from resnet_ray.config import TrainConfig
from resnet_ray.errors import ConfigError

from conftest import ROOT

# Two logical CPUs in one process and a MirroredStrategy: the same all-reduce path
# (the optimizer's aggregate_gradients) as MultiWorkerMirroredStrategy, without Ray.
# One strategy per process: collective instance keys are per process and would clash.
SCRIPT = r"""
import sys
from resnet_ray.keras_backend import keras, tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
from resnet_ray.config import TrainConfig
from resnet_ray.optim import build_compiled

dtype, out = sys.argv[1], sys.argv[2]
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
keras.utils.set_random_seed(0)
with strategy.scope():
    model, opt = build_compiled(TrainConfig(model="tiny", data="-", num_workers=2,
                                            allreduce_dtype=dtype))
rng = np.random.default_rng(0)
x = rng.random((16, 64, 64, 3), np.float32)
y = np.eye(6, dtype=np.float32)[rng.integers(0, 6, 16)]
ds = strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices((x, y)).batch(16))

@tf.function
def step(batch):
    def replica(xb, yb):
        with tf.GradientTape() as tape:
            p = model(xb, training=True)
            loss = tf.reduce_sum(keras.losses.categorical_crossentropy(yb, p)) / 16
        grads = tape.gradient(loss, model.trainable_variables)
        pairs = opt.aggregate_gradients(list(zip(grads, model.trainable_variables)))
        return [g for g, _ in pairs]
    return strategy.run(replica, args=batch)

grads = step(next(iter(ds)))
np.savez(out, *[strategy.experimental_local_results(g)[0].numpy() for g in grads])
print(type(opt).__name__, [g.dtype for g in strategy.experimental_local_results(grads[0])])
"""


@pytest.fixture(scope="module")
def summed_gradients(tmp_path_factory):
    """The gradients summed over two replicas with each all-reduce dtype, and what the script
    printed; the three processes run at once (each is mostly one thread tracing)."""
    out = tmp_path_factory.mktemp("allreduce")
    dtypes = ("float32", "float16", "bfloat16")
    procs = {d: subprocess.Popen([sys.executable, "-c", SCRIPT, d, str(out / f"{d}.npz")],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for d in dtypes}
    results = {}
    for dtype, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        arrays = np.load(out / f"{dtype}.npz")
        results[dtype] = ([arrays[k] for k in sorted(arrays.files,
                                                     key=lambda k: int(k.split("_")[1]))],
                          stdout)
    return results


@pytest.mark.parametrize("dtype, tolerance", [("float16", 2e-3), ("bfloat16", 1e-2)])
def test_compressed_gradients_sum_to_the_float32_sum(summed_gradients, dtype, tolerance):
    exact, out32 = summed_gradients["float32"]
    sent, out = summed_gradients[dtype]
    assert "CompressedAllReduceAdam" in out and "float32" in out  # back to float32 for Adam
    assert "CompressedAllReduceAdam" not in out32
    error = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(exact, sent)) /
                    sum((a ** 2).sum() for a in exact))
    assert 0 < error < tolerance, error  # 0 would mean nothing was compressed


@pytest.mark.parametrize("workers", [0, 1])
def test_one_worker_keeps_float32_gradients(workers):
    """Nothing to all-reduce: a 1-worker run with --allreduce-dtype trains as without it."""
    from resnet_ray.keras_backend import keras
    from resnet_ray.optim import optimizer_class

    cfg = TrainConfig(model="tiny", data="-", num_workers=workers, allreduce_dtype="float16")
    assert optimizer_class(cfg) is keras.optimizers.Adam


@pytest.mark.parametrize("field, value", [("allreduce_dtype", "int8"),
                                          ("allreduce_pack_mb", -1.0)])
def test_bad_communication_options_are_named(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value}).validate()


def test_a_ring_all_reduce_sends_2_n_minus_1_over_n_of_the_gradients_and_one_worker_none():
    from bench.scaling import predict, ring_allreduce_s

    grad = 94e6
    assert ring_allreduce_s(1, grad, 10, 1e-4) == 0
    # 94 MB over 2 workers at 1 Gbit/s: 2 x 1/2 x 94 MB x 8 bits = 0.752 s
    assert ring_allreduce_s(2, grad, 1, 0) == pytest.approx(0.752)
    # One worker neither communicates nor pays the overhead of an update of several.
    one = predict(1, 32, 0.1, grad, 10, overhead_s=0.2)
    assert one["efficiency"] == 1 and one["images_per_s"] == pytest.approx(10)
    assert predict(4, 32, 0.1, grad, 100)["efficiency"] > predict(4, 32, 0.1, grad, 10)[
        "efficiency"] > predict(4, 32, 0.1, grad, 10, overhead_s=0.2)["efficiency"]


def _measured(label, workers, cpus, dtype="float32", accumulate=1, gbit=2.0, overhead=0.2,
              s_per_image=0.03, grad=94e6):
    """A bench row as a worker with `cpus` of a core would measure it under the model:
    compute, all-reduce and overhead all slower by the share of a core it has."""
    from bench.scaling import ring_allreduce_s

    share = min(1.0, cpus)
    images = 16 * accumulate
    compute = images * s_per_image / share
    allreduce = ring_allreduce_s(workers, grad * (2 if dtype == "float16" else 4) / 4, gbit,
                                 0) / share
    step = compute + allreduce + overhead / share
    return {"label": label, "workers": workers, "cpus_per_worker": cpus,
            "per_worker_batch": 16, "accumulate": accumulate, "allreduce_dtype": dtype,
            "limit_threads": True, "compute_s": compute, "allreduce_s": allreduce,
            "rest_s": step - compute - allreduce, "step_s": step,
            "images_per_s": workers * images / step}


def test_scaling_model_calibrates_per_core_and_predicts_each_row_without_it():
    from bench.scaling import calibrate, scaling_model

    rows = [_measured("1x1", 1, 1), _measured("2x1", 2, 1), _measured("3x0.67", 3, 2 / 3),
            _measured("4x0.5", 4, 0.5), _measured("2x1 float16", 2, 1, "float16"),
            _measured("2x1 accumulate 4", 2, 1, accumulate=4)]
    # Workers with half a core move bytes and update at half the speed: scaled back to a
    # whole core, every row gives the same bandwidth and overhead.
    assert calibrate(rows[1:], 94e6) == pytest.approx((2.0, 0.2))
    model = scaling_model(rows, 94e6)
    assert [c["setup"] for c in model["checks"]] == [r["label"] for r in rows[1:]]
    assert model["max_abs_error"] == pytest.approx(0, abs=1e-9)
    # One all-reduce timed in a burst of steal time does not move the model (medians)...
    noisy = [dict(r) for r in rows]
    noisy[1]["allreduce_s"] *= 3
    noisy[1]["rest_s"] -= 2 * rows[1]["allreduce_s"]
    assert calibrate(noisy[1:], 94e6) == pytest.approx((2.0, 0.2))
    # ...and no row is predicted by a model calibrated on itself: a row measured 20% slower
    # keeps its prediction and shows the 25% miss.
    slow = [dict(r) for r in rows]
    slow[2]["images_per_s"] /= 1.25
    check = scaling_model(slow, 94e6)["checks"][1]
    assert check["setup"] == "3x0.67" and check["error"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="multi-worker row"):
        calibrate([], 94e6)


def test_accumulation_applies_the_mean_of_its_micro_batch_gradients():
    """accumulate=2 on a batch of 16 takes one Adam step with the mean of the two halves'
    gradients: the same weights as computing each half by hand and averaging."""
    from resnet_ray.keras_backend import keras, tf
    from resnet_ray.optim import build_compiled

    rng = np.random.default_rng(0)
    x = rng.random((16, 64, 64, 3), np.float32)
    y = np.eye(6, dtype=np.float32)[rng.integers(0, 6, 16)]
    cfg = dict(model="tiny", data="-", lr=0.01, lr_schedule="constant", warmup_epochs=0,
               batch_size=8)
    keras.utils.set_random_seed(0)
    acc, _ = build_compiled(TrainConfig(**cfg, accumulate=2, lr_scaling="none"), 10)
    keras.utils.set_random_seed(0)
    ref, ref_opt = build_compiled(TrainConfig(**cfg), 10)
    assert type(acc).__name__ == "Accumulating" and [w.name for w in acc.weights] == \
        [w.name for w in ref.weights]
    logs = acc.train_on_batch(x, y, return_dict=True)
    grads = []
    for half in (slice(0, 8), slice(8, 16)):
        xs, ys = tf.constant(x[half]), tf.constant(y[half])
        with tf.GradientTape() as tape:
            loss = ref.compute_loss(xs, ys, ref(xs, training=True))
        grads.append(tape.gradient(loss, ref.trainable_variables))
    ref_opt.apply_gradients(zip([(a + b) / 2 for a, b in zip(*grads)],
                                ref.trainable_variables))
    assert int(acc.optimizer.iterations) == 1
    compared = 0
    for a, b in zip(acc.weights, ref.weights):  # BatchNormalization's moving stats too
        # A conv bias feeding BatchNormalization has a true gradient of 0; Adam turns its
        # rounding noise (which depends on the order of the sums) into full-size steps.
        if "bias" in a.name and not a.name.startswith("fc"):
            continue
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-6, err_msg=a.name)
        compared += 1
    assert compared > len(acc.weights) / 2
    assert set(logs) == {"loss", "accuracy"} and logs["loss"] > 0


def test_accumulation_scales_the_learning_rate_and_the_update_batch():
    cfg = TrainConfig(batch_size=32, num_workers=2, accumulate=4, lr=1e-3)
    assert (cfg.per_worker_batch_size, cfg.update_batch_size) == (16, 128)
    assert cfg.update_lr == pytest.approx(4e-3)
    assert TrainConfig(accumulate=4, lr_scaling="sqrt").update_lr == pytest.approx(2e-3)
    assert TrainConfig(accumulate=4, lr_scaling="none").update_lr == pytest.approx(1e-3)
    assert TrainConfig(accumulate=1).update_lr == TrainConfig().lr
    for field, value in (("accumulate", 0), ("lr_scaling", "cubic")):
        with pytest.raises(ConfigError, match=field):
            TrainConfig(**{field: value}).validate()


def test_cli_passes_the_communication_options_to_the_config():
    """Every communication option a user types reaches the TrainConfig the workers get."""
    from resnet_ray.cli import build_parser
    from resnet_ray.config import from_args

    args = build_parser().parse_args(
        ["train", "--data", "d", "--num-workers", "2", "--allreduce-dtype", "float16",
         "--allreduce-pack-mb", "8", "--accumulate", "4", "--lr-scaling", "sqrt"])
    cfg = from_args(args)
    assert (cfg.allreduce_dtype, cfg.allreduce_pack_mb, cfg.accumulate, cfg.lr_scaling) == \
        ("float16", 8.0, 4, "sqrt")
    assert cfg.update_batch_size == 4 * cfg.batch_size
    assert cfg.update_lr == pytest.approx(2 * cfg.lr)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "d", "--lr-scaling", "cubic"])



MALLOC_SCRIPT = r"""
import ctypes, json
import numpy as np

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2()
block = np.ones(20 << 20, np.uint8)  # a 20 MiB tensor, the size of ResNet-50's largest
during = libc.mallinfo2()
del block
after = libc.mallinfo2()
print(json.dumps({"mmapped": during.hblkhd - before.hblkhd, "heap": during.arena,
                  "trimmed": during.arena - after.arena}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_workers_start_with_a_malloc_that_keeps_freed_memory():
    """What every Ray worker starts with (worker_env_vars): glibc serves a 20 MiB block from
    its heap and keeps it after free, for the next step. A process without those settings
    maps it and unmaps it on free, so the next step faults it in again."""
    from resnet_ray.runtime import worker_env_vars

    plain = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}

    def run(env):
        proc = subprocess.run([sys.executable, "-c", MALLOC_SCRIPT], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    default, kept = run(plain), run({**plain, **worker_env_vars()})
    assert default["mmapped"] >= 20 << 20, default
    assert kept["mmapped"] == 0 and kept["heap"] >= 20 << 20, kept
    assert kept["trimmed"] == 0, kept
