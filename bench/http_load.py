"""The HTTP side of `bench serve`: Debian's compiled load generator (`hey`), the request
bodies it sends, and waiting for a service to answer."""

from __future__ import annotations

import io
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np


def ensure_hey() -> str:
    """The load generator: Debian's `hey`, installed here when missing and apt can."""
    if not shutil.which("hey") and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run("apt-get install -y -qq hey >/dev/null 2>&1 || (apt-get update -qq && "
                       "apt-get install -y -qq hey >/dev/null)", shell=True, check=False)
    path = shutil.which("hey")
    if not path:
        sys.exit("bench serve needs the `hey` load generator: apt install hey")
    return path


def hey(url: str, body: Path, ctype: str, concurrency: int, seconds: float) -> dict:
    """One load point; the client's CPU share is its CPU time over the machine's."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    begin = time.perf_counter()
    out = subprocess.run(["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST",
                          "-T", ctype, "-D", str(body), "-t", "60", url],
                         capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - begin
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    # Requests that got no HTTP answer at all (refused, reset, timed out), by hey's message.
    failed = out.partition("Error distribution:")[2]
    unanswered = {m: int(n) for n, m in re.findall(r"\[(\d+)\]\t(.+)", failed)}
    # hey prints a percentile only once it has enough requests for it (100 for p99).
    ms = {p: float(v) * 1000 for p, v in re.findall(r"(\d+)%+ in ([\d.]+) secs", out)}
    total = sum(codes.values()) + sum(unanswered.values())
    return {"concurrency": concurrency, "requests": total, "errors": total - codes.get(200, 0),
            "codes": codes, "unanswered": unanswered,
            "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": ms.get("50"), "p95_ms": ms.get("95"), "p99_ms": ms.get("99"),
            "client_cpu_share": cpu / wall / os.cpu_count()}


def wait_ready(urls: list[str], timeout: float = 120, alive=None) -> str:
    """The first of `urls` whose /healthz answers. A replica whose direct-ingress port is
    still held by the last setting's closing connections (TIME_WAIT) takes the next port.
    `alive()`, when given, says whether the server is still running: once it is not, waiting
    ends with a RuntimeError rather than at the timeout."""
    deadline = time.time() + timeout
    while True:
        if alive is not None and not alive():
            raise RuntimeError(f"the server for {urls[0]} exited before it answered")
        for url in urls:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=2).read()
                return url
            except OSError:
                pass
        if time.time() > deadline:
            raise TimeoutError(f"no answer from {urls[0]} within {timeout:.0f} s")
        time.sleep(0.5)


def payloads(tmp: Path, shape) -> tuple[Path, Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, np.uint8)).save(buf, format="PNG")
    (tmp / "image.png").write_bytes(buf.getvalue())
    (tmp / "batch.json").write_text(json.dumps(
        {"instances": rng.integers(0, 256, (32, *shape), np.uint8).tolist()}))
    return tmp / "image.png", tmp / "batch.json"
