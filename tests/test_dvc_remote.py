"""A second clone gets every output from a DVC remote and has nothing left to compute."""

import subprocess

import pytest

from conftest import RepoCopy, isolated_env

pytestmark = pytest.mark.slow


def _output_files(repo: RepoCopy) -> dict[str, bytes]:
    """Return the bytes of every file under the DVC output folders, by path."""
    return {
        path.relative_to(repo.path).as_posix(): path.read_bytes()
        for folder in ("data", "outputs")
        for path in sorted((repo.path / folder).rglob("*"))
        if path.is_file()
    }


def test_clone_pulls_without_recomputing(reproduced_repo, tmp_path):
    repo = reproduced_repo
    repo.run("dvc", "remote", "add", "--default", "storage", str(tmp_path / "remote"))
    repo.commit("Add a local DVC remote")
    repo.run("dvc", "push")

    clone = RepoCopy(tmp_path / "clone")
    subprocess.run(["git", "clone", "-q", str(repo.path), str(clone.path)], env=isolated_env(), check=True)
    clone.run("dvc", "pull")
    status = clone.run("dvc", "status").stdout
    result = clone.repro()

    assert _output_files(clone) == _output_files(repo)
    assert "Data and pipelines are up to date." in status
    assert result.ran == []
    assert result.restored == []
    assert "Data and pipelines are up to date." in result.output
    assert not (clone.path / "mlflow.db").exists()
