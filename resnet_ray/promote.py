"""A run's export goes live: `resnet-ray train|tune ... --export REPO --next-version --deploy`.

Before the run starts, the service that serves REPO is found as `resnet-ray deploy` finds it,
and its cluster joined: two Ray clusters on one host break Ray Train, so the run trains on the
service's cluster, its layout sized from the CPUs the service's replicas leave free. After
the export, the new version and the live one are scored on the run's own held-out test data,
the same images the same way; a new version that scores worse stays in the repository
without going live, any other is rolled out as `resnet-ray deploy` does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .errors import UserError
from .paths import shown
from .repository import check_repository


def add_flags(parser) -> None:
    """--next-version and --deploy: command-line choices of where the export goes, not
    training options (they are never saved with a checkpoint or an export)."""
    parser.add_argument("--next-version", action="store_true",
                        help="export as the next numbered version of the repository "
                             "--export names (REPO/1, REPO/2, ...), never overwriting one")
    parser.add_argument("--deploy", action="store_true",
                        help="with --next-version: train on the cluster of the service that "
                             "serves REPO, on the CPUs its replicas leave free, and roll the "
                             "new version out there unless it scores worse than the live one "
                             "on the run's test data")


def prepare(export: str | None, next_version: bool, deploy: bool) -> None:
    """Before a run: its repository can take a new version, and with deploy, the service
    that serves it is running (its cluster is joined here)."""
    if deploy and not next_version:
        raise UserError("--deploy: applies with --export REPO --next-version")
    if next_version:
        check_repository(export)
    if deploy:
        from .rollout import find_service

        find_service(export)


def free_nodes() -> list:
    """The service's cluster's nodes with the CPUs nothing holds: what the run may use."""
    from .layout import cluster_nodes

    nodes = cluster_nodes(free=True)
    if not any(n.cpus for n in nodes):
        raise UserError("--deploy: the service's replicas hold every CPU of its cluster, so "
                        "the run has none to train on; serve with fewer --replicas, or train "
                        "without --deploy and roll out with `resnet-ray deploy`")
    return nodes


def promote(model_dir: str, version: int, test: dict[str, Any], source, say=print) -> None:
    """Roll the exported `version` out on the service unless it scores worse than a live
    version on the run's test data (`test`, as the export measured it; `source` gives the
    same images to the live version)."""
    from . import rollout
    from .evaluate import metrics_from_probs
    from .modeldir import load_model_dir, read_metadata
    from .repository import resolve

    repo = str(Path(model_dir).parent)
    score = test["accuracy"]
    for live in rollout.live_versions(besides=version):
        live_dir = resolve(repo, live)[0]
        if read_metadata(live_dir)["classes"] != source.classes:
            continue  # the rollout refuses it, naming the classes
        model, _ = load_model_dir(live_dir)
        probs, labels = source.test_scores(model)
        before = metrics_from_probs(probs, labels, source.classes)["accuracy"]
        say(f"accuracy on {shown(test['source'])}: version {version} {score:.4f}, live "
            f"version {live} {before:.4f}")
        if score < before:
            raise UserError(f"version {version} scores {score:.4f} on the run's test data, "
                            f"below the live version {live}'s {before:.4f}: it stays in "
                            f"{shown(repo)} without going live (`resnet-ray deploy "
                            f"{shown(repo)} --version {version}` deploys it anyway)")
    started = time.monotonic()
    replicas = rollout.deploy(repo, version, say=say)
    say(rollout.serving_line(version, replicas, time.monotonic() - started))
