"""A multi-node Ray cluster on one host, for trying multi-node behaviour without a cloud.

    python cluster/local_cluster.py start [--workers 2] [--cpus-per-worker 1] [--head-cpus 0]
    python cluster/local_cluster.py status
    python cluster/local_cluster.py remove-node 1      # SIGKILL worker node 1, as a lost machine
    python cluster/local_cluster.py stop

Every node is a `ray start --block` process in its own process group, so `stop` and
`remove-node` touch only this cluster (`ray stop` would stop every Ray on the machine).
Everything listens on 127.0.0.1, with token authentication (Ray's job API runs arbitrary code
for anyone who reaches it); the token is the user's ~/.ray/auth_token, created by the head if
missing, which `ray job submit` then uses too. The node pids and ports are kept in
--state-dir (default /tmp/resnet-ray-cluster).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# Outside Ray's default worker port range (10002-19999) and away from a default cluster's
# (6379/8265/52365) and the job-submit test's, so this cluster can run beside either.
DEFAULT_PORT, DEFAULT_DASHBOARD_PORT = 6392, 8278
# Every node on one host needs its own dashboard-agent and metrics ports; these count up
# from here, one block of three per node.
AGENT_PORT_BASE = 52400
STATE_FILE = "cluster.json"
RAY = str(Path(sys.executable).with_name("ray"))
from resnet_ray.runtime import CURRENT_CLUSTER_FILE  # the cluster a bare ray.init() joins
HEAD_ATTEMPTS = 2


class NodeExited(SystemExit):
    """A node's `ray start` process ended before the node joined the cluster."""


def node_env() -> dict[str, str]:
    # A job's `python` is whatever the node's PATH finds first: put this interpreter first,
    # as in an activated virtual environment or the project's container image.
    # The raylet keeps idle task workers for the next epoch's Ray Data pass (docs/training.md).
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_num_workers_soft_limit": "16",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _agent_ports(index: int) -> list[str]:
    base = AGENT_PORT_BASE + 3 * index
    return [f"--dashboard-agent-listen-port={base}", f"--dashboard-agent-grpc-port={base + 1}",
            f"--metrics-export-port={base + 2}"]


def _spawn(args: list[str], log: Path) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats",
                                 "--node-ip-address=127.0.0.1", *args],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=node_env())
    return proc.pid


def _alive(pid: int) -> bool:
    try:
        # A node this process started and that has exited is a zombie until reaped, and
        # kill(pid, 0) still finds zombies.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child: `stop` and `remove-node` run from another process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _ray_status(address: str) -> str | None:
    proc = subprocess.run([RAY, "status", "--address", address], env=node_env(),
                          capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def _active_nodes(status: str) -> int:
    lines = status.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return sum(1 for line in lines.splitlines() if line.strip().startswith("1 node_"))


def load_state(state_dir: Path) -> dict:
    path = state_dir / STATE_FILE
    if not path.exists():
        raise SystemExit(f"no cluster recorded in {path}: run `start` first")
    return json.loads(path.read_text())


def start(state_dir: Path, workers: int, cpus_per_worker: int, head_cpus: int,
          port: int, dashboard_port: int, memory_per_worker: int | None = None,
          timeout: float = 180) -> dict:
    state_dir.mkdir(parents=True, exist_ok=True)
    if (state_dir / STATE_FILE).exists():
        state = json.loads((state_dir / STATE_FILE).read_text())
        if any(_alive(n["pid"]) for n in state["nodes"]):
            raise SystemExit(f"a cluster from {state_dir} is still running "
                             f"(address {state['address']}); run `stop` first")
    gcs = f"127.0.0.1:{port}"
    head_args = ["--head", f"--port={port}", f"--dashboard-port={dashboard_port}",
                 "--dashboard-host=127.0.0.1", f"--num-cpus={head_cpus}", "--num-gpus=0",
                 f"--ray-client-server-port={port + 1}", *_agent_ports(0)]
    nodes: list[dict] = []
    state = {"gcs_address": gcs, "address": f"http://127.0.0.1:{dashboard_port}",
             "nodes": nodes}
    for attempt in range(1, HEAD_ATTEMPTS + 1):
        nodes[:] = [{"name": "head", "pid": _spawn(head_args, state_dir / "head.log")}]
        (state_dir / STATE_FILE).write_text(json.dumps(state, indent=1))
        try:
            _wait(state, 1, timeout, state_dir)
            break
        except NodeExited:
            # On a loaded machine the head's own raylet sometimes misses Ray's startup
            # deadline ("The current node timed out during startup") and `ray start`
            # gives up; a second start on a clean slate then comes up.
            if attempt == HEAD_ATTEMPTS:
                raise
            with open(state_dir / "head.log", "a") as log:
                log.write(f"\n[local_cluster] head exited while starting (attempt {attempt} "
                          f"of {HEAD_ATTEMPTS}); starting it again\n")
    for i in range(1, workers + 1):
        extra = [f"--memory={memory_per_worker}"] if memory_per_worker else []
        nodes.append({"name": f"worker{i}", "pid": _spawn(
            [f"--address={gcs}", f"--num-cpus={cpus_per_worker}", "--num-gpus=0",
             # A custom resource per node lets a user (or a test) pin work to one node.
             f"--resources={json.dumps({f'local_worker{i}': 1})}", *extra,
             *_agent_ports(i)], state_dir / f"worker{i}.log")})
        (state_dir / STATE_FILE).write_text(json.dumps(state, indent=1))
        # One at a time: nodes starting together can pick the same free port for their
        # raylets (each probes for one, then binds it) and one of them dies.
        _wait(state, i + 1, timeout, state_dir)
    return state


def _wait(state: dict, n_nodes: int, timeout: float, state_dir: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = _ray_status(state["gcs_address"])
        if status and _active_nodes(status) >= n_nodes:
            return
        dead = [n["name"] for n in state["nodes"] if not _alive(n["pid"])]
        if dead:
            stop(state_dir)
            raise NodeExited(f"node {dead[0]} exited while starting; see "
                             f"{state_dir / (dead[0] + '.log')}")
        time.sleep(1)
    stop(state_dir)
    raise SystemExit(f"the cluster did not reach {n_nodes} nodes in {timeout:.0f} s; "
                     f"see the logs in {state_dir}")


def _kill(pid: int, grace: float) -> None:
    try:
        os.killpg(pid, signal.SIGTERM if grace else signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.time() + grace
    while time.time() < deadline and _alive(pid):
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def node_ids(state_dir: Path) -> dict[str, str]:
    """{"head": node id, "worker1": node id, ...} of the live nodes, from Ray's state API."""
    state = load_state(state_dir)
    proc = subprocess.run([RAY, "list", "nodes", "--address", state["address"], "--format",
                           "json", "--detail", "--limit", "1000"],
                          env=node_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"ray list nodes failed: {proc.stderr.strip()[-500:]}")
    names = {}
    for node in json.loads(proc.stdout):
        if node["state"] != "ALIVE":
            continue
        worker = [k for k in node["resources_total"] if k.startswith("local_worker")]
        name = "head" if node["is_head_node"] else worker[0].removeprefix("local_") \
            if worker else node["node_id"]
        names[name] = node["node_id"]
    return names


def remove_node(state_dir: Path, index: int) -> None:
    """SIGKILL a worker node and every process on it: what a lost machine looks like."""
    state = load_state(state_dir)
    name = f"worker{index}"
    node = next((n for n in state["nodes"] if n["name"] == name), None)
    if node is None:
        raise SystemExit(f"no node {name} in {state_dir / STATE_FILE}")
    _kill(node["pid"], grace=0)


def stop(state_dir: Path) -> None:
    state = load_state(state_dir)
    for node in reversed(state["nodes"]):  # workers first, then the head
        _kill(node["pid"], grace=30)
    if CURRENT_CLUSTER_FILE.exists() and \
            CURRENT_CLUSTER_FILE.read_text().strip() == state["gcs_address"]:
        CURRENT_CLUSTER_FILE.unlink()
    (state_dir / STATE_FILE).unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, default=Path("/tmp/resnet-ray-cluster"))
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start", help="start a head and N worker nodes on 127.0.0.1")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus-per-worker", type=int, default=1)
    p.add_argument("--head-cpus", type=int, default=0,
                   help="0 keeps training and serving work off the head")
    p.add_argument("--memory-per-worker", type=int, help="bytes")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--dashboard-port", type=int, default=DEFAULT_DASHBOARD_PORT)
    sub.add_parser("status", help="print `ray status` of the cluster")
    sub.add_parser("nodes", help="print the live nodes' ids as JSON {name: node id}")
    p = sub.add_parser("remove-node", help="kill worker node N (1-based) like a lost machine")
    p.add_argument("index", type=int)
    sub.add_parser("stop", help="stop every node of this cluster (and nothing else)")
    args = parser.parse_args(argv)

    if args.command == "start":
        state = start(args.state_dir, args.workers, args.cpus_per_worker, args.head_cpus,
                      args.port, args.dashboard_port, args.memory_per_worker)
        print(f"started a head and {args.workers} worker nodes on 127.0.0.1\n"
              f"  export RAY_AUTH_MODE=token RAY_ADDRESS={state['address']}\n"
              f"  ray job submit --runtime-env cluster/runtime_env.yaml -- "
              f"python -m resnet_ray.train ...\n"
              f"  dashboard: {state['address']}")
    elif args.command == "status":
        state = load_state(args.state_dir)
        print(_ray_status(state["gcs_address"]) or "the cluster does not answer")
    elif args.command == "nodes":
        print(json.dumps(node_ids(args.state_dir), indent=1))
    elif args.command == "remove-node":
        remove_node(args.state_dir, args.index)
        print(f"killed worker{args.index}")
    else:
        stop(args.state_dir)
        print("stopped")


if __name__ == "__main__":
    main()
