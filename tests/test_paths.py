"""Paths as a person types them: every path option of every command takes a relative path
(resolved against the directory the command runs in) and `~`; one that cannot be used is one
line and exit status 2 before anything runs; `--version` names what the package runs on."""

import argparse
from importlib.metadata import version

import pytest

from resnet_ray import __version__, paths
from resnet_ray.cli import build_parser, main

# Option names that hold a path: each must resolve it with a resnet_ray.paths function.
PATH_NAMES = {"data", "storage", "export", "out", "workdir", "config", "model_dir", "images",
              "images_dir", "plots", "repo"}


def commands(parser=None, prefix=()):
    """(argv prefix, parser) of every command, sub-commands included."""
    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*prefix, name))
            return
    yield prefix, parser


def path_options(parser):
    return [a for a in parser._actions if a.type not in (int, float) and (
        a.dest in PATH_NAMES or a.dest.endswith(("_dir", "_file", "_path")))]


def argv_with(parser, action, typed) -> list[str]:
    """The command's required options and positionals, `action` given `typed`."""
    argv = []
    for a in parser._actions:
        value = typed if a is action else "given"
        if a.option_strings and (a.required or a is action):
            argv += [a.option_strings[0], value]
        elif not a.option_strings and a.nargs != 0:
            argv.append(value)
    return argv


def test_every_path_option_takes_relative_and_home_paths(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    seen, cli = 0, build_parser()
    for prefix, parser in commands(cli):
        for action in path_options(parser):
            assert action.type in paths.TYPES, f"{' '.join(prefix)} {action.dest}"
            for typed, resolved in (("rel/x", tmp_path / "rel" / "x"),
                                    ("./rel/../y", tmp_path / "y"), ("~/z", home / "z")):
                argv = [*prefix, *argv_with(parser, action, typed)]
                value = getattr(cli.parse_args(argv), action.dest)
                got = value[0] if isinstance(value, list) else value
                assert got == str(resolved), (argv, got)
            seen += 1
    assert seen >= 17  # the commands' path options as of this test's writing


def test_uris_stay_uris_where_a_uri_is_taken_and_are_refused_elsewhere():
    assert paths.location("s3://bucket/runs") == "s3://bucket/runs"
    assert paths.data("gs://bucket/hands") == "gs://bucket/hands"
    assert paths.data("builtin:sign-digits") == "builtin:sign-digits"
    for bad, func in (("foo://x", paths.location), ("s3://b/m", paths.local),
                      ("s3://b/m", paths.output), ("", paths.local)):
        with pytest.raises(argparse.ArgumentTypeError):
            func(bad)


def test_shown_paths_are_relative_below_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.shown(str(tmp_path / "models" / "r50")) == "models/r50"
    assert paths.shown("/elsewhere/m") == "/elsewhere/m"
    assert paths.shown("s3://b/m") == "s3://b/m"
    # A `ray job submit` driver's working directory may be gone by the time it prints.
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert paths.shown(str(tmp_path / "m")) == str(tmp_path / "m")


@pytest.mark.parametrize("argv, named", [
    # inputs that do not exist
    (["data", "import", "nope", "--out", "o"], "nope: no such directory"),
    (["train", "--data", "nope"], "nope: no such directory"),
    (["tune", "--config", "nope.yaml", "--data", "d"], "nope.yaml: no such file"),
    (["evaluate", "m", "--data", "nope.h5"], "nope.h5: no such file"),
    (["predict", "nope", "a.jpg"], "nope: no such model directory"),
    (["serve", "nope"], "nope: no such model directory"),
    (["quantize", "nope", "--data", "d"], "nope: no such model directory"),
    # outputs a file stands in the way of
    (["data", "synth", "--out", "afile/x"], "argument --out: expected a directory to write"),
    (["data", "sample", "--out", "afile"], "argument --out: expected a directory to write"),
    (["train", "--data", "d", "--export", "afile/m"], "argument --export: expected a dir"),
    (["train", "--data", "d", "--storage", "afile"], "argument --storage: expected a dir"),
    (["tune", "--config", "c", "--data", "d", "--export", "afile"], "argument --export:"),
    (["evaluate", "m", "--data", "t.h5", "--plots", "afile"], "argument --plots: expected"),
    (["demo", "--workdir", "afile"], "argument --workdir: expected a directory"),
    # what pyarrow would refuse, and a mistyped option
    (["train", "--data", "d", "--storage", "runs://x"], "argument --storage: expected a local"),
    (["train", "--data", "d", "--epochs", "x"], "argument --epochs: invalid int value"),
])
def test_a_path_that_cannot_be_used_is_one_line_and_exit_2(argv, named, tmp_path, monkeypatch,
                                                           capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a file, not a directory")
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's refusal
        code = exit.code
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err, (code, err)
    assert named in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()  # nothing started


def test_version_names_the_package_and_what_it_runs_on(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    out = capsys.readouterr().out
    assert exit.value.code == 0
    assert out.startswith(f"resnet-ray {__version__} (")
    for name, dist in (("Ray", "ray"), ("TensorFlow", "tensorflow"),
                       ("OpenVINO", "openvino")):
        assert f"{name} {version(dist)}" in out

