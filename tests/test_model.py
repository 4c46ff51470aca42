import numpy as np
import pytest

from resnet_ray.errors import ConfigError
from resnet_ray.images import to_model_input
from resnet_ray.model import ResNet50, ResNetTiny, build_model

from conftest import random_images


def _counts(model):
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    non_trainable = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return model.count_params(), trainable, non_trainable


@pytest.fixture(scope="module")
def resnet50():
    return ResNet50(input_shape=(64, 64, 3), classes=6)


def test_resnet50_has_the_recipes_parameter_counts(resnet50):
    assert _counts(resnet50) == (23_600_006, 23_546_886, 53_120)


def test_resnet50_structure_follows_the_recipe(resnet50):
    names = [layer.name for layer in resnet50.layers]
    # stage blocks: 3 + 4 + 6 + 3 bottlenecks, the first of each with a projected shortcut
    for stage, blocks in ((2, "abc"), (3, "abcd"), (4, "abcdef"), (5, "abc")):
        for b in blocks:
            assert f"res{stage}{b}_branch2c" in names
        assert f"res{stage}a_branch1" in names
        assert f"res{stage}b_branch1" not in names
    assert resnet50.get_layer("res3a_branch2a").strides == (2, 2)
    assert resnet50.get_layer("res2a_branch2a").strides == (1, 1)
    assert resnet50.get_layer("res2b_branch2b").padding == "same"
    assert resnet50.get_layer("res2b_branch2a").padding == "valid"
    assert resnet50.get_layer("bn2a_branch2a").axis == [3]
    assert resnet50.output_shape == (None, 6)


def test_prediction_of_an_image_does_not_depend_on_its_batch(resnet50):
    images = to_model_input(random_images(32, seed=3))
    # Move BN's statistics away from their initial values, as training would.
    for layer in resnet50.layers:
        if layer.name.startswith("bn"):
            mean, var = layer.moving_mean, layer.moving_variance
            mean.assign(np.full(mean.shape, 0.1, np.float32))
            var.assign(np.full(var.shape, 2.0, np.float32))
    alone = resnet50.predict(images[:1], verbose=0)
    in_batch = resnet50.predict(images, batch_size=32, verbose=0)[:1]
    np.testing.assert_allclose(alone, in_batch, atol=1e-5)


def test_classes_and_input_shape_are_parameters():
    model = build_model("tiny", input_shape=(48, 48, 3), classes=10)
    assert model.input_shape == (None, 48, 48, 3)
    assert model.output_shape == (None, 10)
    big = ResNet50(input_shape=(96, 96, 3), classes=10)
    assert big.output_shape == (None, 10)


def test_tiny_variant_uses_the_same_blocks_with_deterministic_names():
    a, b = ResNetTiny(), ResNetTiny()
    assert [layer.name for layer in a.layers] == [layer.name for layer in b.layers]
    assert "res2a_branch1" in [layer.name for layer in a.layers]
    assert a.count_params() < 200_000
    # Seeded initializers: two builds start from the same weights.
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"name": "resnet18"}, "model: expected one of"),
    ({"name": "tiny", "classes": 1}, "classes: expected at least 2"),
    ({"name": "tiny", "input_shape": (64, 64, 1)}, "input_shape"),
])
def test_bad_model_parameters_are_named(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_model(**kwargs)
