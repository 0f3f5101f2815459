"""Removing an arm from params.yaml removes what DVC keeps of it: its dvc.lock entry and outputs."""

import shutil
import textwrap

import pytest
from conftest import PROJECT_ROOT, copy_reproduced

from pipeline.stale_arms import remove_stale_arms

LOCK = textwrap.dedent("""\
    schema: '2.0'
    stages:
      train@clip:
        cmd: exec python -m pipeline.train
        outs:
        - path: outputs/steps/clip.csv
          md5: 1
      train@gone:
        cmd: exec python -m pipeline.train
        outs:
        - path: outputs/steps/gone.csv
          md5: 2
        - path: metrics/gone.json
          md5: 3
        - path: ../outside.txt
          md5: 4
    """)


@pytest.fixture
def workspace(tmp_path):
    root = tmp_path / "repo"
    (root / "outputs/steps").mkdir(parents=True)
    (root / "metrics").mkdir()
    shutil.copy(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    (root / "dvc.lock").write_text(LOCK)
    for name in ("outputs/steps/clip.csv", "outputs/steps/gone.csv", "metrics/gone.json"):
        (root / name).write_text("data\n")
    (root / "outputs/steps/.gitignore").write_text("/clip.csv\n/gone.csv\n")
    (tmp_path / "outside.txt").write_text("not ours\n")
    return root


def test_stale_arm_removed(workspace):
    assert remove_stale_arms(workspace, workspace / "params.yaml") == ["gone"]

    assert "train@gone" not in (workspace / "dvc.lock").read_text()
    assert not (workspace / "outputs/steps/gone.csv").exists()
    assert not (workspace / "metrics/gone.json").exists()
    assert (workspace / "outputs/steps/.gitignore").read_text() == "/clip.csv\n"


def test_other_entries_kept_verbatim(workspace):
    remove_stale_arms(workspace, workspace / "params.yaml")

    assert (workspace / "dvc.lock").read_text() == LOCK[: LOCK.index("  train@gone:")]
    assert (workspace / "outputs/steps/clip.csv").exists()


def test_output_outside_root_kept(workspace):
    # Only a hand-edited dvc.lock can list it; deleting it is never ours to do.
    remove_stale_arms(workspace, workspace / "params.yaml")

    assert (workspace.parent / "outside.txt").read_text() == "not ours\n"


def test_nothing_stale_leaves_lock_alone(workspace):
    lock = LOCK[: LOCK.index("  train@gone:")]
    (workspace / "dvc.lock").write_text(lock.replace("'2.0'", "\"2.0\""))

    assert remove_stale_arms(workspace, workspace / "params.yaml") == []
    assert (workspace / "dvc.lock").read_text() == lock.replace("'2.0'", "\"2.0\"")


@pytest.mark.slow
def test_removed_arm_restores_clean_workspace(third_arm_repo, tmp_path):
    # The copy's git HEAD is the two-arm repository that the third arm was added to.
    repo = copy_reproduced(third_arm_repo[0], tmp_path / "repo")
    params = repo.params()
    del params["arms"]["clip_tight"]
    repo.write_params(params)

    repo.run("python", "-m", "pipeline.stale_arms")
    repo.repro()

    assert repo.run("git", "status", "--porcelain").stdout == ""
    assert not (repo.path / "outputs/steps/clip_tight.csv").exists()
    assert "Data and pipelines are up to date" in repo.run("dvc", "status").stdout
