"""Divergence is a result: the diverged arm's stage completes and records where it diverged.

Reference values come from the original single-script experiment run with the
small params (200 samples, 4 rare, 2 epochs) at a learning rate of 50.
"""

import json
import math

import numpy as np
import pytest
from conftest import RepoCopy, copy_reproduced

from pipeline.figures import (
    MAX_LOG_TICKS,
    ArmCurves,
    comparison_figure,
    markers_for,
    shared_limits,
    uses_log_scale,
)
from pipeline.model import initial_state
from pipeline.steps import StepSeries, read_steps
from pipeline.summary import SummaryAccumulator
from pipeline.training import train

DIVERGING_LR = 50.0
NO_CLIP_DIVERGED_AT = 168  # the weight norm overflows to inf at step 168
NO_CLIP_WEIGHT_NORM_AT_167 = 9.237502964788537e18
CLIP_STEPS = 400
CLIP_MAX_GRAD_NORM = 94.49629211425781
CLIP_MEAN_GRAD_NORM = 4.224308944940567
CLIP_FINAL_WEIGHT_NORM = 80.66311190496907
FLOAT32_MAX = float(np.finfo(np.float32).max)


def strict_json(text: str) -> dict:
    def reject(constant: str):
        raise AssertionError(f"summary holds the non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


@pytest.fixture(scope="module")
def diverged_repo(reproduced_template, tmp_path_factory) -> RepoCopy:
    """The small repository reproduced again at a learning rate that makes `no_clip` diverge."""
    repo = copy_reproduced(reproduced_template, tmp_path_factory.mktemp("diverged") / "repo")
    repo.set_param("train.lr", DIVERGING_LR)
    result = repo.repro()
    assert result.ran == ["train@no_clip", "train@clip", "plots"]
    return repo


@pytest.mark.slow
def test_diverged_arm_summary(diverged_repo):
    no_clip = strict_json((diverged_repo.path / "metrics/no_clip.json").read_text())
    clip = strict_json((diverged_repo.path / "metrics/clip.json").read_text())

    assert no_clip["diverged_at_step"] == NO_CLIP_DIVERGED_AT
    assert no_clip["steps"] == NO_CLIP_DIVERGED_AT
    assert math.isfinite(no_clip["max_grad_norm"])
    assert math.isfinite(no_clip["final_weight_norm"])
    assert clip["diverged_at_step"] is None
    assert clip["steps"] == CLIP_STEPS
    assert clip["max_grad_norm"] == pytest.approx(CLIP_MAX_GRAD_NORM, rel=1e-6)
    assert clip["mean_grad_norm"] == pytest.approx(CLIP_MEAN_GRAD_NORM, rel=1e-6)
    assert clip["final_weight_norm"] == pytest.approx(CLIP_FINAL_WEIGHT_NORM, rel=1e-6)


@pytest.mark.slow
def test_diverged_arm_steps_file(diverged_repo):
    series = read_steps(diverged_repo.path / "outputs/steps/no_clip.csv", expected_steps=NO_CLIP_DIVERGED_AT)

    assert len(series) == NO_CLIP_DIVERGED_AT
    assert np.isfinite(series.loss).all()
    assert series.weight_norm[-1] == pytest.approx(NO_CLIP_WEIGHT_NORM_AT_167, rel=1e-6)


@pytest.mark.slow
def test_diverged_run_in_mlflow(diverged_repo):
    client = diverged_repo.mlflow_client()
    experiment = client.get_experiment_by_name(diverged_repo.params()["tracking"]["experiment_name"])
    runs = {run.data.tags["arm"]: run for run in client.search_runs([experiment.experiment_id])}
    no_clip, clip = runs["no_clip"], runs["clip"]

    assert no_clip.info.status == "FINISHED"
    assert no_clip.data.tags["diverged"] == "true"
    assert no_clip.data.tags["diverged_at_step"] == str(NO_CLIP_DIVERGED_AT)
    assert clip.data.tags["diverged"] == "false"
    assert "diverged_at_step" not in clip.data.tags
    assert "diverged_at_step" not in no_clip.data.metrics

    # Only finite steps reach MLflow, which would store inf as 1.8e308.
    for key in ("loss", "grad_norm", "weight_norm"):
        history = client.get_metric_history(no_clip.info.run_id, key)
        assert sorted(metric.step for metric in history) == list(range(NO_CLIP_DIVERGED_AT))
        assert max(abs(metric.value) for metric in history) <= FLOAT32_MAX
    assert all(math.isfinite(value) for value in no_clip.data.metrics.values())
    assert len(client.get_metric_history(clip.info.run_id, "loss")) == CLIP_STEPS


@pytest.mark.slow
def test_diverged_figures_readable(diverged_repo):
    curves = [
        ArmCurves("no_clip", None, read_steps(diverged_repo.path / "outputs/steps/no_clip.csv", NO_CLIP_DIVERGED_AT),
                  NO_CLIP_DIVERGED_AT),
        ArmCurves("clip", 1.0, read_steps(diverged_repo.path / "outputs/steps/clip.csv", CLIP_STEPS), None),
    ]
    markers = markers_for(np.array([6, 28, 163, 189]), 200, CLIP_STEPS, show_rare=True)
    limits = shared_limits(curves)

    figure = comparison_figure(curves, markers, limits, uses_log_scale(curves))

    figure.canvas.draw()

    assert uses_log_scale(curves)
    for axis in figure.axes:
        low, high = axis.get_ylim()
        assert math.isfinite(low)
        assert math.isfinite(high)
        assert axis.get_yscale() == "symlog"
        labelled = [tick for tick in axis.get_yticks() if low <= tick <= high]
        assert len(labelled) <= MAX_LOG_TICKS, axis.get_ylabel()
    for name in ("no_clip.png", "clip.png", "comparison.png"):
        assert (diverged_repo.path / "outputs/plots" / name).stat().st_size > 0


def test_divergence_at_first_step():
    # A learning rate this large overflows the weight norm in the first update.
    inputs = np.array([0, 1, 2, 3], dtype=np.int64)
    targets = np.zeros(4, dtype=np.int64)
    chunks = []

    result = train(inputs, targets, initial_state(4, 8, seed=0), embedding_dim=8, lr=1e30, epochs=1,
                   max_norm=None, on_chunk=chunks.append)

    accumulator = SummaryAccumulator(max_norm=None)
    for chunk in chunks:
        accumulator.add(chunk)
    summary = accumulator.to_dict(result.diverged_at_step)
    assert result.diverged_at_step == 0
    assert result.steps == 0
    assert [len(chunk) for chunk in chunks] == [0]
    assert strict_json(json.dumps(summary, allow_nan=False)) == summary
    assert summary["final_loss"] is None


def test_limits_with_arm_diverged_at_first_step():
    nothing = StepSeries(*(np.empty(0) for _ in range(5)))
    some = StepSeries(
        step=np.arange(3), epoch=np.ones(3), loss=np.array([0.5, 2.0, 1.0]),
        grad_norm=np.array([1.0, 3.0, 2.0]), weight_norm=np.array([9.0, 9.5, 9.7]),
    )
    curves = [ArmCurves("no_clip", None, nothing, 0), ArmCurves("clip", 1.0, some, None)]

    limits = shared_limits(curves)

    # The clip arm's ranges (0 to 2, 0 to 3 and 9 to 9.7) widened by 5% of
    # their height on the symlog scale, on both sides.
    assert limits == {
        "loss": (pytest.approx(-0.0635463498), pytest.approx(2.3530819421)),
        "grad_norm": (pytest.approx(-0.0714704565), pytest.approx(3.6019101327)),
        "weight_norm": (pytest.approx(8.9663574474), pytest.approx(9.7363952432)),
    }
