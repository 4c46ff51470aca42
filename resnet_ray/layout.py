"""Where and how training runs when the user leaves it open: the workers' layout on the
cluster, the all-reduce's dtype, and the compute precision on each worker.

The rules (docs/scaling.md has the measurements behind them): one worker per node with all
its CPUs, because workers sharing one host's cores ran slower than one worker with them all;
one worker per GPU; float16 all-reduce between CPU nodes, whose network is the bottleneck;
bfloat16 compute where the CPU has bfloat16 instructions, float16 on GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig
from .errors import ConfigError

# CPU flags (Linux's /proc/cpuinfo names) of bfloat16 arithmetic that oneDNN uses.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Node:
    """What a live Ray node offers to training."""
    cpus: int
    gpus: int = 0


def cluster_nodes() -> list[Node]:
    """The connected Ray cluster's live nodes (ray.init() first)."""
    import ray

    return [Node(int(n["Resources"].get("CPU", 0)), int(n["Resources"].get("GPU", 0)))
            for n in ray.nodes() if n.get("Alive")]


def _divisor_at_most(n: int, batch: int) -> int:
    """The largest worker count <= n that splits the global batch evenly."""
    return next(k for k in range(min(n, batch), 0, -1) if batch % k == 0)


def choose_layout(cfg: TrainConfig, nodes: list[Node]) -> tuple[TrainConfig, str]:
    """cfg with num_workers, cpus_per_worker and allreduce_dtype filled in where they are
    unset (None, "auto"), and one line that says what was chosen and why. Given values win."""
    auto = cfg.num_workers is None and cfg.cpus_per_worker is None
    why = "as given"
    if cfg.num_workers == 0:
        cfg.cpus_per_worker = cfg.cpus_per_worker or 1
        cfg.allreduce_dtype = "float32" if cfg.allreduce_dtype == "auto" else cfg.allreduce_dtype
        return cfg.validate(), (f"layout: this process, no Ray workers (--num-workers 0), "
                                f"precision {cfg.precision}")
    if cfg.use_gpu:
        gpu_nodes = [n for n in nodes if n.gpus >= 1]
        if not gpu_nodes and cfg.num_workers is None:
            raise ConfigError("use_gpu: the Ray cluster has no GPU; leave out --use-gpu or "
                              "start the cluster on GPU nodes")
        if cfg.num_workers is None:
            gpus = sum(n.gpus for n in gpu_nodes)
            cfg.num_workers = _divisor_at_most(gpus, cfg.batch_size)
            why = f"one worker per GPU ({gpus} GPU(s) on {len(gpu_nodes)} node(s))"
            if cfg.num_workers < gpus:
                why += f"; {cfg.num_workers} split the global batch {cfg.batch_size} evenly"
        if cfg.cpus_per_worker is None:
            cfg.cpus_per_worker = max(1, min((n.cpus // max(1, n.gpus) for n in gpu_nodes),
                                             default=1))
    else:
        cpu_nodes = [n for n in nodes if n.cpus >= 1]
        if not cpu_nodes:
            raise ConfigError("num_workers: the Ray cluster has no node with a CPU to train on")
        if cfg.num_workers is None:
            cfg.num_workers = _divisor_at_most(len(cpu_nodes), cfg.batch_size)
            if cfg.cpus_per_worker is None:
                # Every worker gets the same CPUs (Ray Train's one resources_per_worker): the
                # smallest node's count, so that a worker fits on every node.
                cfg.cpus_per_worker = min(n.cpus for n in cpu_nodes)
            why = (f"one worker per node with its CPUs ({len(cpu_nodes)} node(s), "
                   f"{sum(n.cpus for n in cpu_nodes)} CPUs)")
            if cfg.num_workers < len(cpu_nodes):
                why += f"; {cfg.num_workers} split the global batch {cfg.batch_size} evenly"
        elif cfg.cpus_per_worker is None:
            cfg.cpus_per_worker = 1
    if cfg.allreduce_dtype == "auto":
        across_nodes = auto and cfg.num_workers > 1 and not cfg.use_gpu
        # Between CPU nodes the 90 MiB float32 gradient of every update crosses the network;
        # half the bytes, same weights (float32 updates, scaled gradients).
        cfg.allreduce_dtype = "float16" if across_nodes else "float32"
    comm = f", {cfg.allreduce_dtype} all-reduce" if cfg.num_workers > 1 else ""
    line = (f"layout: {cfg.num_workers} worker(s) x {cfg.cpus_per_worker} CPU"
            f"{' + 1 GPU' if cfg.use_gpu else ''}{comm}, precision {cfg.precision} "
            f"({why}; --num-workers, --cpus-per-worker and --precision override)")
    return cfg.validate(), line


def cpu_flags() -> set[str]:
    """This machine's CPU flags as Linux names them (empty where /proc/cpuinfo is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def resolve_precision(choice: str, on_gpu: bool, flags: set[str] | None = None) -> str:
    """The Keras mixed-precision policy for choice ("auto" or a policy name) on this worker:
    auto is mixed_float16 on a GPU, mixed_bfloat16 on a CPU with bfloat16 instructions (faster
    there at the same accuracy, docs/scaling.md), float32 elsewhere."""
    if choice != "auto":
        return choice
    if on_gpu:
        return "mixed_float16"
    flags = cpu_flags() if flags is None else flags
    return "mixed_bfloat16" if any(f in flags for f in BF16_CPU_FLAGS) else "float32"
