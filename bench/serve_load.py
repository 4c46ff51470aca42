"""Serve throughput and latency of the full ResNet-50 over HTTP on loopback,
with `@serve.batch` on (max_batch_size 32) and off (max_batch_size 1), at concurrency 1, 8
and 32, against the same model called in this process at batch 1, 8 and 32.

python -m bench.serve_load [--quick] [--requests 200] [--out bench/results/serve-DATE.json]

Bounded request loops against 127.0.0.1 only. The model's weights are untrained: speed does
not depend on them. The in-process baseline is the replica's own call (a `tf.function` of
the model in inference mode) on images already decoded; HTTP adds PNG decoding, the proxy and
the batching queue, and shares the machine's cores with the load generator. --quick serves the tiny model with a few requests: it keeps the harness
working (tests/test_bench.py) and measures nothing.
"""

import argparse
import asyncio
import io
import json
import shutil
import socket
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

from .common import inference_images_per_s, result_path, write_report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(url: str, payload: bytes, requests: int, concurrency: int) -> dict:
    import httpx

    latencies, errors = [], 0
    queue = iter(range(requests))

    async def worker(client):
        nonlocal errors
        for _ in queue:
            start = time.perf_counter()
            r = await client.post(url, content=payload, headers={"content-type": "image/png"})
            latencies.append(time.perf_counter() - start)
            errors += r.status_code != 200

    async with httpx.AsyncClient(timeout=120) as client:
        begin = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - begin
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": requests, "errors": errors,
            "images_per_s": requests / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99))}


def in_process(model_dir: Path, batch: int, images: int) -> dict:
    """images/s of the replica's model call at a fixed batch size, no HTTP."""
    from resnet_ray.modeldir import load_model_dir
    from resnet_ray.images import to_model_input

    model, meta = load_model_dir(model_dir)
    x = to_model_input(np.random.default_rng(0).integers(
        0, 256, (batch, *meta["input_shape"]), np.uint8))
    return {"batch": batch,
            "images_per_s": inference_images_per_s(model, x, max(2, images // batch))}


def summarize(rows: list[dict], local: list[dict]) -> dict:
    """The serving goal's two ratios, at concurrency 32: HTTP with batching against the in-process
    call at batch 32 (goal >= 0.8), and batching on against off (goal >= 3)."""
    http = {(r["batching"], r["concurrency"]): r["images_per_s"] for r in rows}
    top = max(c for _, c in http)
    local_top = next(r["images_per_s"] for r in local if r["batch"] == max(
        r["batch"] for r in local))
    out = {"concurrency": top,
           "http_batched_vs_in_process": http[("on", top)] / local_top,
           "batched_vs_unbatched": http[("on", top)] / http[("off", top)]}
    out["goals"] = {"http_batched_vs_in_process >= 0.8": out["http_batched_vs_in_process"] >= 0.8,
                    "batched_vs_unbatched >= 3": out["batched_vs_unbatched"] >= 3}
    return out


def markdown(report: dict) -> str:
    lines = ["| @serve.batch | concurrency | images/s | p50 ms | p95 ms | p99 ms | errors |",
             "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['batching']} (max {r['max_batch_size']}) | {r['concurrency']} | "
                     f"{r['images_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
                     f"{r['p99_ms']:.0f} | {r['errors']} |")
    lines += ["", "| in process, batch | images/s |", "|---|---|"]
    lines += [f"| {r['batch']} | {r['images_per_s']:.1f} |" for r in report["in_process"]]
    s = report["summary"]
    lines += ["", f"At concurrency {s['concurrency']}: batched HTTP = "
                  f"{s['http_batched_vs_in_process']:.2f}x in-process (goal 0.8x); batching on = "
                  f"{s['batched_vs_unbatched']:.2f}x off (goal 3x)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    requests = args.requests or (16 if args.quick else 200)
    out = result_path(args.out, "serve", args.quick)

    from ray import serve

    from resnet_ray.modeldir import save_model_dir
    from resnet_ray.model import build_model
    from resnet_ray.serve import DigitService
    from resnet_ray.runtime import init_ray

    model_name = "tiny" if args.quick else "resnet50"
    model_dir = Path(tempfile.mkdtemp()) / model_name
    save_model_dir(build_model(model_name), model_dir,
                   {"classes": [0, 1, 2, 3, 4, 5], "config": {}, "metrics": {}})
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        buf, format="PNG")
    payload = buf.getvalue()
    init_ray()
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}/predict"
    rows = []
    try:
        try:
            for batching, size in (("on", 32), ("off", 1)):
                serve.run(DigitService.options(
                    max_ongoing_requests=32, max_queued_requests=256,
                    user_config={"max_batch_size": size, "batch_wait_timeout_s": 0.01})
                    .bind(str(model_dir)), name="bench", route_prefix="/")
                asyncio.run(_load(url, payload, 20, 4))  # warm-up
                for concurrency in (1, 8, 32):
                    row = {"batching": batching, "max_batch_size": size,
                           **asyncio.run(_load(url, payload, requests, concurrency))}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                serve.delete("bench")
        finally:
            serve.shutdown()
        # After Serve is gone, so that the replica does not compete for the cores.
        local = [in_process(model_dir, batch, requests) for batch in (1, 8, 32)]
    finally:
        shutil.rmtree(model_dir.parent, ignore_errors=True)
    report = {"part": "serve", "date": str(date.today()), "quick": args.quick,
              "model": f"{model_name} 64x64x3", "requests": requests, "rows": rows,
              "in_process": local, "summary": summarize(rows, local)}
    write_report(report, out, markdown(report))


if __name__ == "__main__":
    main()
