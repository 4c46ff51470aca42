"""Serving under sustained load: `resnet-ray serve` as a user starts it (its defaults: backend
auto, HAProxy behind the guard), driven at a fixed concurrency for minutes by `hey`, one image
per request.

python -m bench.soak [--quick] [--minutes 10] [--concurrency 32] [--model-dir DIR]
    [--ingress haproxy|proxy] [--out F]

A first minute warms the replica up (its allocator and caches settle); after it, every minute
records the answers by status, the requests that got no answer, the rate and latency, and the
replica's resident memory (its pid from /metadata, its RSS from /proc). A service that holds
up answers every request with 200, or 503 when its queue is full, and its RSS stops growing.
Starts its own Ray cluster: no other may run on the machine. --quick serves the tiny model for
a few seconds: it keeps the harness working and measures nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from datetime import date
from pathlib import Path

from .common import machine, result_path, untrained_model_dir, write_report
from .http_load import ensure_hey, hey, payloads, wait_ready

PORT = 8012


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def soak(url: str, png: Path, concurrency: int, slices: int, slice_s: float,
         warmup_s: float) -> tuple[dict, list[dict]]:
    meta = json.loads(urllib.request.urlopen(f"{url}/metadata").read())
    pid = meta["replica"]["pid"]
    warm = {"minute": 0, **hey(f"{url}/predict", png, "image/png", concurrency, warmup_s),
            "rss_mb": rss_mb(pid)}
    rows = []
    for i in range(slices):
        row = hey(f"{url}/predict", png, "image/png", concurrency, slice_s)
        rows.append({"minute": i + 1, **row, "rss_mb": rss_mb(pid)})
        print(f"soak {i + 1}/{slices}: {row['requests_per_s']:.1f} requests/s, "
              f"codes {row['codes']}, unanswered {sum(row['unanswered'].values())}, "
              f"RSS {rows[-1]['rss_mb']:.0f} MB", flush=True)
    return {**warm, "backend": meta["backend"]}, rows


def summarize(warm: dict, rows: list[dict]) -> dict:
    codes: dict[str, int] = {}
    for r in rows:
        for code, n in r["codes"].items():
            codes[str(code)] = codes.get(str(code), 0) + n
    unanswered = sum(sum(r["unanswered"].values()) for r in rows)
    return {"requests": sum(r["requests"] for r in rows), "codes": codes,
            "unanswered": unanswered,
            "errors_other_than_503": unanswered + sum(
                n for c, n in codes.items() if c not in ("200", "503")),
            "rss_after_warmup_mb": warm["rss_mb"], "rss_end_mb": rows[-1]["rss_mb"],
            "rss_max_mb": max(r["rss_mb"] for r in rows),
            "rss_growth_mb": rows[-1]["rss_mb"] - warm["rss_mb"]}


def markdown(report: dict) -> str:
    lines = [f"Machine: {report['machine']}, {report['date']}. `resnet-ray serve` "
             f"({report['backend']}, ingress {report['ingress']}) of {report['model']}, "
             f"concurrency {report['concurrency']}, one PNG per request.", "",
             "| minute | requests | images/s | p50 ms | p99 ms | status codes | no answer | "
             "replica RSS MB |", "|---|---|---|---|---|---|---|---|"]
    for r in [report["warmup"], *report["minutes"]]:
        lines.append(f"| {r['minute'] or 'warm-up'} | {r['requests']} | "
                     f"{r['requests_per_s']:.1f} | {r['p50_ms'] or 0:.0f} | "
                     f"{r['p99_ms'] or 0:.0f} | {_codes(r['codes'])} | "
                     f"{sum(r['unanswered'].values())} | {r['rss_mb']:.0f} |")
    s = report["summary"]
    lines += ["", f"{s['requests']} requests after the warm-up: status {_codes(s['codes'])}, "
              f"{s['unanswered']} without an answer, {s['errors_other_than_503']} errors other "
              f"than 503. Replica RSS {s['rss_after_warmup_mb']:.0f} MB after the warm-up, "
              f"{s['rss_end_mb']:.0f} MB at the end (growth {s['rss_growth_mb']:+.0f} MB, "
              f"max {s['rss_max_mb']:.0f})."]
    return "\n".join(lines)


def _codes(codes: dict) -> str:
    return ", ".join(f"{c}: {n}" for c, n in sorted(codes.items())) or "none"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench soak")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--model-dir", help="an exported model (default: an untrained one)")
    parser.add_argument("--ingress", default="haproxy", choices=["haproxy", "proxy"])
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    out = result_path(args.out, "soak", args.quick)
    ensure_hey()
    import ray

    ray.shutdown()  # a cluster an earlier part started here would be joined, not started
    slices, slice_s, warmup_s = ((2, 2.0, 2.0) if args.quick else
                                 (max(1, round(args.minutes)), 60.0, 60.0))
    tmp = Path(tempfile.mkdtemp())
    cli = Path(sys.executable).with_name("resnet-ray")
    server = None
    try:
        model_dir = args.model_dir or untrained_model_dir(tmp, "tiny" if args.quick else "resnet50")
        png, _ = payloads(tmp, (64, 64, 3))
        # Its own session, so that stopping it reaches Ray's processes too.
        log = tmp / "serve.log"
        with open(log, "w") as out_file:
            server = subprocess.Popen([str(cli), "serve", model_dir, "--port", str(PORT),
                                       "--ingress", args.ingress], start_new_session=True,
                                      stdout=out_file, stderr=subprocess.STDOUT)
        try:
            url = wait_ready([f"http://127.0.0.1:{PORT}"], timeout=300,
                             alive=lambda: server.poll() is None)
        except (TimeoutError, RuntimeError):
            sys.exit(f"bench soak: `resnet-ray serve` did not answer; its output:\n"
                     f"{log.read_text()[-3000:]}")
        warm, rows = soak(url, png, args.concurrency, slices, slice_s, warmup_s)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        subprocess.run([str(cli.with_name("ray")), "stop", "--force"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    report = {"part": "soak", "date": str(date.today()), "quick": args.quick,
              "machine": machine(), "model": args.model_dir or "untrained resnet50",
              "backend": warm.pop("backend"), "ingress": args.ingress,
              "concurrency": args.concurrency, "warmup": warm, "minutes": rows,
              "summary": summarize(warm, rows)}
    write_report(report, out, markdown(report))


if __name__ == "__main__":
    main()
