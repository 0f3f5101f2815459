"""A whole `dvc repro`: outputs on disk, one MLflow run per arm, and a clean repository after it."""

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import make_repo_copy
from pipeline.steps import SERIES, read_steps

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).parent / "fixtures" / "seed_default_series.json"
EXPERIMENT = "gradient-clipping"
ARMS = {"no_clip": None, "clip": 1.0}
SUMMARY_KEYS = (
    "steps", "max_grad_norm", "mean_grad_norm", "std_grad_norm", "final_weight_norm", "final_loss", "clipped_fraction",
)


def runs_by_arm(repo) -> dict:
    client = repo.mlflow_client()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    by_arm = {run.data.tags["arm"]: run for run in runs}
    assert len(by_arm) == len(runs), "more than one run for an arm"
    return by_arm


def metric_history(repo, run_id: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    history = sorted(repo.mlflow_client().get_metric_history(run_id, key), key=lambda metric: metric.step)
    return np.array([metric.step for metric in history]), np.array([metric.value for metric in history])


def png_width(path: Path) -> int:
    # The IHDR chunk follows the 8-byte signature, and its first big-endian uint32 is the width.
    return struct.unpack(">I", path.read_bytes()[16:20])[0]


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_outputs_exist(reproduced_template):
    root = reproduced_template.path
    assert (root / "data" / "dataset.npz").is_file()
    for arm in ARMS:
        assert (root / "outputs" / "steps" / f"{arm}.csv").is_file()
        assert (root / "metrics" / f"{arm}.json").is_file()
        assert (root / "outputs" / "plots" / f"{arm}.png").is_file()
    assert (root / "outputs" / "plots" / "comparison.png").is_file()


def test_one_finished_run_per_arm(reproduced_template):
    runs = runs_by_arm(reproduced_template)
    assert sorted(runs) == sorted(ARMS)
    for arm, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.info.run_name == arm


@pytest.mark.parametrize("arm", ARMS)
def test_run_logs_effective_params(reproduced_template, arm):
    params = runs_by_arm(reproduced_template)[arm].data.params
    assert params["arm.name"] == arm
    assert params["arm.max_norm"] == str(ARMS[arm])
    assert params["dataset.seed"] == "42"
    assert params["dataset.n_samples"] == "200"
    assert params["dataset.n_rare"] == "4"
    assert params["dataset.vocab"] == "A,B,C,D"
    assert params["model.init_seed"] == "42"
    assert params["model.embedding_dim"] == "16"
    assert params["train.lr"] == "0.1"
    assert params["train.epochs"] == "2"
    assert params["tracking.experiment_name"] == EXPERIMENT
    assert params["tracking.log_every_n_steps"] == "1"


@pytest.mark.parametrize("arm", ARMS)
def test_run_histories_equal_step_file(reproduced_template, arm):
    run = runs_by_arm(reproduced_template)[arm]
    series = read_steps(reproduced_template.path / "outputs" / "steps" / f"{arm}.csv", expected_steps=400)
    for key in SERIES:
        steps, values = metric_history(reproduced_template, run.info.run_id, key)
        assert np.array_equal(steps, np.arange(400)), key
        # Both hold the same float32 value: MLflow exactly, the CSV to 9 digits.
        assert np.array_equal(values.astype(np.float32), getattr(series, key).astype(np.float32)), key


@pytest.mark.parametrize("arm", ARMS)
def test_run_summary_equals_metrics_file(reproduced_template, arm):
    run = runs_by_arm(reproduced_template)[arm]
    summary = json.loads((reproduced_template.path / "metrics" / f"{arm}.json").read_text())
    for key in SUMMARY_KEYS:
        assert run.data.metrics[key] == summary[key], key

    for key, field in (("epoch_mean_loss", "mean_loss"), ("epoch_max_grad_norm", "max_grad_norm")):
        steps, values = metric_history(reproduced_template, run.info.run_id, key)
        assert steps.tolist() == [1, 2]
        assert values.tolist() == [summary["epochs"][f"epoch_{number}"][field] for number in (1, 2)]


@pytest.mark.parametrize("arm", ARMS)
def test_run_has_figures(reproduced_template, arm, tmp_path):
    client = reproduced_template.mlflow_client()
    run_id = runs_by_arm(reproduced_template)[arm].info.run_id
    artifacts = sorted(artifact.path for artifact in client.list_artifacts(run_id, "plots"))
    assert artifacts == sorted([f"plots/{arm}.png", "plots/comparison.png"])

    for name in (f"{arm}.png", "comparison.png"):
        attached = Path(client.download_artifacts(run_id, f"plots/{name}", str(tmp_path)))
        assert md5_of(attached) == md5_of(reproduced_template.path / "outputs" / "plots" / name), name


def test_second_repro_leaves_repository_clean(reproduced_repo):
    result = reproduced_repo.repro()
    assert result.ran == []
    assert "Data and pipelines are up to date" in reproduced_repo.run("dvc", "status").stdout
    assert reproduced_repo.run("git", "status", "--porcelain").stdout == ""


def test_dvc_plots_show_renders_steps(reproduced_repo, tmp_path):
    report = json.loads(reproduced_repo.run("dvc", "plots", "show", "--json").stdout)
    assert "errors" not in report
    assert sorted(report["data"]) == sorted(f"outputs/steps/{arm}.csv" for arm in ARMS)

    out = tmp_path / "html"
    result = reproduced_repo.run("dvc", "plots", "show", "-o", str(out))
    assert "failed" not in result.stdout + result.stderr
    page = (out / "index.html").read_text()
    for arm in ARMS:
        assert f"outputs/steps/{arm}.csv" in page


def test_third_arm_adds_stage_run_and_column(third_arm_repo, reproduced_template):
    repo, result = third_arm_repo
    assert result.ran == ["train@clip_tight", "plots"]
    stages = repo.run("dvc", "stage", "list", "--name-only").stdout.split()
    assert stages == ["dataset", "train@no_clip", "train@clip", "train@clip_tight", "plots"]

    # The copy's store holds only the runs made after the copy: the new arm's.
    runs = runs_by_arm(repo)
    assert sorted(runs) == ["clip_tight"]
    assert runs["clip_tight"].info.status == "FINISHED"
    assert runs["clip_tight"].data.params["arm.max_norm"] == "0.25"
    artifacts = [artifact.path for artifact in repo.mlflow_client().list_artifacts(runs["clip_tight"].info.run_id, "plots")]
    assert sorted(artifacts) == ["plots/clip_tight.png", "plots/comparison.png"]

    plots = repo.path / "outputs" / "plots"
    assert sorted(path.name for path in plots.iterdir()) == ["clip.png", "clip_tight.png", "comparison.png", "no_clip.png"]
    two_columns = png_width(reproduced_template.path / "outputs" / "plots" / "comparison.png")
    assert png_width(plots / "comparison.png") > two_columns


@pytest.fixture(scope="module")
def default_repo(tmp_path_factory):
    """A copy with the default params, committed, after one `dvc repro`."""
    repo = make_repo_copy(tmp_path_factory.mktemp("default") / "repo", overrides={})
    return repo, repo.repro()


def test_default_repro_runs_every_stage(default_repo):
    _, result = default_repo
    assert result.ran == ["dataset", "train@no_clip", "train@clip", "plots"]


def test_default_repro_leaves_git_clean(default_repo):
    # The committed dvc.lock and metrics are those that the default params produce.
    repo, _ = default_repo
    assert repo.run("git", "status", "--porcelain").stdout == ""
    assert "Data and pipelines are up to date" in repo.run("dvc", "status").stdout


@pytest.mark.parametrize("arm", ARMS)
def test_default_histories_match_reference(default_repo, arm):
    repo, _ = default_repo
    reference = json.loads(FIXTURE.read_text())[arm]
    run = runs_by_arm(repo)[arm]
    assert run.info.status == "FINISHED"
    for key in SERIES:
        steps, values = metric_history(repo, run.info.run_id, key)
        assert np.array_equal(steps, np.arange(3000)), key
        np.testing.assert_allclose(values, reference[key], rtol=1e-6, atol=0, err_msg=key)
