"""Model repositories: numbered versions, the newest, a pinned one, and `--next-version`
exports that never overwrite a version."""

import json
import shutil

import pytest

from resnet_ray.errors import ModelDirError, UserError
from resnet_ray.modeldir import METADATA_FILE
from resnet_ray.repository import claim_next_version, next_version_dir, resolve, versions

from conftest import assert_user_error


def _version(repo, n, model_dir):
    shutil.copytree(model_dir, repo / str(n))


def test_the_newest_complete_version_serves_unless_one_is_pinned(tiny_model_dir, tmp_path):
    repo = tmp_path / "repo"
    for n in (1, 2, 10):
        _version(repo, n, tiny_model_dir)
    (repo / "11").mkdir()            # claimed, being written: not a version yet
    (repo / "07").mkdir()            # not a version name
    (repo / ".3.tmp").mkdir()
    assert versions(repo) == [1, 2, 10]
    assert resolve(repo) == (str(repo / "10"), 10)   # numbers, not strings: 10 > 2
    assert resolve(repo, 2) == (str(repo / "2"), 2)
    with pytest.raises(ModelDirError, match=r"no version 3; versions: \[1, 2, 10\]"):
        resolve(repo, 3)
    # A plain model directory serves as it is, without a version.
    assert resolve(tiny_model_dir) == (str(tiny_model_dir), None)
    with pytest.raises(ModelDirError, match="not a repository"):
        resolve(tiny_model_dir, 1)
    with pytest.raises(ModelDirError, match="neither"):
        resolve(tmp_path)
    # The next version is above every number taken, the one being written included.
    assert next_version_dir(repo) == repo / "12"
    assert next_version_dir(tmp_path / "new") == tmp_path / "new" / "1"


def test_claims_of_the_next_version_never_share_a_number(tmp_path):
    claims = [claim_next_version(tmp_path / "repo") for _ in range(3)]
    assert [n for _, n in claims] == [1, 2, 3]
    assert all(path.is_dir() and not any(path.iterdir()) for path, _ in claims)


def test_next_version_needs_export_naming_a_repository(cli, tiny_model_dir, synth_dir):
    assert_user_error(cli("train", "--data", synth_dir, "--next-version"),
                      "--next-version: applies with --export REPO")
    assert_user_error(cli("train", "--data", synth_dir, "--export", tiny_model_dir,
                          "--next-version"), "a model directory, not a repository")


def test_exports_with_next_version_add_versions_and_keep_the_old(cli, synth_dir, tmp_path):
    repo = tmp_path / "repo"
    for n in (1, 2):
        proc = cli("train", "--data", synth_dir, "--model", "tiny", "--epochs", 1,
                   "--num-workers", 0, "--storage", tmp_path / "runs", "--name", f"r{n}",
                   "--export", repo, "--next-version")
        assert proc.returncode == 0, proc.stderr
        assert f"to {repo / str(n)} (version {n})" in proc.stdout
    assert versions(repo) == [1, 2]
    first = json.loads((repo / "1" / METADATA_FILE).read_text())
    assert first["run_dir"].endswith("r1")  # version 1 is the first run's, untouched
    # A command-line choice of where to export, not a training option.
    assert "next_version" not in first["config"]


def test_the_gate_refuses_a_version_that_scores_worse_unless_forced(tiny_model_dir, synth_dir,
                                                                    tmp_path):
    from resnet_ray.backends import load_predictor
    from resnet_ray.data import Signs, load_signs, write_signs_dir
    from resnet_ray.images import to_model_input
    from resnet_ray.model import build_model
    from resnet_ray.modeldir import save_model_dir
    from resnet_ray.rollout import gate

    repo = tmp_path / "repo"
    _version(repo, 1, tiny_model_dir)
    save_model_dir(build_model("tiny"), repo / "2", {"classes": [0, 1, 2, 3, 4, 5]})
    # Labelled by version 1's own answers: it scores 1.0 there, an untrained model less.
    test = load_signs(synth_dir / "test_signs.h5")
    predictor, _ = load_predictor(repo / "1")
    labels = predictor(to_model_input(test.x)).argmax(axis=1)
    write_signs_dir(tmp_path / "data", test, Signs(test.x, labels, test.classes))
    data = str(tmp_path / "data" / "test_signs.h5")
    said = []
    gate(str(repo), 1, 1, data, say=said.append)  # as good as the live one: passes
    with pytest.raises(UserError, match="version 2 scores .* below the live version 1's"):
        gate(str(repo), 1, 2, data, say=said.append)
    gate(str(repo), 1, 2, data, force=True, say=said.append)
    assert said[-1].startswith(f"accuracy on {data}: version 2 ") and "live version 1" in said[-1]
