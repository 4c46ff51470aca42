"""Rollouts under load, as a user runs them: `resnet-ray serve REPO` with the full ResNet-50,
32 clients sending photos the whole time, and `resnet-ray deploy` from another process taking
it through versions 1 -> 2 -> 3 -> 2 and two refused versions. No request may fail, and every
request sent after `deploy` returned must be answered by the new version. The latencies are
printed (-s); speed goals are measured by the bench, not asserted here."""

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from bench.serve_load import wait_ready

pytestmark = [pytest.mark.ray, pytest.mark.slow]
PORT = 8321
URL = f"http://127.0.0.1:{PORT}"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """Versions 1-3: untrained ResNet-50s (speed does not depend on the weights); 4 damaged,
    5 with ten classes."""
    import shutil

    from resnet_ray.model import build_model
    from resnet_ray.modeldir import save_model_dir

    repo = tmp_path_factory.mktemp("repo")
    for n in (1, 2, 3):
        save_model_dir(build_model("resnet50"), repo / str(n), {"classes": [0, 1, 2, 3, 4, 5]})
    shutil.copytree(repo / "1", repo / "4")
    (repo / "4" / "model.keras").write_bytes(b"PK\3\4 not a model")
    shutil.copytree(repo / "1", repo / "5")
    meta = json.loads((repo / "5" / "metadata.json").read_text())
    (repo / "5" / "metadata.json").write_text(json.dumps({**meta, "classes": list(range(10))}))
    return repo


class Load:
    """32 clients posting one PNG each, in a loop, on a thread of its own."""

    def __init__(self, png: bytes, concurrency: int = 32):
        self.png, self.concurrency = png, concurrency
        self.records: list[tuple[float, float, int, str | None]] = []  # sent, s, status, ver
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _client(self, http):
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                r = await http.post(f"{URL}/predict", content=self.png,
                                    headers={"content-type": "image/png"})
                status, version = r.status_code, r.headers.get("x-model-version")
            except httpx.HTTPError:
                status, version = 0, None
            self.records.append((sent, time.monotonic() - sent, status, version))

    async def _run(self):
        async with httpx.AsyncClient(timeout=60) as http:
            await asyncio.gather(*(self._client(http) for _ in range(self.concurrency)))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=120)


def _deploy(repo, version):
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "resnet_ray", "deploy", str(repo), "--version",
                           str(version), "--timeout", "240"], capture_output=True, text=True,
                          timeout=300)
    return proc, started, time.monotonic()


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("replicas", [1, 2])
def test_rollouts_and_a_rollback_under_load_lose_no_request(private_ray, repo, replicas,
                                                            synth_dir):
    import io

    from PIL import Image

    from resnet_ray.data import load_signs

    buf = io.BytesIO()
    Image.fromarray(load_signs(synth_dir / "test_signs.h5").x[0]).save(buf, format="PNG")
    server = subprocess.Popen([sys.executable, "-m", "resnet_ray", "serve", str(repo),
                               "--version", "1", "--port", str(PORT), "--replicas",
                               str(replicas)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_ready([URL], 300, alive=lambda: server.poll() is None)
        deploys = []
        with Load(buf.getvalue()) as load:
            time.sleep(10)  # the steady state before the first rollout
            for version, refused in ((2, False), (3, False), (2, False), (4, True), (5, True)):
                proc, started, returned = _deploy(repo, version)
                assert proc.returncode == (2 if refused else 0), proc.stdout + proc.stderr
                deploys.append((version, refused, started, returned))
                time.sleep(5)
        records = load.records
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=120)

    assert records and all(status == 200 for _, _, status, _ in records), \
        sorted({status for _, _, status, _ in records})
    live = 1
    for i, (version, refused, started, returned) in enumerate(deploys):
        live = live if refused else version
        until = deploys[i + 1][2] if i + 1 < len(deploys) else float("inf")
        after = [v for sent, _, _, v in records if returned <= sent < until]
        assert after and set(after) == {str(live)}, (version, sorted(set(after)))
    steady = [s for sent, s, _, _ in records if sent < deploys[0][2]]
    during = [s for sent, s, _, _ in records if sent >= deploys[0][2]]
    print(f"{replicas} replica(s): {len(records)} requests, steady p99 "
          f"{np.percentile(steady, 99):.3f} s, during rollouts p99 "
          f"{np.percentile(during, 99):.3f} s, slowest {max(during):.3f} s, deploy took "
          f"{[round(r - s, 1) for _, refused, s, r in deploys if not refused]} s")
