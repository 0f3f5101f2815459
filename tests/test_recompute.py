"""`dvc repro` re-runs exactly the stages whose declared code or params changed.

Each case starts from an up-to-date small copy of the repository (see
conftest.SMALL_PARAMS: n_samples 200, n_rare 4, epochs 2, dpi 40), makes one
change and checks which stages ran. A stage that re-runs with byte-identical
outputs lets DVC skip the stages that depend on it.

A real `dvc repro` costs seconds per stage, so it runs for one key of each
params group. The other keys of a group are checked with `dvc status`, which
shows that the same stages see the change.
"""

import hashlib
import json

import pytest

pytestmark = pytest.mark.slow

TRAIN_ALL = ["train@no_clip", "train@clip"]

# Halves every SGD step: train() looks the step function up at call time, so
# a definition appended to the module replaces the original one.
HALVED_STEP = '''

_full_sgd_step = _sgd_step


def _sgd_step(model, parameters, sample, label, lr, max_norm):
    return _full_sgd_step(model, parameters, sample, label, lr / 2, max_norm)
'''


def append_to(repo, relative_path: str, text: str) -> None:
    path = repo.path / relative_path
    path.write_text(path.read_text() + text)


def set_param(dotted_key: str, value):
    return lambda repo: repo.set_param(dotted_key, value)


def outputs_md5(repo, folder: str) -> dict[str, str]:
    return {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in sorted((repo.path / folder).iterdir())}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(set_param("arms.clip.max_norm", 0.5), ["train@clip", "plots"], id="one-arm-max-norm"),
        pytest.param(set_param("train.lr", 0.05), [*TRAIN_ALL, "plots"], id="train-lr"),
        pytest.param(set_param("dataset.seed", 7), ["dataset", *TRAIN_ALL, "plots"], id="dataset-seed"),
        pytest.param(set_param("plots.dpi", 41), ["plots"], id="plot-only-param"),
        pytest.param(
            lambda repo: append_to(repo, "pipeline/figures.py", '\nRARE_COLOR = "tab:orange"\n'),
            ["plots"],
            id="plotting-code",
        ),
        pytest.param(
            lambda repo: append_to(repo, "pipeline/training.py", HALVED_STEP),
            [*TRAIN_ALL, "plots"],
            id="training-code-new-values",
        ),
    ],
)
def test_repro_runs_changed_stages(reproduced_repo, change, expected):
    change(reproduced_repo)
    result = reproduced_repo.repro()
    assert result.ran == expected
    assert result.restored == []


@pytest.mark.parametrize(
    ("dotted_key", "value", "expected"),
    [
        pytest.param("train.epochs", 3, set(TRAIN_ALL), id="train-epochs"),
        pytest.param("dataset.n_samples", 150, {"dataset"}, id="dataset-n-samples"),
        pytest.param("dataset.n_rare", 3, {"dataset"}, id="dataset-n-rare"),
        pytest.param("plots.mark_rare_steps", False, {"plots"}, id="plots-mark-rare-steps"),
    ],
)
def test_status_sees_changed_key(reproduced_repo, dotted_key, value, expected):
    # `dvc status` lists only the stages whose own deps changed. `dvc repro` runs
    # those and, as the real runs above show, every stage whose input they change.
    reproduced_repo.set_param(dotted_key, value)
    status = json.loads(reproduced_repo.run("dvc", "status", "--json").stdout)
    assert set(status) == expected


def test_repro_without_change_runs_nothing(reproduced_repo):
    result = reproduced_repo.repro()
    assert result.ran == []
    assert result.restored == []
    assert "Data and pipelines are up to date" in result.output


def test_comment_edit_skips_plots(reproduced_repo):
    # The training code changes but computes the same values, so the train
    # stages re-run, write byte-identical outputs, and the plots stay valid.
    steps_before = outputs_md5(reproduced_repo, "outputs/steps")
    metrics_before = outputs_md5(reproduced_repo, "metrics")
    append_to(reproduced_repo, "pipeline/training.py", "\n# A comment changes no computed value.\n")

    result = reproduced_repo.repro()

    assert result.ran == TRAIN_ALL
    assert outputs_md5(reproduced_repo, "outputs/steps") == steps_before
    assert outputs_md5(reproduced_repo, "metrics") == metrics_before
    status = reproduced_repo.run("dvc", "status").stdout
    assert "Data and pipelines are up to date" in status


def test_new_arm_runs_only_its_stage(third_arm_repo):
    _, result = third_arm_repo
    assert result.ran == ["train@clip_tight", "plots"]
    assert result.restored == []
