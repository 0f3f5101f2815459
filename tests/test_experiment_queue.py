"""Queued DVC experiments, run by two workers, log every run to the repository's own store."""

import json
import re
import time

import pytest
import yaml

from conftest import RepoCopy, copy_reproduced
from pipeline.lineage import params_hash
from pipeline.params import parse_yaml

pytestmark = pytest.mark.slow

# One experiment per worker, so both start on a store that does not exist yet.
# DVC writes 1e-06 back in that form, which PyYAML alone reads as a string.
OVERRIDES = ["arms.clip.max_norm=0.5", "arms.clip.max_norm=1e-06"]
QUEUE_TIMEOUT_SECONDS = 600


def _wait_for_queue(repo: RepoCopy) -> str:
    deadline = time.monotonic() + QUEUE_TIMEOUT_SECONDS
    while True:
        status = repo.run("dvc", "queue", "status").stdout
        if not any(word in status for word in ("Queued", "Running")):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"queued experiments still running after {QUEUE_TIMEOUT_SECONDS} s:\n{status}")
        time.sleep(2)


def _experiment_params(repo: RepoCopy) -> dict[str, dict]:
    """Return the params.yaml contents of each experiment, by name, as `dvc exp show` reports them."""
    commits = json.loads(repo.run("dvc", "exp", "show", "--json").stdout)
    params = {}
    for commit in commits:
        for experiment in commit.get("experiments") or []:
            for revision in experiment["revs"]:
                params[revision["name"]] = revision["data"]["params"]["params.yaml"]["data"]
    return params


@pytest.fixture(scope="module")
def queued(reproduced_template, tmp_path_factory) -> RepoCopy:
    """The small repository after two queued experiments ran on two workers."""
    repo = copy_reproduced(reproduced_template, tmp_path_factory.mktemp("queue") / "repo")
    for override in OVERRIDES:
        # Only the train stage: the plots stage would add time and nothing to check.
        repo.run("dvc", "exp", "run", "--queue", "-S", override, "train@clip")
    try:
        repo.run("dvc", "queue", "start", "-j", "2")
        status = _wait_for_queue(repo)
    finally:
        repo.run("dvc", "queue", "stop", check=False)
    assert status.count("Success") == len(OVERRIDES), status
    return repo


def test_queued_experiments_share_store(queued):
    repo = queued
    baseline = repo.run("git", "rev-parse", "HEAD").stdout.strip()
    lock = yaml.safe_load((repo.path / "dvc.lock").read_text())
    dataset_md5 = lock["stages"]["dataset"]["outs"][0]["md5"]
    experiments = _experiment_params(repo)
    client = repo.mlflow_client()
    runs = client.search_runs([client.get_experiment_by_name("gradient-clipping").experiment_id])

    assert len(experiments) == len(OVERRIDES)
    assert sorted(run.data.tags["dvc.exp_name"] for run in runs) == sorted(experiments)
    for run in runs:
        tags, name = run.data.tags, run.data.tags["dvc.exp_name"]
        params = experiments[name]
        assert run.info.status == "FINISHED"
        assert tags["arm"] == "clip"
        assert run.info.run_name == f"clip ({name})"
        assert tags["dvc.baseline_rev"] == baseline
        assert tags["mlflow.source.git.commit"] == baseline
        assert tags["git.dirty"] == "true"
        assert tags["git.dirty_files"] == "params.yaml"
        assert tags["dataset.md5"] == dataset_md5
        assert tags["params.hash"] == params_hash(run.data.params)
        assert run.data.params["arm.max_norm"] == str(params["arms"]["clip"]["max_norm"])

    # Nothing went to a store inside DVC's temporary copies.
    assert sorted(repo.path.rglob("mlflow.db")) == [repo.path / "mlflow.db"]
    assert not list(repo.path.rglob("mlruns"))


def test_exponent_value_loads_as_number(queued, tmp_path):
    client = queued.mlflow_client()
    [run] = client.search_runs(["1"], filter_string="params.`arm.max_norm` = '1e-06'")
    path = client.download_artifacts(run.info.run_id, "params.yaml", str(tmp_path))
    text = open(path).read()

    assert re.search(r"^    max_norm: 1e-06$", text, re.MULTILINE), text
    assert parse_yaml(text)["arms"]["clip"]["max_norm"] == 1e-06
