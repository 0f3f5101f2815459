"""Auditing a committed max_norm change: the run's lineage, git and DVC diffs, and `pipeline.runs`."""

import hashlib
import json
import re
import shutil
from dataclasses import dataclass

import pytest
import yaml

from conftest import RepoCopy, copy_reproduced
from pipeline import runs
from pipeline.errors import TrackingError
from pipeline.lineage import params_hash

pytestmark = pytest.mark.slow


@dataclass
class Audit:
    repo: RepoCopy
    before: str  # commit with max_norm 1.0, the default
    after: str  # commit with max_norm 0.5, its dvc.lock and metrics
    ran: list[str]


@pytest.fixture(scope="module")
def audit(reproduced_template, tmp_path_factory) -> Audit:
    """Change max_norm, reproduce, then commit, as the README walks through it."""
    repo = copy_reproduced(reproduced_template, tmp_path_factory.mktemp("audit") / "repo")
    before = repo.run("git", "rev-parse", "HEAD").stdout.strip()
    repo.set_param("arms.clip.max_norm", 0.5)
    ran = repo.repro().ran
    repo.commit("Clip gradients at 0.5")
    after = repo.run("git", "rev-parse", "HEAD").stdout.strip()
    return Audit(repo, before, after, ran)


@pytest.fixture(scope="module")
def clip_run(audit):
    runs = audit.repo.mlflow_client().search_runs(["1"])
    assert [run.info.run_name for run in runs] == ["clip"]
    return runs[0]


def _dataset_md5_in_lock(repo: RepoCopy) -> str:
    lock = yaml.safe_load((repo.path / "dvc.lock").read_text())
    [out] = lock["stages"]["dataset"]["outs"]
    return out["md5"]


def test_change_reruns_clip_only(audit):
    assert audit.ran == ["train@clip", "plots"]


def test_run_records_commit_and_dirty(audit, clip_run):
    tags = clip_run.data.tags
    # The run came before the commit, from the previous commit plus the edited params.yaml.
    assert tags["mlflow.source.git.commit"] == audit.before
    assert tags["git.dirty"] == "true"
    assert tags["git.dirty_files"] == "params.yaml"


def test_run_records_dvc_stage(clip_run):
    tags = clip_run.data.tags
    assert tags["mlflow.source.name"] == "pipeline/train.py"
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["dvc.stage"] == "train@clip"
    assert "dvc.exp_name" not in tags
    assert "dvc.baseline_rev" not in tags


def test_run_records_dataset_md5(audit, clip_run):
    expected = hashlib.md5((audit.repo.path / "data/dataset.npz").read_bytes()).hexdigest()
    assert _dataset_md5_in_lock(audit.repo) == expected
    assert clip_run.data.tags["dataset.md5"] == expected


def test_run_records_params_hash(clip_run):
    assert clip_run.data.params["arm.max_norm"] == "0.5"
    assert clip_run.data.tags["params.hash"] == params_hash(clip_run.data.params)


def test_run_records_versions(clip_run):
    tags = clip_run.data.tags
    assert tags["version.torch"].startswith("2.13.0")
    assert tags["version.mlflow"] == "3.17.2"
    assert tags["version.dvc"] == "3.67.1"
    assert re.fullmatch(r"3\.11\.\d+", tags["version.python"])


def test_run_dataset_input(audit, clip_run):
    [dataset_input] = clip_run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert dataset.digest == _dataset_md5_in_lock(audit.repo)
    assert dataset.name == "dataset"
    assert json.loads(dataset.source) == {"uri": "data/dataset.npz"}
    assert [(tag.key, tag.value) for tag in dataset_input.tags] == [("mlflow.data.context", "training")]


def test_run_params_artifact(audit, clip_run, tmp_path):
    client = audit.repo.mlflow_client()
    downloaded = client.download_artifacts(clip_run.info.run_id, "params.yaml", str(tmp_path))
    committed = audit.repo.run("git", "show", f"{audit.after}:params.yaml").stdout
    assert open(downloaded).read() == committed


def _markdown_rows(output: str) -> list[list[str]]:
    rows = [line.strip().strip("|").split("|") for line in output.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row] for row in rows[2:]]  # skip the header and its rule


def test_params_diff(audit):
    output = audit.repo.run("dvc", "params", "diff", audit.before, audit.after, "--md").stdout
    assert _markdown_rows(output) == [["params.yaml", "arms.clip.max_norm", "1.0", "0.5"]]


def test_metrics_diff(audit):
    output = audit.repo.run("dvc", "metrics", "diff", audit.before, audit.after, "--md", "--precision", "8").stdout
    rows = {(path, metric): (old, new) for path, metric, old, new, _change in _markdown_rows(output)}
    old = json.loads(audit.repo.run("git", "show", f"{audit.before}:metrics/clip.json").stdout)
    new = json.loads((audit.repo.path / "metrics/clip.json").read_text())

    # Only the clipped arm changed; the summary's headline values appear with both revisions.
    assert {path for path, _metric in rows} == {"metrics/clip.json"}
    for key in ("mean_grad_norm", "std_grad_norm", "final_weight_norm", "clipped_fraction"):
        before, after = rows[("metrics/clip.json", key)]
        assert float(before) == pytest.approx(old[key], abs=1e-8)
        assert float(after) == pytest.approx(new[key], abs=1e-8)


def test_plots_diff_renders_both_revisions(audit, tmp_path):
    result = audit.repo.run("dvc", "plots", "diff", audit.before, audit.after, "-o", str(tmp_path / "plots"))
    page = (tmp_path / "plots/index.html").read_text()
    steps = sum(1 for _ in (audit.repo.path / "outputs/steps/clip.csv").open()) - 1

    assert "failed to load" not in result.stdout + result.stderr
    for arm in ("no_clip", "clip"):
        assert f'"text": "outputs/steps/{arm}.csv"' in page
    # One value per step, series, arm and revision.
    for revision in (audit.before, audit.after):
        assert page.count(f'"rev": "{revision}"') == steps * 3 * 2


def _run_in_repo(repo: RepoCopy, monkeypatch, capsys, *argv: str) -> str:
    """Call `python -m pipeline.runs` in this process, which saves the imports of a new one."""
    monkeypatch.chdir(repo.path)
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    runs.main(list(argv))
    return capsys.readouterr().out


def test_runs_lists_matching_run(audit, clip_run, monkeypatch, capsys):
    output = _run_in_repo(audit.repo, monkeypatch, capsys)
    assert re.search(rf"^{clip_run.info.run_id}\s+clip\s+FINISHED\s", output, re.MULTILINE)


def test_runs_skips_other_params(audit, tmp_path, monkeypatch, capsys):
    old_params = tmp_path / "params.yaml"
    old_params.write_text(audit.repo.run("git", "show", f"{audit.before}:params.yaml").stdout)
    output = _run_in_repo(audit.repo, monkeypatch, capsys, "--params", str(old_params))
    assert "no run in experiment 'gradient-clipping' matches this workspace" in output


def test_runs_shows_reproduction(audit, clip_run, monkeypatch, capsys):
    output = _run_in_repo(audit.repo, monkeypatch, capsys, clip_run.info.run_id)
    assert "git dirty:    true (params.yaml)" in output
    assert output.splitlines()[-2:] == [
        f"  git checkout {audit.before}",
        "  dvc exp run -S arms.clip.max_norm=0.5",
    ]


def test_runs_reproduction_matches_run(audit, tmp_path):
    # Follow the printed steps in a copy: DVC finds the stage in its run cache,
    # which it only does for identical code, params and data.
    repo = copy_reproduced(audit.repo, tmp_path / "repo")
    repo.run("git", "checkout", "-q", audit.before)
    result = repo.run("dvc", "exp", "run", "-S", "arms.clip.max_norm=0.5")
    output = result.stdout + result.stderr
    assert "Stage 'train@clip' is cached - skipping run" in output
    assert (repo.path / "metrics/clip.json").read_bytes() == (audit.repo.path / "metrics/clip.json").read_bytes()
    shutil.rmtree(repo.path)


def test_runs_unknown_run_id(audit, monkeypatch, capsys):
    run_id = "0123456789abcdef0123456789abcdef"
    expected = f"run '{run_id}' not found in sqlite:///{audit.repo.path}/mlflow.db"
    with pytest.raises(TrackingError, match=re.escape(expected)):
        _run_in_repo(audit.repo, monkeypatch, capsys, run_id)
