"""Serve throughput and latency of the full ResNet-50 over HTTP on loopback, with
`@serve.batch` on (max_batch_size 32) and off (max_batch_size 1), at concurrency 1 and 32.

python -m bench.serve_load [--requests 200] [--out bench/results/serve-DATE.json]

Bounded request loops against 127.0.0.1 only. The model's weights are untrained: speed does
not depend on them.
"""

import argparse
import asyncio
import io
import json
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", default=f"bench/results/serve-{date.today()}.json")
    args = parser.parse_args()

    from ray import serve

    from resnet_ray.export import save_model_dir
    from resnet_ray.model import ResNet50
    from resnet_ray.serve import DigitService
    from resnet_ray.train import init_ray

    model_dir = Path(tempfile.mkdtemp()) / "resnet50"
    save_model_dir(ResNet50(), model_dir, {"classes": [0, 1, 2, 3, 4, 5], "config": {},
                                           "metrics": {}})
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
                       **asyncio.run(_load(url, payload, args.requests, concurrency))}
                print(json.dumps(row), flush=True)
                rows.append(row)
            serve.delete("bench")
    finally:
        serve.shutdown()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": str(date.today()), "model": "ResNet50 64x64x3",
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
