"""Stage `plots`: draw the per-step series of every arm and attach the figures to the arms' runs.

Writes `<out>/<arm>.png` for each arm and `<out>/comparison.png` with all arms
side by side. Reads only the per-step files, their summaries and the dataset.
"""

import argparse
import hashlib
import json
import logging
from pathlib import Path

import matplotlib

from pipeline.cli import run_stage
from pipeline.dataset import load_dataset
from pipeline.errors import InputFileError
from pipeline.figures import (
    ArmCurves,
    arm_figure,
    comparison_figure,
    markers_for,
    shared_limits,
    uses_log_scale,
)
from pipeline.files import atomic_directory
from pipeline.params import Params, load_params
from pipeline.steps import read_steps

log = logging.getLogger(__name__)

COMPARISON_NAME = "comparison.png"


def load_arm_curves(params: Params, steps_dir: Path, metrics_dir: Path) -> list[ArmCurves]:
    """Read every arm's per-step file, checked against the step count its summary records."""
    curves = []
    for name, arm in params.arms.items():
        summary = _read_summary(metrics_dir / f"{name}.json")
        series = read_steps(steps_dir / f"{name}.csv", expected_steps=summary["steps"])
        curves.append(ArmCurves(name, arm.max_norm, series, summary["diverged_at_step"]))
    return curves


def _read_summary(path: Path) -> dict:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(f"{path}: summary not found; run its train stage first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputFileError(f"{path}: invalid JSON: {error}") from None

    steps = summary.get("steps") if isinstance(summary, dict) else None
    diverged = summary.get("diverged_at_step") if isinstance(summary, dict) else None
    if not isinstance(steps, int) or steps < 0 or not (diverged is None or isinstance(diverged, int)):
        raise InputFileError(f"{path}: expected integer 'steps' and 'diverged_at_step' (integer or null)")
    return summary


def render(params: Params, curves: list[ArmCurves], rare_indices, n_samples: int, out_dir: Path) -> list[Path]:
    """Write one figure per arm and the comparison figure into `out_dir`, replacing its contents."""
    total_steps = max(len(arm.series) for arm in curves)
    markers = markers_for(rare_indices, n_samples, total_steps, params.plots.mark_rare_steps)
    limits = shared_limits(curves)
    log_scale = uses_log_scale(curves)

    figures = {f"{arm.name}.png": arm_figure(arm, markers, limits, log_scale) for arm in curves}
    figures[COMPARISON_NAME] = comparison_figure(curves, markers, limits, log_scale)
    with atomic_directory(out_dir) as temporary:
        for file_name, figure in figures.items():
            # No "Software" entry: it contains the matplotlib version, which would
            # change the bytes of an otherwise identical figure.
            figure.savefig(temporary / file_name, dpi=params.plots.dpi, metadata={"Software": None})
            matplotlib.pyplot.close(figure)
    return [out_dir / file_name for file_name in figures]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--dataset", required=True, help="dataset artifact, for the rare-sample positions")
    parser.add_argument("--steps-dir", required=True, type=Path, help="folder of <arm>.csv per-step files")
    parser.add_argument("--metrics-dir", required=True, type=Path, help="folder of <arm>.json summaries")
    parser.add_argument("--out", required=True, type=Path, help="folder to write the PNG figures into")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    dataset = load_dataset(args.dataset)
    curves = load_arm_curves(params, args.steps_dir, args.metrics_dir)

    # Reach the tracking store before writing anything, so an unreachable
    # server fails the stage with no outputs.
    from pipeline.tracking import FigureAttacher

    attacher = FigureAttacher.open(params.tracking.experiment_name)
    paths = render(params, curves, dataset.rare_indices, dataset.n_samples, args.out)
    log.info("wrote %s", ", ".join(str(path) for path in paths))

    comparison = args.out / COMPARISON_NAME
    for arm in curves:
        steps_md5 = hashlib.md5((args.steps_dir / f"{arm.name}.csv").read_bytes()).hexdigest()
        attacher.attach(arm.name, steps_md5, [args.out / f"{arm.name}.png", comparison])


if __name__ == "__main__":
    run_stage(main)
