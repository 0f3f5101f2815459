"""List the MLflow runs that match this workspace, or print how to reproduce one run.

    python -m pipeline.runs           runs whose params hash and dataset MD5 match the workspace
    python -m pipeline.runs RUN_ID    the git commit and params that reproduce run RUN_ID

Run it from the repository root. It reads the store the pipeline writes to
(MLFLOW_TRACKING_URI, else mlflow.db at the repository root) and changes nothing.
"""

import argparse
import logging
import os
import re
import shlex
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path

import mlflow
import yaml
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

from pipeline.cli import run_stage
from pipeline.dataset import load_dataset
from pipeline.errors import TrackingError
from pipeline.lineage import DVC_LOCK, PARAMS_ARTIFACT, file_md5, params_hash
from pipeline.params import Params, load_params, parse_yaml
from pipeline.tracking import check_reachable, redact, repository_root, tracking_uri
from pipeline.train import effective_params

log = logging.getLogger(__name__)

# A string that the override grammar of `dvc exp run -S` reads as itself without quotes.
_PLAIN_STRING = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
_YAML_KEYWORDS = {"null", "true", "false", "yes", "no", "on", "off", "nan", "inf"}


def list_matching_runs(client: mlflow.MlflowClient, params: Params, dataset_path: Path) -> str:
    """Return a table of the runs whose params hash and dataset MD5 equal the workspace's."""
    dataset = load_dataset(dataset_path)
    dataset_md5 = file_md5(dataset_path)
    hashes = {arm: params_hash(effective_params(params, arm, dataset)) for arm in params.arms}

    lines = [f"workspace: {dataset_path} md5 {dataset_md5}"]
    recorded_md5 = _dvc_lock_md5(dataset_path)
    if recorded_md5 is not None and recorded_md5 != dataset_md5:
        lines.append(
            f"warning: {dataset_path} is not the version dvc.lock records (md5 {recorded_md5}); "
            "run `dvc checkout` or `dvc repro` first"
        )
    lines.extend(f"  params.hash of arm {arm}: {value}" for arm, value in hashes.items())

    experiment_name = params.tracking.experiment_name
    experiment = client.get_experiment_by_name(experiment_name)
    runs = []
    if experiment is not None:
        for value in hashes.values():
            runs.extend(client.search_runs(
                [experiment.experiment_id],
                filter_string=f"tags.`params.hash` = '{value}' and tags.`dataset.md5` = '{dataset_md5}'",
                order_by=["attributes.start_time DESC"],
            ))
    if not runs:
        lines.append(f"no run in experiment {experiment_name!r} matches this workspace")
        return "\n".join(lines)

    runs.sort(key=lambda run: run.info.start_time, reverse=True)
    lines.append("")
    lines.append(f"{'run id':32}  {'run name':28}  {'status':8}  {'started':16}  {'commit':8}  dirty")
    for run in runs:
        tags = run.data.tags
        started = datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
        commit = tags.get(MLFLOW_GIT_COMMIT, "-")[:8]
        lines.append(
            f"{run.info.run_id:32}  {run.info.run_name:28}  {run.info.status:8}  {started:16}  "
            f"{commit:8}  {tags.get('git.dirty', '-')}"
        )
    return "\n".join(lines)


def describe_run(client: mlflow.MlflowClient, run_id: str, params_path: Path) -> str:
    """Return the lineage of run `run_id` and the commands that reproduce it in this repository."""
    run = _get_run(client, run_id)
    tags = run.data.tags
    experiment = client.get_experiment(run.info.experiment_id)
    lines = [
        f"run {run.info.run_id} {run.info.run_name!r} ({run.info.status}) in experiment {experiment.name!r}",
        f"  arm:          {tags.get('arm', '-')}",
        f"  git commit:   {tags.get(MLFLOW_GIT_COMMIT, 'not recorded')}",
        f"  git dirty:    {tags.get('git.dirty', 'not recorded')}"
        + (f" ({tags['git.dirty_files']})" if tags.get("git.dirty_files") else ""),
        f"  dataset md5:  {tags.get('dataset.md5', 'not recorded')}",
        f"  params.hash:  {tags.get('params.hash', 'not recorded')}",
    ]
    if tags.get("dvc.exp_name"):
        lines.append(f"  experiment:   {tags['dvc.exp_name']} (baseline {tags.get('dvc.baseline_rev', '?')})")
    lines.append("")
    lines.extend(_reproduction_steps(client, run, params_path))
    return "\n".join(lines)


def _reproduction_steps(client: mlflow.MlflowClient, run: Run, params_path: Path) -> list[str]:
    tags = run.data.tags
    commit = tags.get(MLFLOW_GIT_COMMIT)
    run_params_text = _download_params(client, run.info.run_id)
    if commit is None:
        return ["The run records no git commit (git was unavailable when it ran)."] + _params_fallback(run, run_params_text)
    if not _git_succeeds("cat-file", "-e", f"{commit}^{{commit}}"):
        return [f"Commit {commit} is not in this repository; fetch it first."] + _params_fallback(run, run_params_text)

    steps = ["To reproduce it:", f"  git checkout {commit}"]
    if run_params_text is None:
        steps.append("  dvc repro")
        steps.append(f"The run has no {PARAMS_ARTIFACT} artifact; check its params against the commit's by hand.")
        return steps

    committed_text = _git_output("show", f"{commit}:{params_path.as_posix()}")
    overrides = params_overrides(parse_yaml(committed_text or "") or {}, parse_yaml(run_params_text) or {})
    if overrides:
        steps.append("  dvc exp run " + " ".join(f"-S {shlex.quote(override)}" for override in overrides))
    else:
        steps.append("  dvc repro")

    experiment_name = tags.get("dvc.exp_name")
    if experiment_name and _experiment_exists(tags.get("dvc.baseline_rev", ""), experiment_name):
        steps.append(f"or, while the experiment is kept in this repository: dvc exp apply {experiment_name}")

    other_changes = [name for name in tags.get("git.dirty_files", "").split(",") if name and name != params_path.as_posix()]
    if other_changes:
        steps.append(
            "warning: the run's workspace also had uncommitted changes in "
            f"{', '.join(other_changes)}; git does not hold them, so these steps do not restore them"
        )
    return steps


def params_overrides(committed: dict, run: dict, prefix: str = "") -> list[str]:
    """Return the `dvc exp run -S` overrides that turn the `committed` params into the `run` params.

    DVC reads -S with Hydra's override grammar: `key=value` changes a key,
    `+key=value` adds one and `~key` deletes one with everything under it.
    """
    overrides = []
    for key, value in run.items():
        path = f"{prefix}{key}"
        if key not in committed:
            overrides.append(f"+{path}={_override_value(value)}")
        elif isinstance(value, dict) and value and isinstance(committed[key], dict) and committed[key]:
            overrides.extend(params_overrides(committed[key], value, f"{path}."))
        elif committed[key] != value or type(committed[key]) is not type(value):
            overrides.append(f"{path}={_override_value(value)}")
    overrides.extend(f"~{prefix}{key}" for key in committed if key not in run)
    return overrides


def _override_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_override_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{_override_value(item)}" for key, item in value.items()) + "}"
    text = str(value)
    if _PLAIN_STRING.match(text) and text.lower() not in _YAML_KEYWORDS:
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _params_fallback(run: Run, run_params_text: str | None) -> list[str]:
    if run_params_text is not None:
        return [f"The run's params file, artifact {PARAMS_ARTIFACT}:", run_params_text.rstrip()]
    return ["The run's logged params:"] + [f"  {key}: {value}" for key, value in sorted(run.data.params.items())]


def _get_run(client: mlflow.MlflowClient, run_id: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise TrackingError(
                f"run {run_id!r} not found in {redact(client.tracking_uri)}; "
                "`python -m pipeline.runs` lists the runs of this workspace"
            ) from None
        raise


def _download_params(client: mlflow.MlflowClient, run_id: str) -> str | None:
    if not any(item.path == PARAMS_ARTIFACT for item in client.list_artifacts(run_id)):
        return None
    with tempfile.TemporaryDirectory() as folder:
        local_path = client.download_artifacts(run_id, PARAMS_ARTIFACT, folder)
        return Path(local_path).read_text(encoding="utf-8")


def _experiment_exists(baseline_rev: str, name: str) -> bool:
    # DVC 3 keeps an experiment as the git ref refs/exps/<baseline[:2]>/<baseline[2:]>/<name>.
    ref = f"refs/exps/{baseline_rev[:2]}/{baseline_rev[2:]}/{name}"
    return len(baseline_rev) == 40 and _git_succeeds("rev-parse", "--verify", "--quiet", ref)


def _dvc_lock_md5(path: Path) -> str | None:
    try:
        lock = yaml.safe_load(Path(DVC_LOCK).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        return None
    for stage in lock.get("stages", {}).values():
        for out in stage.get("outs", []):
            if Path(out.get("path", "")) == path:
                return out.get("md5")
    return None


def _git_output(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def _git_succeeds(*args: str) -> bool:
    return _git_output(*args) is not None


def open_store() -> mlflow.MlflowClient:
    """Return a client for the pipeline's store; raise TrackingError if it is missing or unreachable."""
    uri = tracking_uri(repository_root())
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise TrackingError(f"no MLflow store at {uri}; run `dvc repro` first, or set MLFLOW_TRACKING_URI")
    check_reachable(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_id", nargs="?", help="print how to reproduce this run instead of listing runs")
    parser.add_argument("--params", default="params.yaml", type=Path, help="params file (default: %(default)s)")
    parser.add_argument("--dataset", default="data/dataset.npz", type=Path, help="dataset (default: %(default)s)")
    args = parser.parse_args(argv)

    # The progress bar of an artifact download would garble the printed report.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = open_store()
    if args.run_id:
        print(describe_run(client, args.run_id, args.params))
    else:
        print(list_matching_runs(client, load_params(args.params), args.dataset))


if __name__ == "__main__":
    run_stage(main)
