"""The layout, all-reduce dtype and precision chosen when the user leaves them open, and the
mixed-precision model they train."""

import numpy as np
import pytest

from resnet_ray import layout
from resnet_ray.config import TrainConfig
from resnet_ray.errors import ConfigError
from resnet_ray.layout import Node, choose_layout, resolve_precision

AVX2, BF16 = frozenset({"avx2", "fma"}), frozenset({"avx512f", "avx512_bf16"})


def _layout(nodes, **given):
    return choose_layout(TrainConfig(data="-", **given), nodes)


def test_one_host_gets_one_worker_with_all_its_cpus():
    cfg, line = _layout([Node(cpus=2, flags=AVX2)])
    assert (cfg.num_workers, cfg.cpus_per_worker, cfg.allreduce_dtype) == (1, 2, "float32")
    assert line.startswith("layout: 1 worker(s) x 2 CPU, precision float32 (one worker per "
                           "node with its CPUs (1 node(s), 2 CPUs); auto precision: the "
                           "workers have no bfloat16 instructions")
    # A search's trial: one worker with a node's CPUs, trials side by side, one per node.
    cfg, line = choose_layout(TrainConfig(data="-"), [Node(4, flags=AVX2)] * 3, search=True)
    assert (cfg.num_workers, cfg.cpus_per_worker) == (1, 4) and "side by side (3 node" in line


def test_cpu_nodes_get_one_worker_each_and_a_float16_all_reduce():
    # A head node started with 0 CPUs (as on KubeRay) gets no worker.
    cfg, line = _layout([Node(cpus=0), Node(cpus=8, flags=AVX2), Node(cpus=4, flags=AVX2)])
    assert (cfg.num_workers, cfg.cpus_per_worker, cfg.allreduce_dtype) == (2, 4, "float16")
    assert "float16 all-reduce" in line
    # Three nodes and a global batch of 32: two workers, and the line says why.
    cfg, line = _layout([Node(4, flags=AVX2)] * 3)
    assert cfg.num_workers == 2 and "split the global batch 32 evenly" in line


def test_given_flags_win():
    cfg, line = _layout([Node(cpus=2, flags=BF16)], num_workers=2, precision="float32")
    assert (cfg.num_workers, cfg.cpus_per_worker, cfg.allreduce_dtype, cfg.precision) == \
        (2, 1, "float32", "float32")
    assert "as given" in line and "precision as given" in line
    cfg, _ = _layout([Node(8, flags=AVX2), Node(8, flags=AVX2)], num_workers=2,
                     cpus_per_worker=3, allreduce_dtype="bfloat16")
    assert (cfg.num_workers, cfg.cpus_per_worker, cfg.allreduce_dtype) == (2, 3, "bfloat16")
    cfg, line = layout.in_process(TrainConfig(data="-", num_workers=0, precision="float32"))
    assert (cfg.num_workers, cfg.allreduce_dtype, cfg.cpus_per_worker) == (0, "float32", 1)
    assert line.startswith("layout: this process")


def test_gpus_get_one_worker_each_or_a_clear_error():
    cfg, line = _layout([Node(cpus=16, gpus=2), Node(cpus=16, gpus=2)], use_gpu=True)
    assert (cfg.num_workers, cfg.cpus_per_worker, cfg.allreduce_dtype) == (4, 8, "float32")
    assert "1 GPU" in line and "one worker per GPU" in line
    with pytest.raises(ConfigError, match="use_gpu: the Ray cluster has no GPU"):
        _layout([Node(cpus=2)], use_gpu=True)


def test_auto_precision_follows_the_workers_hardware():
    cfg, line = _layout([Node(cpus=0), Node(cpus=2, flags=BF16)])
    assert cfg.precision == "mixed_bfloat16" and "workers have bfloat16 instructions" in line
    assert _layout([Node(2, gpus=1)], use_gpu=True)[0].precision == "mixed_float16"
    assert resolve_precision("auto", False, {"avx512f", "avx512_bf16"}) == "mixed_bfloat16"
    assert resolve_precision("auto", False, {"amx_bf16"}) == "mixed_bfloat16"
    assert resolve_precision("auto", False, {"avx2", "fma"}) == "float32"
    assert resolve_precision("auto", True, set()) == "mixed_float16"
    assert resolve_precision("float32", True, {"avx512_bf16"}) == "float32"


def test_gpu_workers_all_reduce_with_nccl():
    from resnet_ray.keras_backend import tf
    from resnet_ray.optim import communication_options

    impl = tf.distribute.experimental.CommunicationImplementation
    assert communication_options(TrainConfig(use_gpu=True)).implementation == impl.NCCL
    assert communication_options(TrainConfig()).implementation == impl.AUTO


@pytest.mark.parametrize("precision,accumulate", [("mixed_bfloat16", 1),
                                                  ("mixed_float16", 2)])
def test_mixed_precision_trains_float32_weights_and_probabilities(precision, accumulate):
    from resnet_ray.keras_backend import keras
    from resnet_ray.optim import build_compiled

    cfg = TrainConfig(data="-", model="tiny", accumulate=accumulate, epochs=1)
    model, optimizer = build_compiled(cfg, 4, precision)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after building
    compute = {layer.compute_dtype for layer in model.layers if layer.name.startswith("conv")}
    assert compute == {precision.removeprefix("mixed_")}
    assert {w.dtype for w in model.get_weights()} == {np.dtype("float32")}
    x = np.random.default_rng(0).random((16, 64, 64, 3), dtype=np.float32)
    y = keras.utils.to_categorical(np.arange(16) % 6, 6)
    first = model.get_weights()
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0).history
    assert all(np.isfinite(history["loss"]))
    assert any(not np.array_equal(a, b) for a, b in zip(first, model.get_weights()))
    probs = model.predict(x[:4], verbose=0)
    assert probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    # The float32 model that validates, exports and serves takes the same weights.
    plain, _ = build_compiled(cfg)
    plain.set_weights(model.get_weights())
    assert np.allclose(plain.predict(x[:4], verbose=0), probs, atol=0.05)


def test_a_training_runs_own_cluster_starts_without_processes_it_never_uses(monkeypatch,
                                                                             tmp_path):
    """The local cluster `resnet-ray train` starts has no workers started ahead of tasks, no
    preemption watcher and, unless --verbose, no dashboard (each would wake the cores
    TensorFlow trains on); a watcher the user asked for stays; other commands keep all."""
    import os

    import ray

    from resnet_ray import runtime

    calls = []

    class Context:
        address_info = {"session_dir": str(tmp_path)}

    def fake_init(**kwargs):
        calls.append((kwargs, dict(os.environ)))
        return Context()

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(runtime, "_raylet_messages_to_log", lambda: None)
    monkeypatch.setattr(runtime, "CURRENT_CLUSTER_FILE", tmp_path / "no-cluster")
    watcher, verbose = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RESNET_RAY_VERBOSE"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", watcher, verbose)}
    for lean, given in ((True, {}), (False, {}), (True, {watcher: "1", verbose: "1"})):
        monkeypatch.setattr(os, "environ", {**env, **given})
        assert runtime.init_ray(lean=lean)  # it started a cluster
    (lean, lean_env), (plain, plain_env), (asked, asked_env) = calls
    assert lean["include_dashboard"] is False and lean_env[watcher] == "0"
    assert lean["_system_config"]["prestart_worker_first_driver"] is False
    assert asked_env[watcher] == "1" and "include_dashboard" not in asked
    assert "include_dashboard" not in plain and watcher not in plain_env
    assert "prestart_worker_first_driver" not in plain["_system_config"]
    assert plain["_system_config"]["worker_niceness"] == 0 == lean["_system_config"][
        "worker_niceness"]
