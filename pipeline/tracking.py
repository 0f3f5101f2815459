"""MLflow tracking: where the store is, the experiment, and one run per trained arm."""

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
import numpy as np
from mlflow.entities import Metric, Param, RunTag

from pipeline.errors import TrackingError
from pipeline.steps import SERIES

log = logging.getLogger(__name__)

DEFAULT_STORE_NAME = "mlflow.db"
ARTIFACTS_DIR_NAME = "mlartifacts"
MAX_METRICS_PER_REQUEST = 1000  # the MLflow REST API rejects larger log_batch requests
HEALTH_TIMEOUT_SECONDS = 5


def repository_root() -> Path:
    """Return the DVC repository root that owns the default store.

    `dvc exp run --queue` runs stages in a copy under .dvc/tmp/exps and sets
    DVC_ROOT to the real root, so queued runs land in the same store.
    """
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    start = Path.cwd().resolve()
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return start


def tracking_uri(root: Path | None = None) -> str:
    """Return MLFLOW_TRACKING_URI when set, else the SQLite store at the repository root."""
    configured = os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    return f"sqlite:///{(root or repository_root()) / DEFAULT_STORE_NAME}"


def redact(uri: str) -> str:
    """Return `uri` with any password replaced by ***, for messages and logs."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def open_experiment(uri: str, experiment_name: str, root: Path) -> tuple[mlflow.MlflowClient, str]:
    """Return a client for `uri` and the id of `experiment_name`, creating it if needed."""
    check_reachable(uri)
    with _store_lock(uri):
        # MlflowClient creates and migrates a SQLite store's schema as it starts.
        client = mlflow.MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is not None:
            return client, experiment.experiment_id
        return client, client.create_experiment(experiment_name, artifact_location=_artifact_location(uri, root))


def check_reachable(uri: str) -> None:
    """Fail fast when a tracking server does not respond to its health check.

    MLflow's own client retries for minutes before it gives up.
    """
    scheme = urlsplit(uri).scheme
    if scheme not in ("http", "https"):
        return

    import requests  # a dependency of mlflow

    health_url = uri.rstrip("/") + "/health"
    try:
        response = requests.get(health_url, timeout=HEALTH_TIMEOUT_SECONDS)
        response.raise_for_status()
    except requests.RequestException as error:
        raise TrackingError(
            f"MLflow tracking server at {redact(uri)} is unreachable ({type(error).__name__}); "
            "start it, or unset MLFLOW_TRACKING_URI to use the local store"
        ) from None


def _artifact_location(uri: str, root: Path) -> str | None:
    # A server chooses its own artifact store. For a local store, pin artifacts to
    # the repository root: the default, ./mlruns under the working directory,
    # would be deleted with the temporary copy of a queued experiment.
    if urlsplit(uri).scheme in ("http", "https", "databricks"):
        return None
    return (root / ARTIFACTS_DIR_NAME).as_uri()


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise creating a SQLite store's schema and experiment across processes.

    Parallel queue workers would otherwise race to run the schema migrations or
    to create the same experiment: without the lock, six queued experiments
    run three at a time failed in alembic's migration of a half-made schema.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


class ArmRun:
    """One arm's MLflow run, written by the logger process (pipeline/run_logger.py)."""

    def __init__(self, client: mlflow.MlflowClient, experiment_id: str, run_name: str, tags: dict[str, str]):
        self.client = client
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        log.info("MLflow run %s (%s) started", self.run_id, run_name)

    def log_params(self, params: dict[str, object]) -> None:
        items = [Param(key, str(value)) for key, value in params.items()]
        # The REST API takes at most 100 params in one request.
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def log_steps(self, steps: np.ndarray, series: dict[str, np.ndarray], timestamp: int) -> None:
        """Store each series in SERIES at `steps`, in requests of at most MAX_METRICS_PER_REQUEST metrics."""
        steps = steps.tolist()
        metrics = [
            Metric(key, value, timestamp, step)
            for key in SERIES
            for step, value in zip(steps, series[key].tolist())
        ]
        for start in range(0, len(metrics), MAX_METRICS_PER_REQUEST):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + MAX_METRICS_PER_REQUEST])

    def log_summary(self, summary: dict) -> None:
        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), timestamp, 0)
            for key, value in summary.items()
            if isinstance(value, (int, float)) and value is not None and key != "diverged_at_step"
        ]
        for name, epoch in summary["epochs"].items():
            number = int(name.removeprefix("epoch_"))
            metrics.append(Metric("epoch_mean_loss", epoch["mean_loss"], timestamp, number))
            metrics.append(Metric("epoch_max_grad_norm", epoch["max_grad_norm"], timestamp, number))
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)
        log.info("MLflow run %s ended as %s", self.run_id, status)


class FigureAttacher:
    """Attach figures to the run that trained the exact per-step file they were drawn from."""

    ARTIFACT_PATH = "plots"

    def __init__(self, client: mlflow.MlflowClient | None, experiment_id: str | None):
        self.client = client
        self.experiment_id = experiment_id

    @classmethod
    def open(cls, experiment_name: str) -> "FigureAttacher":
        uri = tracking_uri()
        check_reachable(uri)
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
            return cls(None, None)  # no store, so no runs to attach to; do not create one
        # Under the lock: a queued experiment's train stage may still be creating the schema.
        with _store_lock(uri):
            client = mlflow.MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name(experiment_name)
        return cls(client, experiment.experiment_id if experiment else None)

    def attach(self, arm: str, steps_md5: str, figures: list[Path]) -> None:
        """Log `figures` to the newest finished run of `arm` whose per-step file has `steps_md5`.

        A run that already has figures keeps them: when only another arm was
        retrained, this arm's run keeps the figures drawn right after it trained.
        """
        if self.client is None or self.experiment_id is None:
            log.warning("no MLflow runs to attach the %s figures to", arm)
            return
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.arm = '{arm}' and tags.`steps.md5` = '{steps_md5}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            log.warning("no finished MLflow run of arm %s trained this per-step file; figures not attached", arm)
            return
        run_id = runs[0].info.run_id
        if self.client.list_artifacts(run_id, self.ARTIFACT_PATH):
            log.info("run %s of arm %s already has figures", run_id, arm)
            return
        for figure in figures:
            self.client.log_artifact(run_id, str(figure), artifact_path=self.ARTIFACT_PATH)
        log.info("attached %d figures to run %s of arm %s", len(figures), run_id, arm)
