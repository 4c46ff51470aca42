"""The protocols standard clients speak, tested with the clients: the Open Inference Protocol
("v2") through Triton's own `tritonclient[http]`, JSON and binary tensors, and TF Serving's
REST API ("v1") written from its documentation; both agree with /predict. Bad requests on the
new routes get a 4xx and leave the replica serving."""

import base64
import io
import json
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import SERVE_URL as URL, delete_apps

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def served(serve_instance, tiny_model_dir, tmp_path_factory):
    from ray import serve

    from resnet_ray.serve import build_app

    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(tiny_model_dir, repo / "1")
    # float32 everywhere: answers computed in batches of other sizes agree to 1e-4.
    serve.run(build_app({"model_dir": str(repo), "backend": "openvino-f32"}), name="digits",
              route_prefix="/")
    yield repo
    delete_apps()


@pytest.fixture(scope="module")
def images(synth_dir):
    from resnet_ray.data import load_signs

    return load_signs(synth_dir / "test_signs.h5").x[:8]


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _predict_digits(images):
    """/predict's answers for the same photos: what every protocol must agree with."""
    answers = [httpx.post(f"{URL}/predict", content=_png(x), timeout=60,
                          headers={"content-type": "image/png"}).json() for x in images]
    return [a["digit"] for a in answers], np.array([a["probabilities"] for a in answers])


TRITON_CLIENT = """
import json, sys
import numpy as np
import tritonclient.http as http

images = np.load(sys.argv[1])
client = http.InferenceServerClient(url=sys.argv[2])
out = {"live": client.is_server_live(), "ready": client.is_model_ready("digits"),
       "metadata": client.get_model_metadata("digits")}
for binary in (False, True):
    tensor = http.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=binary)
    wanted = [http.InferRequestedOutput(name, binary_data=binary)
              for name in ("probabilities", "digit")]
    result = client.infer("digits", [tensor], outputs=wanted)
    out["binary" if binary else "json"] = {
        "probabilities": result.as_numpy("probabilities").tolist(),
        "digit": result.as_numpy("digit").tolist(),
        "version": result.get_response()["model_version"]}
print(json.dumps(out))
"""


def test_tritonclient_infers_with_json_and_binary_tensors(served, images, tmp_path):
    np.save(tmp_path / "images.npy", images)
    # tritonclient.http runs on gevent: a process of its own, as a user's client would be.
    proc = subprocess.run([sys.executable, "-c", TRITON_CLIENT, str(tmp_path / "images.npy"),
                           URL.removeprefix("http://")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["live"] and out["ready"]
    meta = out["metadata"]
    assert meta["inputs"][0] == {"name": "images", "datatype": "UINT8",
                                 "shape": [-1, 64, 64, 3]}
    assert meta["parameters"]["classes"] == [0, 1, 2, 3, 4, 5] and meta["versions"] == ["1"]
    digits, probs = _predict_digits(images)
    for kind in ("json", "binary"):
        got = out[kind]
        assert got["version"] == "1"
        assert got["digit"] == [-1 if d is None else d for d in digits], kind
        np.testing.assert_allclose(got["probabilities"], probs, atol=1e-4)


def test_tf_serving_rest_predicts_b64_photos_and_pixel_arrays(served, images):
    # As TF Serving's REST API documents it: row format with {"b64": ...} instances,
    # columnar format, model status and metadata.
    digits, probs = _predict_digits(images)
    rows = {"instances": [{"b64": base64.b64encode(_png(x)).decode()} for x in images]}
    r = httpx.post(f"{URL}/v1/models/digits:predict", json=rows, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["x-model-version"] == "1" and r.json()["model_version"] == 1
    predictions = np.array(r.json()["predictions"])
    np.testing.assert_allclose(predictions, probs, atol=1e-4)
    columns = {"inputs": {"images": images[:2].tolist()}}
    r = httpx.post(f"{URL}/v1/models/digits/versions/1:predict", json=columns, timeout=60)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["outputs"], probs[:2], atol=1e-4)
    status = httpx.get(f"{URL}/v1/models/digits").json()["model_version_status"][0]
    assert status["version"] == "1" and status["state"] == "AVAILABLE"
    signature = httpx.get(f"{URL}/v1/models/digits/metadata").json()["metadata"]
    assert "images" in signature["signature_def"]["signature_def"]["serving_default"]["inputs"]


def _v2(body, headers=None, path="/v2/models/digits/infer"):
    return httpx.post(f"{URL}{path}", content=body, headers=headers or {}, timeout=60)


@pytest.mark.parametrize("case, body, headers", [
    ("wrong shape", {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3],
                                 "data": [0] * 3072}]}, None),
    ("wrong datatype", {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1, 64, 64, 3],
                                    "data": [0] * 12288}]}, None),
    ("too few values", {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 64, 64, 3],
                                    "data": [0] * 10}]}, None),
    ("out of range", {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 64, 64, 3],
                                  "data": [300.0] * 12288}]}, None),
    ("binary size disagrees", {"inputs": [{"name": "images", "datatype": "UINT8",
                                           "shape": [1, 64, 64, 3],
                                           "parameters": {"binary_data_size": 12288}}]},
     "short"),
    ("header length past the body", {"inputs": []}, "9999999"),
    ("no inputs", {"id": "x"}, None),
])
def test_bad_v2_requests_get_a_4xx_and_the_replica_keeps_serving(served, images, case, body,
                                                                  headers):
    head = json.dumps(body).encode()
    if headers == "short":
        r = _v2(head + b"\0" * 100, {"Inference-Header-Content-Length": str(len(head))})
    elif headers:
        r = _v2(head, {"Inference-Header-Content-Length": headers})
    else:
        r = _v2(head, {"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and r.json()["error"], (case, r.status_code, r.text)
    assert _v2(json.dumps({"inputs": [{"name": "images", "datatype": "UINT8",
                                       "shape": [1, 64, 64, 3],
                                       "data": images[0].reshape(-1).tolist()}]})
               ).status_code == 200


def test_versions_and_models_not_served_are_404s_naming_what_is(served, images):
    r = httpx.get(f"{URL}/v2/models/digits/versions/2")
    assert r.status_code == 404 and "live version is 1" in r.json()["error"]
    r = httpx.get(f"{URL}/v2/models/letters")
    assert r.status_code == 404 and "serves 'digits'" in r.json()["error"]
    bad = httpx.post(f"{URL}/v1/models/digits:predict", json={"instances": [{"b64": "aGVsbG8="}]})
    assert bad.status_code == 400 and bad.headers["x-model-version"] == "1"
    assert httpx.get(f"{URL}/v2").json()["extensions"] == ["binary_tensor_data"]
