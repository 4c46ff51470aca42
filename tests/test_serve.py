"""Ray Serve: HTTP API, batching, bad input, CLI agreement, browser page (overload and
faults: tests/reliability/test_serving.py)."""

import io
import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from resnet_ray.backends import resolve
from resnet_ray.data import load_signs

from conftest import SERVE_URL as URL, delete_apps

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def served(serve_instance, tiny_model_dir):
    from ray import serve

    from resnet_ray.serve import build_app

    serve.run(build_app({"model_dir": str(tiny_model_dir), "max_body_bytes": 1_000_000}),
              name="digits", route_prefix="/")
    yield tiny_model_dir
    delete_apps()


@pytest.fixture(scope="module")
def images(synth_dir):
    return load_signs(synth_dir / "test_signs.h5").x


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _post_file(data: bytes, name="x.png", mime="image/png", field="file"):
    return httpx.post(f"{URL}/predict", files={field: (name, data, mime)}, timeout=60)


def _assert_still_serving(image):
    r = _post_file(_png(image))
    assert r.status_code == 200, r.text


def test_single_image_multipart_and_raw_bytes_agree(served, images):
    r = _post_file(_png(images[0]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"digit", "found", "probabilities", "classes"}
    assert body["classes"] == [0, 1, 2, 3, 4, 5] and len(body["probabilities"]) == 6
    assert abs(sum(body["probabilities"]) - 1) < 1e-4
    assert body["found"] == (body["digit"] is not None)
    raw = httpx.post(f"{URL}/predict", content=_png(images[0]),
                     headers={"content-type": "image/png"}, timeout=60).json()
    np.testing.assert_allclose(raw["probabilities"], body["probabilities"], atol=1e-6)


def test_json_instances_match_single_predictions(served, images):
    r = httpx.post(f"{URL}/predict", json={"instances": images[:5].tolist()}, timeout=60)
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == 5
    for image, pred in zip(images[:5], predictions):
        single = _post_file(_png(image)).json()
        np.testing.assert_allclose(pred["probabilities"], single["probabilities"], atol=1e-5)


def test_health_metadata_and_openapi(served):
    assert httpx.get(f"{URL}/healthz").json()["status"] == "ok"
    meta = httpx.get(f"{URL}/metadata").json()
    assert meta["classes"] == [0, 1, 2, 3, 4, 5] and meta["input_shape"] == [64, 64, 3]
    assert meta["config"]["model"] == "tiny" and "val_accuracy" in meta["metrics"]
    assert meta["backend"].split()[0] == resolve("auto")  # which backend answers
    schema = httpx.get(f"{URL}/openapi.json").json()
    assert "/predict" in schema["paths"] and "/metadata" in schema["paths"]


def test_http_and_cli_answers_agree(served, images, tmp_path, cli):
    path = tmp_path / "hand.png"
    Image.fromarray(images[3]).resize((100, 100)).save(path)
    http = _post_file(path.read_bytes()).json()
    proc = cli("predict", served, path)
    assert proc.returncode == 0, proc.stderr
    answer = proc.stdout.strip().split(": ", 1)[1]
    if http["found"]:
        assert answer == f"{http['digit']} ({http['probability']:.3f})"
    else:
        assert answer.startswith("can not find the number")


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    return buf.getvalue()


def _truncated_jpeg(image) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG")
    return buf.getvalue()[:300]


BAD_REQUESTS = {
    "empty body": (lambda im: dict(content=b"", headers={"content-type": "image/png"}), 400,
                   "empty"),
    "not an image": (lambda im: dict(content=b"hello world", headers={"content-type": "image/jpeg"}),
                     400, "not a readable image"),
    "truncated jpeg": (lambda im: dict(content=_truncated_jpeg(im),
                                       headers={"content-type": "image/jpeg"}), 400, "truncated"),
    "decompression bomb": (lambda im: dict(content=_bomb(), headers={"content-type": "image/png"}),
                           400, "limit"),
    "wrong json shape": (lambda im: dict(json={"instances": [[[1, 2, 3]]]}), 400, "shape"),
    "nan": (lambda im: dict(content=b'{"instances": [[[NaN]]]}',
                            headers={"content-type": "application/json"}), 400, "NaN"),
    "infinity": (lambda im: dict(content=b'{"instances": [[[Infinity]]]}',
                                 headers={"content-type": "application/json"}), 400, "Infinity"),
    "out of range": (lambda im: dict(json={"instances": [np.full((64, 64, 3), 300).tolist()]}), 400,
                     "0 to 255"),
    "strings": (lambda im: dict(json={"instances": [[["a"] * 3] * 64] * 1}), 400, "instances[0]"),
    "no instances key": (lambda im: dict(json={"images": []}), 400, "'instances'"),
    "empty instances": (lambda im: dict(json={"instances": []}), 400, "non-empty"),
    "invalid json": (lambda im: dict(content=b"{not json", headers={"content-type": "application/json"}),
                     400, "not valid JSON"),
    "wrong content type": (lambda im: dict(content=b"digits please",
                                           headers={"content-type": "text/plain"}), 415,
                           "content type"),
    "too large": (lambda im: dict(content=b"\0" * 1_500_000, headers={"content-type": "image/png"}),
                  413, "over the limit"),
    "wrong multipart field": (lambda im: dict(files={"image": ("x.png", _png(im), "image/png")}), 400,
                              "field 'file'"),
    "two files": (lambda im: dict(files=[("file", ("a.png", _png(im), "image/png")),
                                         ("file", ("b.png", _png(im), "image/png"))]), 400,
                  "more than one file"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_a_4xx_and_the_replica_stays_up(served, images, case):
    make, status, fragment = BAD_REQUESTS[case]
    r = httpx.post(f"{URL}/predict", timeout=60, **make(images[0]))
    assert r.status_code == status, (r.status_code, r.text)
    assert fragment in r.json()["error"], r.json()
    _assert_still_serving(images[1])


def test_concurrent_requests_are_batched_and_batch_independent(served, images):
    alone = _post_file(_png(images[7])).json()["probabilities"]
    payloads = [_png(images[i % len(images)]) for i in range(48)]
    payloads[::6] = [_png(images[7])] * len(payloads[::6])
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda p: _post_file(p), payloads))
    assert all(a.status_code == 200 for a in answers)
    batch_sizes = {int(k): v for k, v in httpx.get(f"{URL}/metadata").json()["batch_sizes"].items()}
    assert max(batch_sizes) > 1, batch_sizes
    for a in answers[::6]:  # the same image, predicted inside different batches
        np.testing.assert_allclose(a.json()["probabilities"], alone, atol=1e-5)


@pytest.mark.skipif(not shutil.which("chromium") or not shutil.which("chromedriver"),
                    reason="Debian's chromium and chromium-driver are not installed "
                           "(.ci/run installs them)")
def test_browser_page_shows_the_predicted_digit(served, images, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path = tmp_path / "hand.png"
    Image.fromarray(images[2]).save(path)
    expected = _post_file(path.read_bytes()).json()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(f"{URL}/")
        driver.find_element(By.ID, "file").send_keys(str(path))
        WebDriverWait(driver, 60).until(
            lambda d: d.find_element(By.ID, "answer").text not in ("", "…"))
        shown = driver.find_element(By.ID, "answer").text
        bars = driver.find_elements(By.CSS_SELECTOR, "#bars .bar")
    finally:
        driver.quit()
    assert shown == (str(expected["digit"]) if expected["found"] else "can not find the number")
    assert len(bars) == 6
