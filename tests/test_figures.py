"""The figures, checked through their matplotlib artists rather than their pixels."""

import numpy as np
import pytest
from matplotlib import pyplot as plt
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from pipeline import figures
from pipeline.figures import ArmCurves, arm_figure, comparison_figure, markers_for, shared_limits
from pipeline.params import Params
from pipeline.plots import COMPARISON_NAME, render
from pipeline.steps import StepSeries

N_SAMPLES = 7
RARE_INDICES = np.array([1, 4])
EPOCHS = 3
TOTAL_STEPS = N_SAMPLES * EPOCHS
# Both rare positions in each of the 3 epochs of 7 samples.
RARE_STEPS = [1, 4, 8, 11, 15, 18]
ARMS = {"no_clip": None, "clip": 1.0, "clip_tight": 0.25}


def series(n_steps: int, grad_peak: float) -> StepSeries:
    step = np.arange(n_steps)
    wave = np.sin(step)
    return StepSeries(
        step=step,
        epoch=step // N_SAMPLES + 1,
        loss=0.5 + 0.4 * wave,
        grad_norm=grad_peak * (1 + wave) / 2,
        weight_norm=8.0 + 0.1 * step / n_steps,
    )


def arm_curves(name: str, max_norm: float | None, grad_peak: float = 3.0, n_steps: int = TOTAL_STEPS, diverged_at_step=None):
    return ArmCurves(name, max_norm, series(n_steps, grad_peak), diverged_at_step)


def draw_comparison(arms: list[ArmCurves]) -> tuple[Figure, np.ndarray]:
    """Draw the comparison figure of `arms` and return it with its axes indexed [row, column]."""
    markers = markers_for(RARE_INDICES, N_SAMPLES, TOTAL_STEPS, show_rare=True)
    figure = comparison_figure(arms, markers, shared_limits(arms))
    return figure, np.array(figure.axes).reshape(len(figures.ROWS), len(arms))


def three_arms() -> list[ArmCurves]:
    # Peaks differ widely, so y-limits fitted to one arm alone would differ between arms.
    peaks = {"no_clip": 7.5, "clip": 2.0, "clip_tight": 0.1}
    return [arm_curves(name, max_norm, peaks[name]) for name, max_norm in ARMS.items()]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def marker_collections(axis, color: str) -> list[LineCollection]:
    return [
        collection for collection in axis.collections
        if isinstance(collection, LineCollection) and to_rgb(collection.get_colors()[0]) == to_rgb(color)
    ]


def marker_steps(axis, color: str) -> list[float]:
    collections = marker_collections(axis, color)
    assert len(collections) <= 1
    if not collections:
        return []
    return [float(segment[0, 0]) for segment in collections[0].get_segments()]


def threshold_levels(axis) -> list[float]:
    """Return the y of every horizontal line that spans the axis (axhline)."""
    return [
        float(line.get_ydata()[0]) for line in axis.lines
        if list(line.get_xdata()) == [0, 1] and line.get_ydata()[0] == line.get_ydata()[1]
    ]


def test_markers_cover_every_epoch():
    markers = markers_for(RARE_INDICES, N_SAMPLES, TOTAL_STEPS, show_rare=True)
    assert markers.rare_steps.tolist() == RARE_STEPS
    assert markers.epoch_starts.tolist() == [7, 14]
    assert markers.total_steps == TOTAL_STEPS


def test_markers_stop_at_last_step():
    # A run that diverged at step 16 ends inside its third epoch.
    markers = markers_for(RARE_INDICES, N_SAMPLES, 16, show_rare=True)
    assert markers.rare_steps.tolist() == [1, 4, 8, 11, 15]
    assert markers.epoch_starts.tolist() == [7, 14]


@pytest.mark.parametrize("n_samples, epochs, rare_indices", [(7, 3, [1, 4]), (10, 1, [0, 9]), (5, 4, [])])
def test_rare_markers_drawn_at_rare_steps(n_samples, epochs, rare_indices):
    total = n_samples * epochs
    arm = ArmCurves("clip", 1.0, series(total, 3.0), None)
    markers = markers_for(np.array(rare_indices, dtype=np.int64), n_samples, total, show_rare=True)
    figure = arm_figure(arm, markers, shared_limits([arm]))

    expected = [float(epoch * n_samples + index) for epoch in range(epochs) for index in rare_indices]
    assert len(figure.axes) == 3
    for axis in figure.axes:
        assert marker_steps(axis, figures.RARE_COLOR) == expected
        assert marker_steps(axis, "grey") == [float(epoch * n_samples) for epoch in range(1, epochs)]
        assert axis.get_xlim() == (0, total)


def test_rare_markers_off_when_disabled():
    arm = arm_curves("clip", 1.0)
    markers = markers_for(RARE_INDICES, N_SAMPLES, TOTAL_STEPS, show_rare=False)
    figure = arm_figure(arm, markers, shared_limits([arm]))

    for axis in figure.axes:
        assert marker_steps(axis, figures.RARE_COLOR) == []
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert "rare-target sample" not in labels


def test_threshold_only_on_clipped_arms():
    arms = three_arms()
    markers = markers_for(RARE_INDICES, N_SAMPLES, TOTAL_STEPS, show_rare=True)
    limits = shared_limits(arms)
    _, grid = draw_comparison(arms)

    for column, arm in enumerate(arms):
        expected = [] if arm.max_norm is None else [arm.max_norm]
        assert threshold_levels(grid[1, column]) == expected, arm.name
        assert threshold_levels(grid[0, column]) == []
        assert threshold_levels(grid[2, column]) == []

        single = arm_figure(arm, markers, limits)
        assert threshold_levels(single.axes[1]) == expected, arm.name
        assert threshold_levels(single.axes[0]) == []
        assert threshold_levels(single.axes[2]) == []


def test_threshold_legend_only_with_clipped_arm():
    markers = markers_for(RARE_INDICES, N_SAMPLES, TOTAL_STEPS, show_rare=True)
    no_clip = arm_curves("no_clip", None)
    clip = arm_curves("clip", 1.0)

    unclipped = arm_figure(no_clip, markers, shared_limits([no_clip]))
    clipped = arm_figure(clip, markers, shared_limits([clip]))
    assert [text.get_text() for text in unclipped.axes[0].get_legend().get_texts()] == [
        "rare-target sample", "epoch boundary",
    ]
    assert [text.get_text() for text in clipped.axes[0].get_legend().get_texts()] == [
        "rare-target sample", "epoch boundary", "clip threshold (max_norm)",
    ]


def test_y_limits_shared_across_arms():
    arms = three_arms()
    markers = markers_for(RARE_INDICES, N_SAMPLES, TOTAL_STEPS, show_rare=True)
    limits = shared_limits(arms)
    _, grid = draw_comparison(arms)

    for row, (attribute, _, _) in enumerate(figures.ROWS):
        highest = max(float(np.max(getattr(arm.series, attribute))) for arm in arms)
        low, high = grid[row, 0].get_ylim()
        assert high >= highest, attribute
        for column, arm in enumerate(arms):
            assert grid[row, column].get_ylim() == (low, high), (attribute, arm.name)
            assert arm_figure(arm, markers, limits).axes[row].get_ylim() == (low, high), (attribute, arm.name)


def test_y_limits_include_thresholds_above_data():
    # Gradient norms stay below 0.5, far under the clip arm's max_norm of 2.
    arms = [arm_curves("no_clip", None, grad_peak=0.5), arm_curves("clip", 2.0, grad_peak=0.5)]
    low, high = shared_limits(arms)["grad_norm"]
    assert low == 0.0
    assert high > 2.0


def test_third_arm_adds_column():
    two, _ = draw_comparison(three_arms()[:2])
    three, _ = draw_comparison(three_arms())

    assert len(two.axes) == 6
    assert len(three.axes) == 9
    geometry = three.axes[0].get_subplotspec().get_gridspec().get_geometry()
    assert geometry == (3, 3)
    titles = [axis.get_title() for axis in three.axes[:3]]
    assert titles == ["no_clip (no clipping)", "clip (clipped at max_norm=1)", "clip_tight (clipped at max_norm=0.25)"]
    assert three.get_figwidth() > two.get_figwidth()


def test_legend_adds_no_line_to_data():
    arms = three_arms()
    comparison, grid = draw_comparison(arms)

    assert len(comparison.legends) == 1
    assert [text.get_text() for text in comparison.legends[0].get_texts()] == [
        "rare-target sample", "epoch boundary", "clip threshold (max_norm)",
    ]
    for column, arm in enumerate(arms):
        for row in range(3):
            axis = grid[row, column]
            assert axis.get_legend() is None
            assert axis.get_xlim() == (0, TOTAL_STEPS)
            curves = [line for line in axis.lines if len(line.get_xdata()) == TOTAL_STEPS]
            assert len(curves) == 1
            others = [line for line in axis.lines if line not in curves]
            # Besides the curve, only the clip threshold may be a line of the axis.
            assert len(others) == len(threshold_levels(axis))
            assert all(line.get_label().startswith("_") for line in axis.lines)


def test_divergence_marked_at_its_step():
    diverged = arm_curves("no_clip", None, n_steps=12, diverged_at_step=12)
    healthy = arm_curves("clip", 1.0)
    markers = markers_for(RARE_INDICES, N_SAMPLES, TOTAL_STEPS, show_rare=True)
    figure = arm_figure(diverged, markers, shared_limits([diverged, healthy]))

    for axis in figure.axes:
        verticals = [line for line in axis.lines if list(line.get_ydata()) == [0, 1]]
        assert [list(line.get_xdata()) for line in verticals] == [[12, 12]]
        assert axis.get_xlim() == (0, TOTAL_STEPS)
    assert [text.get_text() for text in figure.axes[0].texts] == ["diverged at step 12"]
    assert "divergence" in [text.get_text() for text in figure.axes[0].get_legend().get_texts()]


def test_render_is_byte_identical(tmp_path):
    params = Params.model_validate({
        "dataset": {"seed": 42, "n_samples": N_SAMPLES, "n_rare": 2, "vocab": ["A", "B", "C", "D"]},
        "model": {"init_seed": 42, "embedding_dim": 16},
        "train": {"lr": 0.1, "epochs": EPOCHS},
        "arms": {name: {"max_norm": max_norm} for name, max_norm in ARMS.items()},
        "tracking": {"experiment_name": "gradient-clipping", "log_every_n_steps": 1},
        "plots": {"dpi": 30, "mark_rare_steps": True},
    })
    first = render(params, three_arms(), RARE_INDICES, N_SAMPLES, tmp_path / "first")
    second = render(params, three_arms(), RARE_INDICES, N_SAMPLES, tmp_path / "second")

    names = sorted(path.name for path in first)
    assert names == sorted(["no_clip.png", "clip.png", "clip_tight.png", COMPARISON_NAME])
    assert sorted(path.name for path in (tmp_path / "first").iterdir()) == names
    for one, other in zip(first, second):
        assert one.read_bytes() == other.read_bytes(), one.name
