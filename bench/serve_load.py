"""Serve throughput and latency of the full ResNet-50 over HTTP on loopback, with
`@serve.batch` on (max_batch_size 32) and off (max_batch_size 1), at concurrency 1 and 32.

python -m bench.serve_load [--quick] [--requests 200] [--out bench/results/serve-DATE.json]

Bounded request loops against 127.0.0.1 only. The model's weights are untrained: speed does
not depend on them. --quick serves the tiny model with a few requests: it keeps the harness
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    requests = args.requests or (16 if args.quick else 200)
    out = Path(args.out or f"bench/results/serve-{date.today()}"
                           f"{'-quick' if args.quick else ''}.json")

    from ray import serve

    from resnet_ray.export import save_model_dir
    from resnet_ray.model import build_model
    from resnet_ray.serve import DigitService
    from resnet_ray.train import init_ray

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
        for batching, size in (("on", 32), ("off", 1)):
            serve.run(DigitService.options(
                max_ongoing_requests=32, max_queued_requests=256,
                user_config={"max_batch_size": size, "batch_wait_timeout_s": 0.01})
                .bind(str(model_dir)), name="bench", route_prefix="/")
            asyncio.run(_load(url, payload, 20, 4))  # warm-up
            for concurrency in (1, 32):
                row = {"batching": batching, "max_batch_size": size,
                       **asyncio.run(_load(url, payload, requests, concurrency))}
                print(json.dumps(row), flush=True)
                rows.append(row)
            serve.delete("bench")
    finally:
        serve.shutdown()
        shutil.rmtree(model_dir.parent, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"part": "serve", "date": str(date.today()), "quick": args.quick,
                               "model": f"{model_name} 64x64x3", "rows": rows},
                              indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
