"""Stage `train@<arm>`: train one arm, write its per-step series and summary, track it in MLflow.

Outputs appear only when the stage succeeds: both files are written under
temporary names and renamed once training and MLflow logging are done. The
MLflow run belongs to a logger process (pipeline/run_logger.py), so this
process never imports mlflow.
"""

import argparse
import hashlib
import json
import logging
import math
import os
from pathlib import Path

from pipeline.cli import STAGE_VARIABLE, run_stage
from pipeline.dataset import Dataset, load_dataset
from pipeline.errors import PipelineError
from pipeline.files import atomic_output
from pipeline.logger_process import RunLogger
from pipeline.params import Params, load_params
from pipeline.progress import Progress
from pipeline.steps import StepChunk, StepWriter
from pipeline.summary import SummaryAccumulator

log = logging.getLogger(__name__)


def train_arm(
    params: Params, arm_name: str, dataset: Dataset, steps_path: Path, metrics_path: Path, run: RunLogger
) -> dict:
    """Train `arm_name`, write its two output files and log them to the open run; return the summary."""
    # Imported here, after the logger process has started: torch takes about
    # 1.5 s to import, while that process imports mlflow.
    from pipeline.model import initial_state
    from pipeline.training import train

    arm = params.arm(arm_name)
    accumulator = SummaryAccumulator(max_norm=arm.max_norm)
    n_samples = dataset.n_samples
    epochs = params.train.epochs
    progress = Progress(arm_name, total_steps=epochs * n_samples)

    with atomic_output(steps_path) as steps_temporary, atomic_output(metrics_path) as metrics_temporary:
        with steps_temporary.open("w", encoding="utf-8", newline="") as stream:
            writer = StepWriter(stream)

            def record(chunk: StepChunk) -> None:
                writer.write(chunk)
                accumulator.add(chunk)
                run.log_steps(chunk, params.tracking.log_every_n_steps)
                if chunk.start + len(chunk) == chunk.epoch * n_samples:
                    progress.clear()
                    epoch = accumulator.epochs[chunk.epoch]
                    log.info(
                        "%s epoch %d/%d: mean loss %.4f, max grad norm %.4f",
                        arm_name, chunk.epoch, epochs, epoch.loss_sum / epoch.steps, epoch.max_grad_norm,
                    )
                progress.update(chunk.start + len(chunk), float(chunk.loss.mean()) if len(chunk) else math.nan)

            try:
                result = train(
                    dataset.inputs,
                    dataset.targets,
                    initial_state(len(dataset.vocab), params.model.embedding_dim, params.model.init_seed),
                    embedding_dim=params.model.embedding_dim,
                    lr=params.train.lr,
                    epochs=epochs,
                    max_norm=arm.max_norm,
                    on_chunk=record,
                )
            finally:
                progress.clear()

        summary = accumulator.to_dict(result.diverged_at_step)
        metrics_temporary.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        steps_md5 = hashlib.md5(steps_temporary.read_bytes()).hexdigest()

        run.log_result(summary, _result_tags(steps_md5, result.diverged_at_step))

    if result.diverged_at_step is not None:
        log.warning("%s diverged at step %d: loss or a norm became non-finite", arm_name, result.diverged_at_step)
    return summary


def _result_tags(steps_md5: str, diverged_at_step: int | None) -> dict[str, str]:
    tags = {"steps.md5": steps_md5, "diverged": str(diverged_at_step is not None).lower()}
    if diverged_at_step is not None:
        tags["diverged_at_step"] = str(diverged_at_step)
    return tags


def effective_params(params: Params, arm_name: str, dataset: Dataset) -> dict[str, object]:
    """Return every value that determines this arm's results, as flat MLflow params.

    The dataset's values come from the artifact itself, which this stage reads,
    rather than from params.yaml, which it does not.
    """
    arm = params.arm(arm_name)
    return {
        "dataset.seed": dataset.seed,
        "dataset.n_samples": dataset.n_samples,
        "dataset.n_rare": len(dataset.rare_indices),
        "dataset.vocab": ",".join(dataset.vocab),
        "model.init_seed": params.model.init_seed,
        "model.embedding_dim": params.model.embedding_dim,
        "train.lr": params.train.lr,
        "train.epochs": params.train.epochs,
        "arm.name": arm_name,
        "arm.max_norm": arm.max_norm,
        "tracking.experiment_name": params.tracking.experiment_name,
        "tracking.log_every_n_steps": params.tracking.log_every_n_steps,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arm", help=f"arm name, a key under `arms` in the params file (default: the arm of ${STAGE_VARIABLE})"
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--dataset", required=True, help="dataset artifact written by the dataset stage")
    parser.add_argument("--steps-dir", required=True, type=Path, help="folder for the per-step <arm>.csv")
    parser.add_argument("--metrics-dir", required=True, type=Path, help="folder for the summary <arm>.json")
    args = parser.parse_args(argv)

    arm_name = args.arm if args.arm is not None else arm_of_stage(os.environ.get(STAGE_VARIABLE))
    params = load_params(args.params)
    params.arm(arm_name)
    # Only now is the name known to be a plain file name.
    steps_path, metrics_path = args.steps_dir / f"{arm_name}.csv", args.metrics_dir / f"{arm_name}.json"
    # The logger imports mlflow while this process loads the dataset and torch.
    with RunLogger.start() as run:
        dataset = load_dataset(args.dataset)
        run_params = effective_params(params, arm_name, dataset)
        run.request_run(arm_name, params.tracking.experiment_name, Path(args.params), Path(args.dataset), run_params)

        import torch

        # The model is tiny: extra intra-op threads only add overhead, and parallel
        # queue workers would compete for the cores.
        torch.set_num_threads(1)
        run.wait_for_run()
        summary = train_arm(params, arm_name, dataset, steps_path, metrics_path, run)
    headline = ("max_grad_norm", "mean_grad_norm", "std_grad_norm", "final_weight_norm", "final_loss")
    log.info("%s: %s", arm_name, ", ".join(f"{key}={_format(summary[key])}" for key in headline))


def arm_of_stage(stage: str | None) -> str:
    """Return the arm of a DVC stage address such as `train@clip` or `sub/dvc.yaml:train@clip`.

    dvc.yaml does not put the arm name on the command line: the shell would run
    a `$(...)` in a name from params.yaml before any check could refuse it.
    """
    name = (stage or "").rpartition(":")[2]
    prefix, separator, arm = name.partition("@")
    if prefix != "train" or not separator:
        raise PipelineError(
            f"{STAGE_VARIABLE}={stage!r} is not a train@<arm> stage; "
            "pass --arm NAME to run the train stage outside DVC"
        )
    return arm


def _format(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    run_stage(main)
