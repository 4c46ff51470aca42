"""Changing the version a running service serves, in place: `resnet-ray deploy`.

`resnet-ray serve` deploys its application from a Serve config, as `serve deploy` does, so a
new `user_config.model_version` reaches the running replicas through `reconfigure()` instead
of restarting them (resnet_ray/serve.py loads and checks the version beside the live one). It
records where its cluster is (SERVICE_FILE), so that `deploy` on the same machine needs no
flags; elsewhere RAY_ADDRESS names the cluster. Each replica reports the version it serves,
and the last one it refused, to a small named actor (`Board`), which `deploy` reads to know
when every replica is on the new version.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import RunFailed, UserError
from .paths import shown

APP = "digits"
DEPLOYMENT = "DigitService"
NAMESPACE = "serve"
SERVICE_FILE = Path(tempfile.gettempdir()) / "resnet-ray" / "service.json"


class RolloutTimeout(RunFailed):
    """Not every replica serves the new version within --timeout."""

    exit_code = 3


def app_config(model_dir: str, args: dict[str, Any], user_config: dict[str, Any],
               num_replicas: int, access_log: bool) -> dict[str, Any]:
    """The Serve config of the service's application (one entry of `applications`)."""
    deployment: dict[str, Any] = {"name": DEPLOYMENT, "num_replicas": num_replicas,
                                  "user_config": user_config}
    if access_log:
        deployment["logging_config"] = {"enable_access_log": True}
    return {"name": APP, "route_prefix": "/", "import_path": "resnet_ray.serve:build_app",
            "args": {"model_dir": model_dir, **args}, "deployments": [deployment]}


def apply(applications: list[dict[str, Any]]) -> None:
    """Deploy these applications from config, as `serve deploy` does; apps deployed from a
    config before and missing here are deleted (Serve's rule), so pass them all."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema(applications=applications))


def record_service(address: str, url: str, model_dir: str) -> None:
    SERVICE_FILE.parent.mkdir(parents=True, exist_ok=True)
    SERVICE_FILE.write_text(json.dumps({"address": address, "url": url, "model_dir": model_dir,
                                        "pid": os.getpid()}) + "\n")


def forget_service() -> None:
    try:
        if json.loads(SERVICE_FILE.read_text()).get("pid") == os.getpid():
            SERVICE_FILE.unlink()
    except (OSError, ValueError):
        pass


# ---------------------------------------------------------------------- replicas' reports

def board(app: str, create: bool = False):
    """The actor an application's replicas report their versions to."""
    import ray

    @ray.remote(num_cpus=0)
    class Board:
        def __init__(self):
            self.reports: dict[str, dict[str, Any]] = {}

        def report(self, replica: str, info: dict[str, Any]) -> None:
            self.reports[replica] = {**self.reports.get(replica, {}), **info}

        def get(self) -> dict[str, dict[str, Any]]:
            return self.reports

    name = f"resnet-ray-versions-{app}"
    if create:
        return Board.options(name=name, namespace=NAMESPACE, lifetime="detached",
                             get_if_exists=True).remote()
    return ray.get_actor(name, namespace=NAMESPACE)


# ---------------------------------------------------------------------- resnet-ray deploy

def _connect() -> None:
    from .runtime import init_ray

    address = os.environ.get("RAY_ADDRESS")
    if not address:
        try:
            address = json.loads(SERVICE_FILE.read_text())["address"]
        except (OSError, ValueError, KeyError):
            raise UserError(f"no running service found: `resnet-ray serve` records its "
                            f"cluster in {SERVICE_FILE}; for a service on another cluster "
                            f"set RAY_ADDRESS") from None
        # The service's own cluster takes only drivers that send this machine's token
        # (~/.ray/auth_token). Ray reads RAY_AUTH_MODE once, when it is first imported, so
        # the setting is made through Ray, which reloads it (ray.init does the same for a
        # cluster it starts).
        if "RAY_AUTH_MODE" not in os.environ:
            from ray._private.authentication.authentication_token_setup import (
                _enable_token_auth)

            _enable_token_auth()
    init_ray(address=address)


def _app(app: str) -> dict[str, Any]:
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    apps = details.get("applications", {})
    if app not in apps:
        raise UserError(f"--app {app}: no such application; running: {sorted(apps) or 'none'}")
    if not apps[app].get("deployed_app_config"):
        raise UserError(f"--app {app}: deployed with serve.run, not from a config; serve it "
                        f"with `resnet-ray serve` or `serve deploy`")
    return details


def replica_versions(app: str = APP) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(each running replica with the version it serves, the last refusal)."""
    details = _app(app)
    deployment = details["applications"][app]["deployments"][DEPLOYMENT]
    running = [r["replica_id"] for r in deployment["replicas"] if r["state"] == "RUNNING"]
    try:
        import ray

        reports = ray.get(board(app).get.remote(), timeout=30)
    except ValueError:  # no replica has reported yet
        reports = {}
    replicas = [{"replica": r, **reports.get(r, {"version": None})} for r in running]
    refusals = [v["refusal"] for v in reports.values() if v.get("refusal")]
    return replicas, max(refusals, key=lambda r: r["time"], default=None)


def find_service(repo: str, app: str = APP) -> list[dict[str, Any]]:
    """Join the cluster of the running service (SERVICE_FILE, or RAY_ADDRESS) and check that
    its application `app` serves the repository `repo`; returns the cluster's application
    configs (all of them: applying a config replaces the whole set)."""
    _connect()
    details = _app(app)
    applications = [a["deployed_app_config"] for a in details["applications"].values()
                    if a.get("deployed_app_config")]
    ours = next(a for a in applications if a["name"] == app)
    if Path(ours["args"]["model_dir"]).resolve() != Path(repo).resolve():
        raise UserError(f"{repo}: the application {app} serves {ours['args']['model_dir']}")
    return applications


def live_versions(app: str = APP, besides: int | None = None) -> list[int]:
    """The versions the application's replicas serve now, other than `besides`."""
    return sorted({r.get("version") for r in replica_versions(app)[0]} - {None, besides})


def gate(repo: str, live: int, candidate: int, data: str, force: bool = False,
         say=print) -> None:
    """Refuse a candidate version that scores worse than the live one on the same data
    (unless force)."""
    from .evaluate import evaluate
    from .repository import resolve

    scores = {v: evaluate(resolve(repo, v)[0], data)["accuracy"] for v in (live, candidate)}
    say(f"accuracy on {shown(data)}: version {candidate} {scores[candidate]:.4f}, live "
        f"version {live} {scores[live]:.4f}")
    if scores[candidate] < scores[live] and not force:
        raise UserError(f"version {candidate} scores {scores[candidate]:.4f} on {data}, below "
                        f"the live version {live}'s {scores[live]:.4f}; --force deploys it "
                        f"anyway")


def deploy(repo: str, version: int, app: str = APP, timeout: float = 300, say=print,
           eval_data: str | None = None, force: bool = False) -> list[dict[str, Any]]:
    """Make every replica of `app` serve `version` of `repo`; returns the replicas. With
    eval_data, only if it scores at least as well there as the live version (or force)."""
    from .repository import resolve, versions

    resolve(repo, version)  # the version exists here: refuse a typo before anything changes
    applications = find_service(repo, app)
    if eval_data:
        for other in live_versions(app, version):
            gate(repo, other, version, eval_data, force, say)
    ours = next(a for a in applications if a["name"] == app)
    target = next(d for d in ours["deployments"] if d["name"] == DEPLOYMENT)
    _, before = replica_versions(app)
    kept = dict(target.get("user_config") or {})
    target["user_config"] = {**kept, "model_version": version}
    apply(applications)
    say(f"deploying version {version} of {shown(repo)} (versions: {versions(repo)})")
    deadline = time.monotonic() + timeout
    while True:
        replicas, refusal = replica_versions(app)
        if refusal and refusal != before and refusal["version"] == version:
            # The config names the live version again, so that a replica started later
            # (after a crash, or scaling up) starts on it rather than on the refused one.
            target["user_config"] = kept
            apply(applications)
            raise UserError(f"version {version} refused: {refusal['reason']}")
        if replicas and all(r.get("version") == version for r in replicas):
            return replicas
        if time.monotonic() > deadline:
            raise RolloutTimeout(f"not every replica serves version {version} after "
                                 f"{timeout:.0f} s: {replicas}")
        time.sleep(0.5)


def serving_line(version: int, replicas: list, seconds: float) -> str:
    return f"version {version} serving on every replica ({len(replicas)}) after {seconds:.1f} s"


def status(repo: str, app: str = APP) -> str:
    from .repository import versions

    _connect()
    replicas, refusal = replica_versions(app)
    lines = [f"versions in {shown(repo)}: {versions(repo)}"]
    lines += [f"replica {r['replica']}: version {r.get('version')}" for r in replicas]
    if refusal:
        lines.append(f"last refused: version {refusal['version']}: {refusal['reason']}")
    return "\n".join(lines)
