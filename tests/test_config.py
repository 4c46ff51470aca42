"""TrainConfig is the one place a training option is declared: the CLI flags, the type checks
and the search-space file checks all come from its fields."""

import argparse
import dataclasses
import os

import pytest

from resnet_ray import config
from resnet_ray.config import TrainConfig
from resnet_ray.errors import ConfigError


def _parse(*argv):
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return parser.parse_args(["--data", "d", *argv])


def test_every_option_is_a_flag_with_the_configs_default():
    assert config.from_args(_parse()) == TrainConfig(data=os.path.abspath("d"))
    flags = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["flag"]}
    # Everything but what the driver fills in from the data.
    assert flags == {f.name for f in dataclasses.fields(TrainConfig)} - {"input_shape", "classes"}


def test_flags_reach_the_config_with_their_types():
    cfg = config.from_args(_parse("--epochs", "3", "--lr", "0.01", "--use-gpu",
                                  "--allreduce-dtype", "bfloat16", "--export", "out"))
    assert (cfg.epochs, cfg.lr, cfg.use_gpu, cfg.allreduce_dtype, cfg.export) == \
        (3, 0.01, True, "bfloat16", os.path.abspath("out"))  # as typed, resolved
    with pytest.raises(SystemExit):
        _parse("--lr-schedule", "linear")  # choices come from the field


@pytest.mark.parametrize("key, value, expected", [
    ("epochs", "3", "an integer"), ("lr", True, "a number"), ("model", 5, "a string"),
    ("use_gpu", "yes", "true or false"), ("export", 3, "a path or null"),
    ("input_shape", [64, 64], "[height, width, channels]"),
    ("classes", "0-5", "a list of integer labels"),
])
def test_wrong_types_name_the_key_and_what_was_expected(key, value, expected):
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({key: value}, source="x.json")
    assert f"x.json: key '{key}' must be {expected}, got {value!r}" == str(info.value)


def test_search_files_may_not_set_what_the_command_line_gives():
    assert config.yaml_keys() & {"data", "storage", "name", "export"} == set()
    assert config.searchable_keys() == config.yaml_keys() - {"input_shape", "classes"}


def test_remote_storage_is_a_uri():
    assert config.is_remote("s3://bucket/runs") and config.is_remote("gs://b/p")
    assert not config.is_remote("/data/runs") and not config.is_remote("runs")
