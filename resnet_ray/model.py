"""ResNet models: the recipe's ResNet-50 and a tiny variant built from the same blocks.

Layer names follow the recipe (`res2a_branch2a`, `bn2a_branch2a`, ...) so that two builds of
the same architecture have the same names and weights can be matched by name.

Unlike the recipe, BatchNormalization is called without `training=True`: it follows Keras'
training phase, so inference uses the moving statistics and an image's prediction does not
depend on the other images in its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .errors import ConfigError
from .keras_backend import keras

layers = keras.layers
BN_AXIS = 3  # channels_last


@dataclass(frozen=True)
class StageSpec:
    """One stage: a convolutional block followed by `identity_blocks` identity blocks."""

    filters: tuple[int, int, int]
    stride: int
    identity_blocks: int
    kernel_size: int = 3


RESNET50_STAGES = (
    StageSpec((64, 64, 256), stride=1, identity_blocks=2),
    StageSpec((128, 128, 512), stride=2, identity_blocks=3),
    StageSpec((256, 256, 1024), stride=2, identity_blocks=5),
    StageSpec((512, 512, 2048), stride=2, identity_blocks=2),
)

# Same blocks, two stages and few filters: builds and trains in seconds for tests.
TINY_STAGES = (
    StageSpec((16, 16, 32), stride=1, identity_blocks=0),
    StageSpec((16, 16, 64), stride=2, identity_blocks=1),
    StageSpec((32, 32, 128), stride=2, identity_blocks=0),
)


def _glorot(seed: int = 0):
    return keras.initializers.GlorotUniform(seed=seed)


def _random_uniform(seed: int = 0):
    return keras.initializers.RandomUniform(seed=seed)


def _bn(name: str, momentum: float):
    return layers.BatchNormalization(axis=BN_AXIS, momentum=momentum, name=name)


def _bottleneck(x, f: int, filters: Sequence[int], stage: int, block: str, stride: int,
                bn_momentum: float, initializer):
    """The main path both blocks share: 1x1 (strided) -> fxf same -> 1x1, each with BN."""
    f1, f2, f3 = filters
    conv, bn = f"res{stage}{block}_branch", f"bn{stage}{block}_branch"
    x = layers.Conv2D(f1, 1, strides=stride, padding="valid", name=conv + "2a",
                      kernel_initializer=initializer(0))(x)
    x = _bn(bn + "2a", bn_momentum)(x)
    x = layers.Activation("relu", name=f"act{stage}{block}_2a")(x)
    x = layers.Conv2D(f2, f, strides=1, padding="same", name=conv + "2b",
                      kernel_initializer=initializer(0))(x)
    x = _bn(bn + "2b", bn_momentum)(x)
    x = layers.Activation("relu", name=f"act{stage}{block}_2b")(x)
    x = layers.Conv2D(f3, 1, strides=1, padding="valid", name=conv + "2c",
                      kernel_initializer=initializer(0))(x)
    return _bn(bn + "2c", bn_momentum)(x)


def identity_block(x, f: int, filters: Sequence[int], stage: int, block: str,
                   bn_momentum: float = 0.99, initializer=_random_uniform):
    """Bottleneck block whose input and output shapes match: the shortcut is the input."""
    out = _bottleneck(x, f, filters, stage, block, 1, bn_momentum, initializer)
    out = layers.Add(name=f"add{stage}{block}")([out, x])
    return layers.Activation("relu", name=f"act{stage}{block}_out")(out)


def convolutional_block(x, f: int, filters: Sequence[int], stage: int, block: str, s: int = 2,
                        bn_momentum: float = 0.99, initializer=_glorot):
    """Bottleneck block that changes shape: first conv strided by `s`, projected shortcut."""
    shortcut = layers.Conv2D(filters[2], 1, strides=s, padding="valid",
                             name=f"res{stage}{block}_branch1",
                             kernel_initializer=initializer(0))(x)
    shortcut = _bn(f"bn{stage}{block}_branch1", bn_momentum)(shortcut)
    out = _bottleneck(x, f, filters, stage, block, s, bn_momentum, initializer)
    out = layers.Add(name=f"add{stage}{block}")([out, shortcut])
    return layers.Activation("relu", name=f"act{stage}{block}_out")(out)


def stage(x, spec: StageSpec, stage_index: int, bn_momentum: float = 0.99):
    """A convolutional block, then identity blocks named b, c, d, ..."""
    x = convolutional_block(x, spec.kernel_size, spec.filters, stage_index, "a",
                            s=spec.stride, bn_momentum=bn_momentum)
    for i in range(spec.identity_blocks):
        x = identity_block(x, spec.kernel_size, spec.filters, stage_index, chr(ord("b") + i),
                           bn_momentum=bn_momentum)
    return x


def ResNet(stages: Sequence[StageSpec], input_shape=(64, 64, 3), classes: int = 6,
           stem_filters: int = 64, bn_momentum: float = 0.99, name: str = "resnet"):
    """The recipe's stem, the given stages (numbered from 2), average pool and softmax."""
    if classes < 2:
        raise ConfigError(f"classes: expected at least 2, got {classes}")
    if len(input_shape) != 3 or input_shape[2] != 3:
        raise ConfigError(f"input_shape: expected (height, width, 3), got {tuple(input_shape)}")
    inputs = layers.Input(shape=tuple(input_shape), name="image")
    x = layers.ZeroPadding2D((3, 3), name="conv1_pad")(inputs)
    x = layers.Conv2D(stem_filters, 7, strides=2, name="conv1",
                      kernel_initializer=_glorot(0))(x)
    x = _bn("bn_conv1", bn_momentum)(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.MaxPooling2D((3, 3), strides=(2, 2), name="pool1")(x)
    for i, spec in enumerate(stages):
        x = stage(x, spec, i + 2, bn_momentum=bn_momentum)
    # The recipe's 2x2 pool sees the whole 2x2 map at 64x64; at other sizes it would not,
    # so the pool never exceeds the map it is given.
    pool = (min(2, x.shape[1]), min(2, x.shape[2]))
    x = layers.AveragePooling2D(pool, name="avg_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    # float32 whatever the compute precision: a softmax in 16 bits rounds small
    # probabilities to 0 and the loss's log of them to infinity.
    outputs = layers.Dense(classes, activation="softmax", name="fc" + str(classes),
                           kernel_initializer=_glorot(0), dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def ResNet50(input_shape=(64, 64, 3), classes: int = 6, bn_momentum: float = 0.99):
    """The recipe's ResNet-50: 23,600,006 parameters at (64, 64, 3) and 6 classes."""
    return ResNet(RESNET50_STAGES, input_shape, classes, bn_momentum=bn_momentum,
                  name="ResNet50")


def ResNetTiny(input_shape=(64, 64, 3), classes: int = 6, bn_momentum: float = 0.99):
    """Same blocks, two small stages: for tests and smoke runs."""
    return ResNet(TINY_STAGES, input_shape, classes, stem_filters=16, bn_momentum=bn_momentum,
                  name="ResNetTiny")


MODELS = {"resnet50": ResNet50, "tiny": ResNetTiny}


def build_model(name: str, input_shape=(64, 64, 3), classes: int = 6, bn_momentum: float = 0.99):
    try:
        builder = MODELS[name]
    except KeyError:
        raise ConfigError(f"model: expected one of {sorted(MODELS)}, got {name!r}") from None
    return builder(input_shape=input_shape, classes=classes, bn_momentum=bn_momentum)
