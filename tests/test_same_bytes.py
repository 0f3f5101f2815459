"""Same params and code, same bytes: every DVC output, figures included, reproduces exactly."""

import pytest
from repo_state import file_digests

OUTPUT_FOLDERS = ("data/", "outputs/", "metrics/")


def outputs(repo) -> dict[str, str]:
    """Return the MD5 of every pipeline output, DVC's .gitignore files aside."""
    return {
        name: digest
        for name, digest in file_digests(repo.path).items()
        if name.startswith(OUTPUT_FOLDERS) and not name.endswith(".gitignore")
    }


@pytest.mark.slow
def test_forced_repro_same_lock(reproduced_repo, reproduced_template):
    result = reproduced_repo.repro("-f")

    assert result.ran == ["dataset", "train@no_clip", "train@clip", "plots"]
    assert outputs(reproduced_repo) == outputs(reproduced_template)
    assert (reproduced_repo.path / "dvc.lock").read_text() == (reproduced_template.path / "dvc.lock").read_text()


@pytest.mark.slow
def test_cold_copies_same_lock(fresh_repo, reproduced_template):
    # The template is itself a fresh copy reproduced cold, in another folder.
    result = fresh_repo.repro()

    assert result.ran == ["dataset", "train@no_clip", "train@clip", "plots"]
    assert outputs(fresh_repo) == outputs(reproduced_template)
    assert (fresh_repo.path / "dvc.lock").read_text() == (reproduced_template.path / "dvc.lock").read_text()


@pytest.mark.slow
def test_max_norm_round_trip_restores(reproduced_repo):
    repo = reproduced_repo
    lock_before = (repo.path / "dvc.lock").read_text()
    outputs_before = outputs(repo)

    repo.set_param("arms.clip.max_norm", 0.5)
    changed = repo.repro()
    outputs_changed = outputs(repo)
    repo.set_param("arms.clip.max_norm", 1.0)
    restored = repo.repro()

    assert changed.ran == ["train@clip", "plots"]
    assert outputs_changed["outputs/steps/clip.csv"] != outputs_before["outputs/steps/clip.csv"]
    assert outputs_changed["outputs/steps/no_clip.csv"] == outputs_before["outputs/steps/no_clip.csv"]
    assert restored.ran == []
    assert restored.restored == ["train@clip", "plots"]
    assert outputs(repo) == outputs_before
    assert (repo.path / "dvc.lock").read_text() == lock_before
