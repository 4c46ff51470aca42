"""Serving speed and endurance, driven by Debian's compiled HTTP client `hey` on loopback.

python -m bench serve [--quick] [--seconds 8] [--model-dir DIR] [--settings "tf;openvino"]
python -m bench soak [--quick] [--minutes 10] [--concurrency 32] [--model-dir DIR]
    [--ingress haproxy|proxy] [--rollouts]

In process: each backend's predictor at batch 1 and 32. Over HTTP, each setting in a fresh
process with its own Ray cluster (no other Ray may run here): the default service (HAProxy,
the replica's batcher) with TensorFlow, the same with batching off, with OpenVINO, and
OpenVINO behind Ray's Python proxy; a point gives images/s, p50/p95/p99 and status codes, and
"x32" points send one JSON request of 32 images at a time. Speed does not depend on the
weights: the default model is an untrained one (`resnet-ray evaluate --backend` checks a
trained model's answers per backend).

soak: `resnet-ray serve` as a user starts it, at a fixed concurrency for minutes, one PNG per
request. After a warm-up minute, each minute records answers by status, requests with no
answer, rate, latency and the replica's memory. A service that holds up answers 200, or 503
when its queue is full, and its memory stops growing. --rollouts: a repository of 3 versions,
and `resnet-ray deploy` to 2, 3 and 2 while the third 90 s of load runs (against the second).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import psutil

from .common import parser, fresh, result_path, table, untrained_model_dir, write_report

PORT, SOAK_PORT = 8011, 8012
# name: (backend, ingress, max_batch_size, concurrencies, requests of 32 images too: one JSON
# request at a time, or two clients' Open Inference Protocol requests with binary tensors)
SETTINGS = {"tf": ("tf", "haproxy", 32, (1, 32), "json"),
            "tf, batching off": ("tf", "haproxy", 1, (32,), None),
            "openvino": ("auto", "haproxy", 32, (1, 32), "v2"),
            "openvino, Ray's proxy": ("auto", "proxy", 32, (1, 32), None)}


def ensure_hey() -> None:
    if not shutil.which("hey"):
        sys.exit("bench serve and soak need Debian's `hey` load generator: apt install hey")


def hey(url: str, body: Path, ctype: str, concurrency: int, seconds: float,
        headers: tuple = ()) -> dict:
    """One load point: rate, latency percentiles, answers by status, requests unanswered."""
    out = subprocess.run(["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST",
                          "-T", ctype, "-D", str(body), "-t", "60", *headers, url],
                         capture_output=True, text=True, check=True).stdout
    codes = {str(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    failed = out.partition("Error distribution:")[2]  # refused, reset, timed out
    unanswered = sum(int(n) for n, _ in re.findall(r"\[(\d+)\]\t(.+)", failed))
    # hey prints a percentile only once it has enough requests for it (100 for p99).
    ms = {p: float(v) * 1000 for p, v in re.findall(r"(\d+)%+ in ([\d.]+) secs", out)}
    return {"concurrency": concurrency, "requests": sum(codes.values()) + unanswered,
            "codes": codes, "unanswered": unanswered,
            "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": ms.get("50"), "p95_ms": ms.get("95"), "p99_ms": ms.get("99"),
            "max_ms": float(re.search(r"Slowest:\s+([\d.]+) secs", out).group(1)) * 1000}


def wait_ready(urls: list[str], timeout: float = 120, alive=None) -> str:
    """The first of `urls` whose /healthz answers; alive(), when given, says whether the
    server still runs: once it does not, waiting ends with a RuntimeError."""
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


def payloads(tmp: Path, shape) -> tuple[Path, Path, Path]:
    """A PNG of random pixels, a JSON request of 32 such images, and an Open Inference
    Protocol request of 32 as a binary tensor (its JSON header's length in its name)."""
    from PIL import Image

    rng, buf = np.random.default_rng(0), io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, np.uint8)).save(buf, format="PNG")
    (tmp / "image.png").write_bytes(buf.getvalue())
    pixels = rng.integers(0, 256, (32, *shape), np.uint8)
    (tmp / "batch.json").write_text(json.dumps({"instances": pixels.tolist()}))
    header = json.dumps({"inputs": [{"name": "images", "datatype": "UINT8", "shape": list(
        pixels.shape), "parameters": {"binary_data_size": pixels.nbytes}}],
        "parameters": {"binary_data_output": True}}).encode()  # as tritonclient sends it
    v2 = tmp / f"v2-{len(header)}.bin"
    v2.write_bytes(header + pixels.tobytes())
    return tmp / "image.png", tmp / "batch.json", v2


def one_setting(spec: dict) -> dict:
    """In a fresh process: a Ray cluster with the setting's ingress, the service, its load."""
    from ray import serve

    from resnet_ray.runtime import init_ray
    from resnet_ray.serve import DigitService
    from resnet_ray.serve_run import choose_ingress

    backend, ingress, max_batch, concurrencies, batch32 = spec["setting"]
    choose_ingress(ingress)  # as `resnet-ray serve --ingress` sets it, HAProxy behind the guard
    if not init_ray():
        sys.exit("bench serve starts its own Ray clusters: stop the running one (ray stop)")
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    serve.run(DigitService.options(
        max_ongoing_requests=64, max_queued_requests=256, logging_config={
            "enable_access_log": False}, user_config={"max_batch_size": max_batch,
                                                      "batch_wait_timeout_s": 0.01}).bind(
        spec["model_dir"], backend=backend), name="bench", route_prefix="/")
    url, png, js, v2 = (wait_ready([f"http://127.0.0.1:{PORT}"]), spec["png"], spec["json"],
                        Path(spec["v2"]))
    hey(f"{url}/predict", png, "image/png", 4, 2)  # warm-up
    points = [{"images": 1, **hey(f"{url}/predict", png, "image/png", c, spec["seconds"])}
              for c in concurrencies]
    if batch32 == "json":
        points.append({"images": 32, **hey(f"{url}/predict", js, "application/json", 1,
                                           spec["seconds"])})
    if batch32 == "v2":
        points.append({"images": 32, **hey(
            f"{url}/v2/models/digits/infer", v2, "application/octet-stream", 2, spec["seconds"],
            ("-H", f"Inference-Header-Content-Length: {v2.stem.split('-')[1]}"))})
    meta = json.loads(urllib.request.urlopen(f"{url}/metadata").read())
    serve.shutdown()
    for p in points:
        p["images_per_s"] = p["requests_per_s"] * p["images"]
    return {"backend": meta["backend"], "points": points}


def in_process(model_dir: str, backend: str, seconds: float) -> list[dict]:
    from resnet_ray.backends import load_predictor

    predictor, meta = load_predictor(model_dir, backend)
    rows = []
    for batch in (1, 32):
        x = np.random.default_rng(0).random((batch, *meta["input_shape"]), np.float32)
        predictor(x)
        n, begin = 0, time.perf_counter()
        while time.perf_counter() - begin < seconds:
            predictor(x)
            n += 1
        rows.append({"backend": predictor.description, "batch": batch,
                     "images_per_s": n * batch / (time.perf_counter() - begin)})
    return rows


def summarize(settings: dict, local: list[dict]) -> dict:
    """The published serving ratios, each against TensorFlow in process at batch 32."""
    def point(name, c=32, images=1):
        return next((p for p in settings.get(name, {}).get("points", [])
                     if p["concurrency"] == c and p["images"] == images), None)

    tf32, ov32 = (next((r["images_per_s"] for r in local if r["backend"].startswith(b)
                        and r["batch"] == 32), None) for b in ("tf", "openvino ("))
    out = {"tf_in_process_batch32": tf32, "fastest_backend_vs_tf_batch32":
           max(r["images_per_s"] for r in local if r["batch"] == 32) / tf32}
    off = point("tf, batching off")
    ratios = {"tf_http_c32_vs_in_process": (point("tf"), tf32),
              "tf_batching_on_vs_off_c32": (point("tf"), off and off["images_per_s"]),
              "tf_json32_vs_in_process": (point("tf", 1, 32), tf32),
              "openvino_http_c32_vs_tf_in_process": (point("openvino"), tf32),
              "proxy_ingress_http_c32_vs_tf_in_process": (point("openvino, Ray's proxy"), tf32),
              "openvino_http_c32_vs_own_in_process": (point("openvino"), ov32),
              "openvino_v2_binary32_vs_own_in_process": (point("openvino", 2, 32), ov32)}
    out.update({key: top["images_per_s"] / bottom for key, (top, bottom) in ratios.items()
                if top and bottom})
    out.update({key: point(name, 1)["p50_ms"] for key, name in (
        ("openvino_p50_ms_c1", "openvino"), ("proxy_ingress_p50_ms_c1", "openvino, Ray's proxy"))
        if point(name, 1)})
    return out


def run(a: argparse.Namespace) -> dict:
    from resnet_ray.modeldir import read_metadata

    ensure_hey()
    seconds = a.seconds or (1.0 if a.quick else 8.0)
    names = [n.strip() for n in a.settings.split(";")] if a.settings else list(SETTINGS)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        model_dir = a.model_dir or untrained_model_dir(tmp, "tiny" if a.quick else "resnet50")
        png, js, v2 = payloads(tmp, tuple(read_metadata(model_dir)["input_shape"]))
        settings = {}
        for name in names:
            settings[name] = fresh("serve_load", "one_setting", {
                "setting": SETTINGS[name], "model_dir": model_dir, "png": str(png),
                "json": str(js), "v2": str(v2), "seconds": seconds})
            subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"],
                           capture_output=True)
            print(f"{name}: " + ", ".join(f"c={p['concurrency']} x{p['images']} "
                  f"{p['images_per_s']:.1f}/s" for p in settings[name]["points"]), flush=True)
        local = [r for b in ("tf", "openvino-f32", "openvino")
                 for r in in_process(model_dir, b, min(seconds, 5))]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [[name, s["backend"], p["concurrency"], p["images"], f"{p['images_per_s']:.1f}",
             p["p50_ms"] or "-", p["p99_ms"] or "-", p["codes"], p["unanswered"]]
            for name, s in settings.items() for p in s["points"]]
    rows += [["in process", r["backend"], "-", r["batch"], f"{r['images_per_s']:.1f}"] +
             ["-"] * 4 for r in local]
    summary = summarize(settings, local)
    text = table(["setting", "backend", "concurrency", "images/request", "images/s", "p50 ms",
                  "p99 ms", "status codes", "no answer"], rows) + "\n\n" + ", ".join(
        f"{k} {v:.2f}" for k, v in summary.items())
    report = {"part": "serve", "quick": a.quick, "model": a.model_dir or "untrained",
              "seconds_per_point": seconds, "settings": settings, "in_process": local,
              "summary": summary}
    return write_report(report, result_path(a.out, "serve", a.quick), text)


def soak_summary(warm: dict, rows: list[dict]) -> dict:
    codes = dict(sum((Counter(r["codes"]) for r in rows), Counter()))
    unanswered = sum(r["unanswered"] for r in rows)
    return {"requests": sum(r["requests"] for r in rows), "codes": codes,
            "unanswered": unanswered, "errors_other_than_503": unanswered + sum(
                n for c, n in codes.items() if c not in ("200", "503")),
            "rss_after_warmup_mb": warm["rss_mb"], "rss_end_mb": rows[-1]["rss_mb"],
            "rss_growth_mb": rows[-1]["rss_mb"] - warm["rss_mb"]}


def deploys(cli: Path, repo: str, versions=(2, 3, 2)) -> list[dict]:
    """`resnet-ray deploy` to each version in turn: the time it reports to every replica."""
    return [{"version": v, "seconds": float(re.search(r"after ([\d.]+) s", subprocess.run(
        [str(cli), "deploy", repo, "--version", str(v)], capture_output=True, text=True,
        check=True).stdout).group(1))} for v in versions]


def rollout_summary(rows: list[dict], done: list[dict]) -> dict:
    steady, rolling = rows[1], rows[2]
    return {"rollout_p99_vs_steady": rolling["p99_ms"] / steady["p99_ms"],
            "rollout_max_ms": rolling["max_ms"], "rollout_requests": rolling["requests"],
            "rollout_not_200": rolling["requests"] - rolling["codes"].get("200", 0),
            "deploy_new_version_s": max(d["seconds"] for d in done[:2]),
            "deploy_kept_version_s": done[2]["seconds"], "deploys": done}


def soak(a: argparse.Namespace) -> dict:
    ensure_hey()
    slices, slice_s = (2, 2.0) if a.quick else (max(1, round(a.minutes)), 60.0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    cli, server, done = Path(sys.executable).with_name("resnet-ray"), None, []
    try:
        model_dir = a.model_dir or untrained_model_dir(tmp, "tiny" if a.quick else "resnet50")
        if a.rollouts:  # the same weights as 3 versions: the swaps load and check each
            for n in (1, 2, 3):
                shutil.copytree(model_dir, tmp / "repo" / str(n))
            model_dir, slices, slice_s = str(tmp / "repo"), 2, slice_s * 1.5
        png, _, _ = payloads(tmp, (64, 64, 3))
        with open(tmp / "serve.log", "w") as log:  # its own session: Ray's processes too
            server = subprocess.Popen([str(cli), "serve", model_dir, "--port", str(SOAK_PORT),
                                       "--ingress", a.ingress, *["--version", "1"] * a.rollouts],
                                      start_new_session=True,
                                      stdout=log, stderr=subprocess.STDOUT)
        try:
            url = wait_ready([f"http://127.0.0.1:{SOAK_PORT}"], timeout=300,
                             alive=lambda: server.poll() is None)
        except (TimeoutError, RuntimeError):
            sys.exit(f"bench soak: `resnet-ray serve` did not answer; its output:\n"
                     f"{(tmp / 'serve.log').read_text()[-3000:]}")
        meta = json.loads(urllib.request.urlopen(f"{url}/metadata").read())
        replica, rows = psutil.Process(meta["replica"]["pid"]), []
        for minute in range(slices + 1):  # minute 0 warms up
            rolling = threading.Thread(target=lambda: done.extend(deploys(cli, model_dir)))
            if a.rollouts and minute == 2:
                rolling.start()
            rows.append({"minute": minute, **hey(f"{url}/predict", png, "image/png",
                         a.concurrency, slice_s), "rss_mb": replica.memory_info().rss / 2 ** 20})
            if rolling.is_alive():
                rolling.join()
            print(f"minute {minute}: {rows[-1]['requests_per_s']:.1f} requests/s, codes "
                  f"{rows[-1]['codes']}, RSS {rows[-1]['rss_mb']:.0f} MB", flush=True)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        subprocess.run([str(cli.with_name("ray")), "stop", "--force"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    summary = rollout_summary(rows, done) if a.rollouts else soak_summary(rows[0], rows[1:])
    text = table(["minute", "requests", "requests/s", "p50 ms", "p99 ms", "status codes",
                  "no answer", "replica RSS MB"],
                 [[r["minute"] or "warm-up", r["requests"], f"{r['requests_per_s']:.1f}",
                   r["p50_ms"], r["p99_ms"], r["codes"], r["unanswered"],
                   f"{r['rss_mb']:.0f}"] for r in rows]) + (f"\n\n{summary}" * a.rollouts)
    report = {"part": "rollout" if a.rollouts else "soak", "quick": a.quick,
              "model": a.model_dir or "untrained", "backend": meta["backend"],
              "ingress": a.ingress, "concurrency": a.concurrency, "minutes": rows,
              "summary": summary}
    return write_report(report, result_path(a.out, report["part"], a.quick), text)


def main(argv=None) -> dict:
    p = parser("serve", __doc__)
    p.add_argument("--seconds", type=float)
    p.add_argument("--settings", help=f"';'-separated, of: {'; '.join(SETTINGS)}")
    p.add_argument("--model-dir", help="an exported model (default: an untrained one)")
    return run(p.parse_args(argv))


def soak_main(argv=None) -> dict:
    p = parser("soak", __doc__)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--model-dir", help="an exported model (default: an untrained one)")
    p.add_argument("--ingress", default="haproxy", choices=["haproxy", "proxy"])
    p.add_argument("--rollouts", action="store_true", help="versions change in minute 2")
    return soak(p.parse_args(argv))
