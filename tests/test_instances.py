"""JSON instances (resnet_ray/instances.py): the numpy reader agrees with `json` on what it
takes, and leaves everything else to it. The HTTP error corpus is in tests/reliability."""

import json

import numpy as np
import pytest

from resnet_ray.instances import HTTPError, _integer_pixels, parse_instances

SHAPE = (4, 5, 3)
IMAGES = np.random.default_rng(0).integers(0, 256, (3, *SHAPE), np.uint8)
IMAGES[0, 0, 0] = [0, 255, 9]  # the edges of the range and of the digit counts


@pytest.mark.parametrize("body", [
    json.dumps({"instances": IMAGES.tolist()}),                          # Python's default
    json.dumps({"instances": IMAGES.tolist()}, separators=(",", ":")),   # JavaScript's
    " \n" + json.dumps({"instances": IMAGES.tolist()}) + "\r\n",
], ids=["json.dumps", "compact", "whitespace around"])
def test_usual_bodies_are_read_by_numpy_alone_and_alike(body):
    assert (_integer_pixels(body.encode(), SHAPE) == IMAGES).all()
    assert (np.stack(parse_instances(body.encode(), SHAPE, 8)) == IMAGES).all()


@pytest.mark.parametrize("body", [
    json.dumps({"instances": IMAGES.tolist()}, indent=1),
    json.dumps({"instances": IMAGES.astype(float).tolist()}),
    json.dumps({"instances": IMAGES.tolist(), "extra": 1}),
], ids=["indented", "floats", "another key"])
def test_other_valid_bodies_are_read_by_json(body):
    assert _integer_pixels(body.encode(), SHAPE) is None
    assert (np.stack(parse_instances(body.encode(), SHAPE, 8)) == IMAGES).all()


def _one(pixels: str) -> bytes:
    """A body of one 1x1 image whose single pixel is written as given."""
    return b'{"instances": [[[' + pixels.encode() + b']]]}'


@pytest.mark.parametrize("pixels", ["[1,  2, 3]", "[1 , 2, 3]", "[ 1, 2, 3]"])
def test_other_spacing_is_read_by_json(pixels):
    assert _integer_pixels(_one(pixels), (1, 1, 3)) is None
    assert parse_instances(_one(pixels), (1, 1, 3), 8)[0].tolist() == [[[1, 2, 3]]]


@pytest.mark.parametrize("pixels", ["[1, 5 2]", "[1,5 2, 3]", "[1, 02, 3]", "[1, 2, 256]",
                                    "[1, 2, 3,]", "[, 12, 3]", "[1, 2, -3]", "[1, 2, 1000]"])
def test_near_misses_get_the_error_json_gives_them(pixels):
    assert _integer_pixels(_one(pixels), (1, 1, 3)) is None
    with pytest.raises(HTTPError) as exc:
        parse_instances(_one(pixels), (1, 1, 3), 8)
    assert exc.value.status == 400


def test_too_many_instances_is_413_either_way():
    body = json.dumps({"instances": IMAGES.tolist()}).encode()
    with pytest.raises(HTTPError) as exc:
        parse_instances(body, SHAPE, 2)
    assert exc.value.status == 413 and "limit is 2" in exc.value.message
