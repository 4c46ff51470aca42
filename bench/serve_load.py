"""Serving speed: the exported ResNet-50 in process per backend, and over HTTP on loopback per
serving setting, measured by a compiled client (`hey`) on the same machine.

python -m bench.serve_load [--quick] [--seconds 8] [--model-dir DIR --test-data FILE] [--out F]

Each HTTP setting runs in its own process with its own Ray cluster, because Serve reads its
ingress settings from the environment a cluster starts with; so no other Ray cluster may run
on the machine. Every setting reports images/s and p50/p95/p99 per concurrency, the mean batch
the replica formed, and the share of the machine's CPU that the client used. The levers are
added one at a time, in the order of the table. With --model-dir and --test-data, each backend's
predictions on that test file are compared with TensorFlow's. --quick serves the tiny model for
a second per point: it keeps the harness working (tests/test_bench.py) and measures nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date
from pathlib import Path

import numpy as np

from .common import machine, result_path, untrained_model_dir, write_report
from .http_load import ensure_hey, hey, payloads, wait_ready

DIRECT_PORT = 30000  # Serve's first direct-ingress port (RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT)
PROXY_PORT = 8011
BACKENDS = ("tf", "openvino-f32", "openvino", "openvino-int8")

# (name, settings). "+ lever" adds a lever to the chain before it; "~ change" is a variant of
# the chain so far (the chain goes on without it); any other row stands alone on BASE.
BASE = {"backend": "tf", "ingress": "proxy", "env": {}, "access_log": True,
        "max_batch_size": 32, "wait_s": 0.01, "replicas": 1, "threads": None,
        "concurrency": [1, 32], "json": False, "ray_batch": False}
THROUGHPUT = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
SETTINGS = [
    ("tf, proxy (the old defaults)", {"concurrency": [1, 8, 32]}),
    ("tf, proxy, batching off", {"max_batch_size": 1, "concurrency": [1, 8, 32]}),
    ("+ access log off", {"access_log": False}),
    ("~ RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (proxy port)", {"env": THROUGHPUT}),
    ("~ RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (replica port)", {"env": THROUGHPUT,
                                                           "ingress": "direct"}),
    ("~ direct ingress (replica port)", {"ingress": "direct"}),
    ("+ HAProxy ingress", {"ingress": "haproxy", "concurrency": [1, 8, 32], "json": True}),
    ("~ Ray's @serve.batch", {"ray_batch": True, "concurrency": [1, 8, 32]}),
    ("~ batching off", {"max_batch_size": 1, "concurrency": [1, 8, 32]}),
    ("+ OpenVINO backend", {"backend": "openvino", "concurrency": [1, 8, 32], "json": True}),
    ("~ batching off", {"max_batch_size": 1}),
    ("~ Ray's @serve.batch", {"ray_batch": True}),
    ("~ Ray's proxy", {"ingress": "proxy", "concurrency": [1, 8, 32], "json": True}),
    ("~ direct ingress (replica port)", {"ingress": "direct"}),
    ("~ wait 2 ms", {"wait_s": 0.002}),
    ("~ max batch 8", {"max_batch_size": 8}),
    ("~ 2 replicas x 1 thread", {"replicas": 2, "threads": 1}),
]
QUICK = [("tf, proxy (the old defaults)", {"concurrency": [1, 8, 32]}),
         ("tf, proxy, batching off", {"max_batch_size": 1, "concurrency": [1, 8, 32]}),
         ("~ Ray's @serve.batch", {"ray_batch": True})]


def run_setting(spec: dict, model_dir: str, png: Path, js: Path, seconds: float) -> dict:
    """In a fresh process (`--one`): start Ray with the setting's environment, serve, load."""
    os.environ.update(spec["env"])
    if spec["ingress"] == "haproxy":
        from resnet_ray.serve_run import choose_ingress

        choose_ingress("haproxy")  # as `resnet-ray serve` runs it, behind the guard
    if spec["ingress"] == "direct":
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
    from ray import serve

    from resnet_ray.runtime import init_ray
    from resnet_ray.serve import DigitService

    if not init_ray():
        sys.exit("bench serve starts its own Ray clusters: stop the running one (ray stop)")
    serve.start(http_options={"host": "127.0.0.1", "port": PROXY_PORT})
    options = {"num_replicas": spec["replicas"], "max_ongoing_requests": 64,
               "max_queued_requests": 256,
               "user_config": {"max_batch_size": spec["max_batch_size"],
                               "batch_wait_timeout_s": spec["wait_s"]}}
    if not spec["access_log"]:
        options["logging_config"] = {"enable_access_log": False}
    deployment = _with_ray_batch(DigitService) if spec["ray_batch"] else DigitService
    serve.run(deployment.options(**options).bind(
        model_dir, backend=spec["backend"], threads=spec["threads"]),
        name="bench", route_prefix="/")
    ports = range(DIRECT_PORT, DIRECT_PORT + 8) if spec["ingress"] == "direct" else [PROXY_PORT]
    url = wait_ready([f"http://127.0.0.1:{port}" for port in ports])
    hey(f"{url}/predict", png, "image/png", 4, 2)  # warm-up
    rows = [{"images": 1, **hey(f"{url}/predict", png, "image/png", c, seconds)}
            for c in spec["concurrency"]]
    meta = json.loads(urllib.request.urlopen(f"{url}/metadata").read())
    # JSON requests of 32 images: one at a time, and two at once, so that one request's
    # reading and parsing overlaps the other's model call.
    rows += [{"images": 32, **hey(f"{url}/predict", js, "application/json", c, seconds)}
             for c in ((1, 2) if spec["json"] else ())]
    sizes = {int(k): v for k, v in meta["batch_sizes"].items()}
    for r in rows:
        r["images_per_s"] = r["requests_per_s"] * r["images"]
    serve.shutdown()
    return {"rows": rows, "backend": meta["backend"],
            "mean_batch": sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values()))}


def _with_ray_batch(deployment):
    """The deployment with Ray Serve's `@serve.batch` in place of the replica's own batcher
    (as the service was before it): the batcher's row in the table."""
    import asyncio

    from ray import serve

    class RayBatched(deployment.func_or_class):
        def reconfigure(self, user_config):
            super().reconfigure(user_config)
            self._ray_batch.set_max_batch_size(self.batcher.max_batch_size)
            self._ray_batch.set_batch_wait_timeout_s(self.batcher.wait_s)

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
        async def _ray_batch(self, images):
            return await self._infer(images)

        async def _predict(self, images):
            if self._active == 1 and len(images) <= self.batcher.max_batch_size:
                return await self._infer(images)
            return await asyncio.gather(*(self._ray_batch(img) for img in images))

    return deployment.options(func_or_class=RayBatched)


def in_process(model_dir: str, backend: str, batches: list[int], seconds: float) -> list[dict]:
    """images/s of the replica's own model call (the backend's predictor) at fixed batches."""
    from resnet_ray.backends import load_predictor

    predictor, meta = load_predictor(model_dir, backend)
    rows = []
    for batch in batches:
        x = np.random.default_rng(0).random((batch, *meta["input_shape"]), np.float32)
        predictor(x)
        n, begin = 0, time.perf_counter()
        while time.perf_counter() - begin < seconds:
            predictor(x)
            n += 1
        rows.append({"backend": predictor.description, "batch": batch,
                     "images_per_s": n * batch / (time.perf_counter() - begin)})
    return rows


def agreement(model_dir: str, test_file: str, backends) -> list[dict]:
    """Each backend against TensorFlow on held-out photos: same top class, accuracy."""
    from resnet_ray.backends import load_predictor
    from resnet_ray.data import load_signs
    from resnet_ray.predict import predict_probs

    test = load_signs(test_file)
    ref = predict_probs(load_predictor(model_dir, "tf")[0], test.x).argmax(1)
    rows = []
    for backend in backends:
        predictor = load_predictor(model_dir, backend)[0]
        top = predict_probs(predictor, test.x).argmax(1)
        rows.append({"backend": predictor.description, "photos": len(test),
                     "same_top_class": float((top == ref).mean()),
                     "accuracy": float((top == test.y).mean()),
                     "tf_accuracy": float((ref == test.y).mean())})
    return rows


def summarize(settings: list[dict], local: list[dict]) -> dict:
    """The issue's ratios, each against TensorFlow's in-process rate at batch 32."""
    def rate(name, images=1, c=32, after=None):
        s = _setting(settings, name, after)
        return next(r["images_per_s"] for r in s["rows"]
                    if r["concurrency"] == c and r["images"] == images)

    def row(name, c):
        s = _setting(settings, name)
        return next(r for r in s["rows"] if r["concurrency"] == c and r["images"] == 1)

    tf32 = next(r["images_per_s"] for r in local if r["backend"].startswith("tf ")
                and r["batch"] == 32)
    best32 = max(r["images_per_s"] for r in local if r["batch"] == 32)
    names = [s["name"] for s in settings]
    out = {"tf_in_process_batch32": tf32, "fastest_backend_vs_tf_batch32": best32 / tf32}
    if "+ HAProxy ingress" in names:
        out.update({
            "tf_http_c32_vs_in_process": rate("+ HAProxy ingress") / tf32,
            "tf_batching_on_vs_off_c32": rate("+ HAProxy ingress") /
            rate("~ batching off", after="+ HAProxy ingress"),
            "tf_batcher_vs_serve_batch_c32": rate("+ HAProxy ingress") /
            rate("~ Ray's @serve.batch", after="+ HAProxy ingress"),
            "openvino_batcher_vs_serve_batch_c32": rate("+ OpenVINO backend") /
            rate("~ Ray's @serve.batch", after="+ OpenVINO backend"),
            "tf_json32_vs_in_process": rate("+ HAProxy ingress", images=32, c=1) / tf32,
            "tf_json32_c2_vs_in_process": rate("+ HAProxy ingress", images=32, c=2) / tf32,
            "openvino_http_c32_vs_tf_in_process": rate("+ OpenVINO backend") / tf32,
            "openvino_p50_ms_c1": row("+ OpenVINO backend", 1)["p50_ms"],
            "proxy_ingress_http_c32_vs_tf_in_process":
                rate("~ Ray's proxy") / tf32,
            "proxy_ingress_p50_ms_c1": row("~ Ray's proxy", 1)["p50_ms"]})
    else:
        out["tf_batching_on_vs_off_c32"] = rate(names[0]) / rate(names[1])
        out["tf_batcher_vs_serve_batch_c32"] = rate(names[0]) / rate(names[2])
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _setting(settings: list[dict], name: str, after: str | None = None) -> dict:
    """The setting of that name (the first one after `after`, for a repeated variant)."""
    start = next(i for i, s in enumerate(settings) if s["name"] == after) if after else 0
    return next(s for s in settings[start:] if s["name"] == name)


def markdown(report: dict) -> str:
    lines = ["| setting | backend | concurrency | images/request | images/s | p50 ms | p95 ms | "
             "p99 ms | errors | mean batch | client CPU |", "|---|---|---|---|---|---|---|---|"
             "---|---|---|"]
    for s in report["settings"]:
        for r in s["rows"]:
            lines.append(f"| {s['name']} | {s['backend']} | {r['concurrency']} | {r['images']} | "
                         f"{r['images_per_s']:.1f} | {_ms(r['p50_ms'])} | {_ms(r['p95_ms'])} | "
                         f"{_ms(r['p99_ms'])} | {r['errors']} | {s['mean_batch']:.1f} | "
                         f"{r['client_cpu_share']:.0%} |")
    lines += ["", "| in process | batch | images/s |", "|---|---|---|"]
    lines += [f"| {r['backend']} | {r['batch']} | {r['images_per_s']:.1f} |"
              for r in report["in_process"]]
    if report.get("agreement"):
        lines += ["", "| backend | held-out photos | same top class as TF | accuracy | TF's |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['backend']} | {r['photos']} | {r['same_top_class']:.1%} | "
                  f"{r['accuracy']:.1%} | {r['tf_accuracy']:.1%} |" for r in report["agreement"]]
    lines += ["", "Against TensorFlow in process at batch 32: " + ", ".join(
        f"{k} {v:.2f}" for k, v in report["summary"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--model-dir", help="an exported model (default: an untrained one)")
    parser.add_argument("--test-data", help="a test_signs.h5 for the backends' agreement")
    parser.add_argument("--out")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        spec = json.loads(args.one)
        print("RESULT " + json.dumps(run_setting(spec, spec["model_dir"], Path(spec["png"]),
                                                 Path(spec["json_body"]), spec["seconds"])))
        return
    seconds = args.seconds or (1.0 if args.quick else 8.0)
    out = result_path(args.out, "serve", args.quick)
    ensure_hey()
    import ray

    ray.shutdown()  # a cluster an earlier part started here would be joined, not started
    tmp = Path(tempfile.mkdtemp())
    try:
        model_dir = args.model_dir or untrained_model_dir(tmp, "tiny" if args.quick else "resnet50")
        if args.test_data and not args.quick:
            from resnet_ray.backends import quantize
            quantize(model_dir, Path(args.test_data).with_name("train_signs.h5"))
        from resnet_ray.modeldir import read_metadata
        png, js = payloads(tmp, tuple(read_metadata(model_dir)["input_shape"]))
        settings, chain = [], dict(BASE)
        for i, (name, change) in enumerate(QUICK if args.quick else SETTINGS):
            # "+ lever" rows add to the chain of levers; other rows stand alone on BASE.
            spec = {**(chain if name[:2] in ("+ ", "~ ") else BASE), **change}
            if i == 0 or name.startswith("+ "):
                chain = spec
            spec = {**spec, "concurrency": change.get("concurrency", BASE["concurrency"]),
                    "json": change.get("json", False)}
            result = _run_one(name, spec, model_dir, png, js, seconds)
            settings.append(result)
        backends = ["tf"] if args.quick else [b for b in BACKENDS if b != "openvino-int8" or
                                              args.test_data]
        local = [r for b in backends for r in in_process(model_dir, b, [1, 8, 32],
                                                          min(seconds, 5))]
        agree = agreement(model_dir, args.test_data, backends[1:]) if args.test_data else []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = {"part": "serve", "date": str(date.today()), "quick": args.quick,
              "machine": machine(), "model": args.model_dir or "untrained resnet50",
              "seconds_per_point": seconds, "settings": settings, "in_process": local,
              "agreement": agree, "summary": summarize(settings, local)}
    write_report(report, out, markdown(report))


def _run_one(name, spec, model_dir, png, js, seconds) -> dict:
    one = {**spec, "model_dir": str(model_dir), "png": str(png), "json_body": str(js),
           "seconds": seconds}
    proc = subprocess.run([sys.executable, "-m", "bench.serve_load", "--one", json.dumps(one)],
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"],
                   capture_output=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or not line:
        raise RuntimeError(f"serve setting {name!r} failed:\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-3000:]}")
    result = {"name": name, **{k: v for k, v in spec.items() if k != "model_dir"},
              **json.loads(line[len("RESULT "):])}
    print(json.dumps({k: result[k] for k in ("name", "backend", "mean_batch", "rows")}),
          flush=True)
    return result


if __name__ == "__main__":
    main()
