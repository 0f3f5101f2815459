"""Lineage of a run, piece by piece: params hash, git state, DVC experiment, versions, overrides."""

import hashlib
import logging
import platform
import subprocess
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from pipeline.lineage import (
    dvc_tags,
    file_md5,
    git_state,
    git_tags,
    params_hash,
    source_tags,
    version_tags,
)
from pipeline.params import parse_yaml
from pipeline.runs import params_overrides

RUN_PARAMS = {"train.lr": 0.1, "arm.max_norm": None, "dataset.vocab": "A,B,C,D", "train.epochs": 3}

DVC_LOCK = """\
schema: '2.0'
stages:
  train@clip:
    cmd: python -m pipeline.train --arm clip
    outs:
    - path: outputs/steps/clip.csv
      hash: md5
      md5: 0123456789abcdef0123456789abcdef
    - path: metrics/clip.json
      hash: md5
      md5: fedcba9876543210fedcba9876543210
"""


def test_params_hash_ignores_key_order():
    reordered = dict(reversed(list(RUN_PARAMS.items())))
    assert params_hash(reordered) == params_hash(RUN_PARAMS)


def test_params_hash_changes_with_value():
    assert params_hash({**RUN_PARAMS, "arm.max_norm": 0.5}) != params_hash(RUN_PARAMS)


def test_params_hash_from_stored_strings():
    # MLflow returns every param as the string it stored.
    stored = {key: str(value) for key, value in RUN_PARAMS.items()}
    assert params_hash(stored) == params_hash(RUN_PARAMS)


def test_params_hash_is_sha256_of_canonical_json():
    canonical = b'{"arm.max_norm":"None","dataset.vocab":"A,B,C,D","train.epochs":"3","train.lr":"0.1"}'
    assert params_hash(RUN_PARAMS) == hashlib.sha256(canonical).hexdigest()


def test_file_md5_reads_in_blocks(tmp_path):
    path = tmp_path / "data.bin"
    content = bytes(range(256)) * 9000  # more than one 1 MiB block
    path.write_bytes(content)
    assert file_md5(path) == hashlib.md5(content).hexdigest()


def test_dvc_tags_in_experiment():
    environ = {"DVC_EXP_NAME": "half", "DVC_EXP_BASELINE_REV": "a" * 40, "DVC_ROOT": "/repo", "DVC_STAGE": "train@clip"}
    assert dvc_tags(environ) == {"dvc.stage": "train@clip", "dvc.exp_name": "half", "dvc.baseline_rev": "a" * 40}


def test_dvc_tags_outside_experiment():
    assert dvc_tags({"DVC_ROOT": "/repo", "DVC_EXP_NAME": "", "DVC_STAGE": "train@clip"}) == {"dvc.stage": "train@clip"}


def test_dvc_tags_outside_dvc():
    # A stage run by hand must not pass for one that DVC ran.
    assert dvc_tags({}) == {}


def test_version_tags_match_pins():
    tags = version_tags()
    assert tags["version.python"] == platform.python_version()
    assert tags["version.torch"].startswith("2.13.0")
    assert tags["version.mlflow"] == "3.17.2"
    assert tags["version.dvc"] == "3.67.1"


def test_source_tags_inside_workspace(tmp_path):
    tags = source_tags(tmp_path / "pipeline/train.py", tmp_path)
    assert tags == {"mlflow.source.name": "pipeline/train.py", "mlflow.source.type": "LOCAL"}


def test_source_tags_outside_workspace(tmp_path):
    tags = source_tags(tmp_path / "elsewhere/train.py", tmp_path / "workspace")
    assert tags["mlflow.source.name"] == "train.py"


def _git(workspace: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=Test Runner", "-c", "user.email=tests@example.invalid", *args]
    return subprocess.run(command, cwd=workspace, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def workspace(tmp_path) -> Path:
    """A committed git repository laid out like the project, with a dvc.lock."""
    files = {
        "params.yaml": "arms:\n  clip:\n    max_norm: 1.0\n",
        "pipeline/train.py": "print('train')\n",
        "dvc.lock": DVC_LOCK,
        "metrics/clip.json": '{"final_loss": 0.1}\n',
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    _git(tmp_path, "init", "-q", "-b", "main")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "initial")
    return tmp_path


def test_git_state_clean(workspace):
    state = git_state(workspace)
    assert state.commit == _git(workspace, "rev-parse", "HEAD")
    assert state.dirty_files == []


def test_git_state_edited_params(workspace):
    (workspace / "params.yaml").write_text("arms:\n  clip:\n    max_norm: 0.5\n")
    assert git_state(workspace).dirty_files == ["params.yaml"]


def test_git_state_staged_change(workspace):
    # Inside a queued experiment, DVC stages the -S changes to params.yaml.
    (workspace / "params.yaml").write_text("arms:\n  clip:\n    max_norm: 0.5\n")
    _git(workspace, "add", "params.yaml")
    assert git_state(workspace).dirty_files == ["params.yaml"]


def test_git_state_deleted_file(workspace):
    (workspace / "pipeline/train.py").unlink()
    assert git_state(workspace).dirty_files == ["pipeline/train.py"]


def test_git_state_ignores_dvc_outputs(workspace):
    (workspace / "dvc.lock").write_text(DVC_LOCK.replace("0123", "3210"))
    (workspace / "metrics/clip.json").write_text('{"final_loss": 0.2}\n')
    assert git_state(workspace).dirty_files == []


def test_git_state_ignores_untracked(workspace):
    (workspace / "notes.txt").write_text("scratch\n")
    assert git_state(workspace).dirty_files == []


def test_git_state_in_subfolder(workspace):
    # A DVC project in a subfolder of the git repository records its outputs relative to that folder.
    project = workspace / "project"
    (project / "metrics").mkdir(parents=True)
    (project / "dvc.lock").write_text(DVC_LOCK)
    (project / "metrics/clip.json").write_text('{"final_loss": 0.1}\n')
    _git(workspace, "add", "-A")
    _git(workspace, "commit", "-q", "-m", "project")
    (project / "metrics/clip.json").write_text('{"final_loss": 0.3}\n')
    (workspace / "metrics/clip.json").write_text('{"final_loss": 0.3}\n')

    # The top-level metrics file is no output of the subfolder's project.
    assert git_state(project).dirty_files == ["metrics/clip.json"]


def test_git_tags_dirty(workspace):
    (workspace / "params.yaml").write_text("arms: {}\n")
    (workspace / "pipeline/train.py").write_text("print('changed')\n")
    tags = git_tags(workspace)
    assert tags["mlflow.source.git.commit"] == _git(workspace, "rev-parse", "HEAD")
    assert tags["git.dirty"] == "true"
    assert tags["git.dirty_files"] == "params.yaml,pipeline/train.py"


def test_git_tags_clean(workspace):
    tags = git_tags(workspace)
    assert tags["git.dirty"] == "false"
    assert "git.dirty_files" not in tags


def test_git_tags_without_git(workspace, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(workspace / "no-such-bin"))
    with caplog.at_level(logging.WARNING, logger="pipeline.lineage"):
        assert git_tags(workspace) == {}
    assert "git is not installed" in caplog.text


def test_git_tags_outside_repository(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    with caplog.at_level(logging.WARNING, logger="pipeline.lineage"):
        assert git_tags(tmp_path) == {}
    assert "not a git repository" in caplog.text


def test_git_tags_before_first_commit(tmp_path, caplog):
    _git(tmp_path, "init", "-q")
    with caplog.at_level(logging.WARNING, logger="pipeline.lineage"):
        assert git_tags(tmp_path) == {}
    assert "git commit not recorded" in caplog.text


def test_parse_yaml_reads_exponent_floats():
    # `dvc exp run -S train.lr=1e-06` writes the value back in this form.
    assert parse_yaml("train:\n  lr: 1e-06\n") == {"train": {"lr": 1e-06}}


COMMITTED = {
    "dataset": {"vocab": ["A", "B", "C", "D"], "seed": 42},
    "train": {"lr": 0.1},
    "arms": {"no_clip": {"max_norm": None}, "clip": {"max_norm": 1.0}},
    "tracking": {"experiment_name": "gradient-clipping"},
}


@pytest.mark.parametrize(
    ("run_params", "expected"),
    [
        (COMMITTED, []),
        ({**COMMITTED, "train": {"lr": 1e-06}}, ["train.lr=1e-06"]),
        (
            {**COMMITTED, "arms": {"no_clip": {"max_norm": 0.5}, "clip": {"max_norm": None}}},
            ["arms.no_clip.max_norm=0.5", "arms.clip.max_norm=null"],
        ),
        (
            {**COMMITTED, "arms": {**COMMITTED["arms"], "clip_tight": {"max_norm": 0.25}}},
            ["+arms.clip_tight={max_norm:0.25}"],
        ),
        ({**COMMITTED, "arms": {"clip": {"max_norm": 1.0}}}, ["~arms.no_clip"]),
        ({**COMMITTED, "dataset": {"vocab": ["x", "y"], "seed": 7}}, ["dataset.vocab=[x,y]", "dataset.seed=7"]),
        ({**COMMITTED, "tracking": {"experiment_name": "clip sweep"}}, ["tracking.experiment_name='clip sweep'"]),
        ({**COMMITTED, "tracking": {"experiment_name": "null"}}, ["tracking.experiment_name='null'"]),
    ],
    ids=["unchanged", "exponent", "null", "added", "removed", "list", "space", "keyword"],
)
def test_params_overrides(run_params, expected):
    assert params_overrides(COMMITTED, run_params) == expected


@pytest.mark.parametrize(
    "run_params",
    [
        {**COMMITTED, "train": {"lr": 1e-06}, "tracking": {"experiment_name": "it's a sweep"}},
        {**COMMITTED, "arms": {"clip": {"max_norm": 0.5}, "clip_tight": {"max_norm": 0.25}}},
        {**COMMITTED, "dataset": {"vocab": ["A", "B", "null", "1"], "seed": 0}},
    ],
    ids=["values", "arms", "tokens"],
)
def test_params_overrides_applied_by_dvc(tmp_path, run_params):
    # DVC's own -S parser must turn the committed params into the run's.
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(COMMITTED, sort_keys=False))
    apply_overrides(path, params_overrides(COMMITTED, run_params))
    assert parse_yaml(path.read_text()) == run_params
