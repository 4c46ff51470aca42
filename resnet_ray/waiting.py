"""One line for the user when a run's workers cannot be placed on the cluster.

Ray Train waits for its workers' resources without limit and without a word on the console
(it retries the worker group's start). On a cluster that is still adding nodes that wait is
right; on a full one, the user should see what the run waits for and what holds the CPUs.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from .progress import Ticker

WAIT_S = 30.0  # a worker group that starts normally is placed well within this
POLL_S = 5.0


def _cpus(info: dict[str, Any]) -> float:
    return sum(float(b.get("CPU", 0)) for b in info["bundles"].values())


def made_by(pg_id: str, job_id: str) -> bool:
    """Whether the placement group of that hex id was made by that job: Ray ends a group's
    id with the id of its job."""
    return pg_id.endswith(job_id)


def pending_line(table: dict[str, dict[str, Any]], job_id: str, free: dict[str, float],
                 total: dict[str, float]) -> str | None:
    """What this job waits for, from Ray's placement group table, or None when none of its
    groups is pending."""
    pending = [i for g, i in table.items() if i["state"] == "PENDING" and made_by(g, job_id)]
    if not pending:
        return None
    bundles = [b for info in pending for b in info["bundles"].values()]
    shapes = sorted({", ".join(f"{float(v):g} {k}" for k, v in sorted(b.items()))
                     for b in bundles})
    line = (f"waiting for the cluster to place {len(bundles)} worker(s) of "
            f"{' or '.join(shapes)}: {free.get('CPU', 0.0):g} of {total.get('CPU', 0.0):g} "
            f"CPUs are free")
    held = sum(_cpus(i) for g, i in table.items()
               if i["state"] == "CREATED" and not made_by(g, job_id))
    if held:
        line += (f"; placement groups of other jobs hold {held:g} CPUs (see docs/training.md, "
                 f"\"Waiting for workers\")")
    # Ray Train's own Ctrl-C handler waits for the stuck worker group; the third one exits.
    return line + ". The run starts when they are free; until then, Ctrl-C three times stops it."


class PlacementWatch(Ticker):
    """While a run is fitted: checks every `poll_s` whether this job's workers wait to be
    placed, and says so through `say` once they have waited `wait_s` (once per wait)."""

    def __init__(self, say: Callable[[str], None], wait_s: float | None = None,
                 poll_s: float | None = None, probe: Callable[[], str | None] | None = None):
        super().__init__(self._check, POLL_S if poll_s is None else poll_s)
        self.say = say
        self.wait_s = WAIT_S if wait_s is None else wait_s
        self.probe = probe or _probe_cluster
        self._since, self._said = None, False

    def _check(self) -> None:
        try:
            line = self.probe()
        except Exception:  # the cluster is going away with the run; the run says why
            line = None
        if not line:
            self._since, self._said = None, False
            return
        self._since = self._since or time.monotonic()
        if not self._said and time.monotonic() - self._since >= self.wait_s:
            self.say(line)
            self._said = True


def _probe_cluster() -> str | None:
    import ray
    from ray.util.placement_group import placement_group_table

    return pending_line(placement_group_table(), ray.get_runtime_context().get_job_id(),
                        ray.available_resources(), ray.cluster_resources())
