"""Where and how training runs when the user leaves it open: the workers' layout on the
cluster, the all-reduce's dtype, and the compute precision on each worker.

The rules (docs/scaling.md has the measurements behind them): one worker per node with all
its CPUs, because workers sharing one host's cores ran slower than one worker with them all;
one worker per GPU; float16 all-reduce between CPU nodes, whose network is the bottleneck;
bfloat16 compute where the CPU has bfloat16 instructions, float16 on GPUs. A search's trial
is one worker with one node's CPUs, so that trials run side by side, one per node.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig
from .errors import ConfigError

# CPU flags (Linux's /proc/cpuinfo names) of bfloat16 arithmetic that oneDNN uses.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Node:
    """What a live Ray node offers to training. node_id names a node on another machine,
    whose CPU flags are asked of it when precision needs them; flags, when given, are used."""
    cpus: int
    gpus: int = 0
    node_id: str | None = None
    flags: frozenset[str] | None = None


def cluster_nodes(free: bool = False) -> list[Node]:
    """The connected Ray cluster's live nodes (ray.init() first): with all their CPUs and
    GPUs, or with free, only those nothing holds now (a cluster shared with a service)."""
    import ray
    from ray._private.state import available_resources_per_node

    here = ray.util.get_node_ip_address()
    available = available_resources_per_node() if free else {}

    def count(node, resource: str) -> int:
        have = available.get(node["NodeID"], {}) if free else node["Resources"]
        return int(have.get(resource, 0))

    return [Node(count(n, "CPU"), count(n, "GPU"),
                 None if n["NodeManagerAddress"] == here else n["NodeID"])
            for n in ray.nodes() if n.get("Alive")]


def node_flags(node: Node) -> set[str]:
    """A node's CPU flags: given, this machine's, or asked of the node by a task that takes
    no CPU (once per run, and only for a node on another machine)."""
    if node.flags is not None:
        return set(node.flags)
    if node.node_id is None:
        return cpu_flags()
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(cpu_flags).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False))
    return ray.get(task.remote())


def _divisor_at_most(n: int, batch: int) -> int:
    """The largest worker count <= n that splits the global batch evenly."""
    return next(k for k in range(min(n, batch), 0, -1) if batch % k == 0)


def choose_layout(cfg: TrainConfig, nodes: list[Node], search: bool = False
                  ) -> tuple[TrainConfig, str]:
    """cfg with num_workers, cpus_per_worker, allreduce_dtype and precision resolved where
    they are unset (None, "auto"), and one line that says what was chosen and why. Given
    values win. search: the layout of one trial of a search."""
    auto = cfg.num_workers is None and cfg.cpus_per_worker is None
    workers, cpus, why = cfg.num_workers, cfg.cpus_per_worker, "as given"
    if cfg.use_gpu:
        gpu_nodes = [n for n in nodes if n.gpus >= 1]
        if not gpu_nodes and workers is None:
            raise ConfigError("use_gpu: the Ray cluster has no GPU; leave out --use-gpu or "
                              "start the cluster on GPU nodes")
        if workers is None:
            gpus = sum(n.gpus for n in gpu_nodes)
            workers = 1 if search else _divisor_at_most(gpus, cfg.batch_size)
            why = f"one worker per GPU ({gpus} GPU(s) on {len(gpu_nodes)} node(s))"
            if workers < gpus and not search:
                why += f"; {workers} split the global batch {cfg.batch_size} evenly"
        if cpus is None:
            cpus = max(1, min((n.cpus // max(1, n.gpus) for n in gpu_nodes), default=1))
    else:
        cpu_nodes = [n for n in nodes if n.cpus >= 1]
        if not cpu_nodes:
            raise ConfigError("num_workers: the Ray cluster has no node with a CPU to train on")
        if workers is None:
            # Every worker gets the same CPUs (Ray Train's one resources_per_worker): the
            # smallest node's count, so that a worker fits on every node.
            smallest = min(n.cpus for n in cpu_nodes)
            if search:
                workers, why = 1, (f"a trial is one worker with one node's CPUs, trials side "
                                   f"by side ({len(cpu_nodes)} node(s))")
            else:
                workers = _divisor_at_most(len(cpu_nodes), cfg.batch_size)
                why = (f"one worker per node with its CPUs ({len(cpu_nodes)} node(s), "
                       f"{sum(n.cpus for n in cpu_nodes)} CPUs)")
                if workers < len(cpu_nodes):
                    why += f"; {workers} split the global batch {cfg.batch_size} evenly"
            cpus = smallest if cpus is None else cpus
        elif cpus is None:
            cpus = 1
    dtype = cfg.allreduce_dtype
    if dtype == "auto":
        # Between CPU nodes the 90 MiB float32 gradient of every update crosses the network;
        # half the bytes, same weights (float32 updates, scaled gradients).
        dtype = "float16" if auto and workers > 1 and not cfg.use_gpu else "float32"
    asked = cfg.precision
    if asked == "auto" and not cfg.use_gpu:
        # The workers' CPU decides; a node that can take a worker stands for all of them.
        precision = resolve_precision(asked, False, node_flags(cpu_nodes[0]))
    else:
        precision = resolve_precision(asked, cfg.use_gpu, set())
    cfg = dataclasses.replace(cfg, num_workers=workers, cpus_per_worker=cpus,
                              allreduce_dtype=dtype, precision=precision).validate()
    comm = f", {dtype} all-reduce" if workers > 1 else ""
    line = (f"layout: {workers} worker(s) x {cpus} CPU{' + 1 GPU' if cfg.use_gpu else ''}"
            f"{comm}, precision {precision} ({why}; {precision_reason(asked, cfg)}; "
            f"--num-workers, --cpus-per-worker and --precision override)")
    return cfg, line


def in_process(cfg: TrainConfig) -> tuple[TrainConfig, str]:
    """The layout of a run in this process (--num-workers 0): one TensorFlow, no all-reduce."""
    asked = cfg.precision
    cfg = dataclasses.replace(cfg, cpus_per_worker=cfg.cpus_per_worker or 1,
                              allreduce_dtype="float32" if cfg.allreduce_dtype == "auto"
                              else cfg.allreduce_dtype,
                              precision=resolve_precision(asked, cfg.use_gpu)).validate()
    return cfg, (f"layout: this process, no Ray workers (--num-workers 0), precision "
                 f"{cfg.precision} ({precision_reason(asked, cfg)})")


def precision_reason(asked: str, cfg: TrainConfig) -> str:
    """Why the run computes in cfg.precision, when the user asked for `asked`."""
    if asked != "auto":
        return "precision as given"
    what = "a GPU" if cfg.use_gpu else ("bfloat16 instructions" if cfg.precision != "float32"
                                         else "no bfloat16 instructions")
    return f"auto precision: the workers have {what}"


def cpu_flags() -> set[str]:
    """This machine's CPU flags as Linux names them (empty where /proc/cpuinfo is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def resolve_precision(choice: str, on_gpu: bool, flags=None) -> str:
    """The Keras mixed-precision policy for choice ("auto" or a policy name) on workers with
    these CPU flags (this machine's when None): auto is mixed_float16 on a GPU, mixed_bfloat16
    on a CPU with bfloat16 instructions (faster there at the same accuracy, docs/performance.md),
    float32 elsewhere."""
    if choice != "auto":
        return choice
    if on_gpu:
        return "mixed_float16"
    flags = cpu_flags() if flags is None else flags
    return "mixed_bfloat16" if any(f in flags for f in BF16_CPU_FLAGS) else "float32"
