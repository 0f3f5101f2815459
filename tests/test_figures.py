"""The figures, checked through their matplotlib artists rather than their pixels."""

from dataclasses import replace

import numpy as np
import pytest
from matplotlib import pyplot as plt
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from pipeline import figures
from pipeline.figures import ArmCurves, arm_figure, comparison_figure, markers_for, shared_limits, symlog_ticks
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


def draw_comparison(arms: list[ArmCurves], log_scale: bool = False) -> tuple[Figure, np.ndarray]:
    """Draw the comparison figure of `arms` and return it with its axes indexed [row, column]."""
    markers = markers_for(RARE_INDICES, N_SAMPLES, TOTAL_STEPS, show_rare=True)
    figure = comparison_figure(arms, markers, shared_limits(arms), log_scale)
    return figure, np.array(figure.axes).reshape(len(figures.ROWS), len(arms))


def three_arms() -> list[ArmCurves]:
    # Peaks differ widely, so y-limits fitted to one arm alone would differ between arms.
    peaks = {"no_clip": 7.5, "clip": 2.0, "clip_tight": 0.1}
    return [arm_curves(name, max_norm, peaks[name]) for name, max_norm in ARMS.items()]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def legend_labels(figure: Figure) -> list[str]:
    assert len(figure.legends) == 1
    return [text.get_text() for text in figure.legends[0].get_texts()]


def diverged_arms() -> list[ArmCurves]:
    """Return an arm that overflowed towards float32's maximum and a healthy clipped arm.

    The healthy arm's values are dwarfed by the diverged arm's, by up to 38 decades.
    """
    step = np.arange(12)
    exploding = StepSeries(
        step=step,
        epoch=step // N_SAMPLES + 1,
        loss=np.where(step % 3 == 0, 0.0, 10.0 ** (3.0 * step + 5)),
        grad_norm=10.0 ** (1.5 * step),
        weight_norm=8.5 * 10.0 ** (1.6 * step),
    )
    return [ArmCurves("no_clip", None, exploding, 12), arm_curves("clip", 1.0, grad_peak=90.0)]


def axes_fractions(axis, x, y) -> np.ndarray:
    """Return the height of each point (x, y) as a fraction of the axis: 0 at the bottom edge, 1 at the top."""
    points = np.column_stack([x, y])
    return (axis.transData + axis.transAxes.inverted()).transform(points)[:, 1]


def shown_tick_labels(axis) -> list:
    """Return the y tick labels the drawn axis shows, minor ones included.

    Matplotlib also lists the labels of ticks outside the limits, which it does not draw.
    """
    low, high = axis.get_ylim()
    labels = axis.get_yticklabels() + axis.get_yticklabels(minor=True)
    return [
        label for label in labels
        if label.get_visible() and label.get_text() and low <= label.get_position()[1] <= high
    ]


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
    assert "rare-target sample" not in legend_labels(figure)


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
    assert legend_labels(unclipped) == ["rare-target sample", "epoch boundary"]
    assert legend_labels(clipped) == ["rare-target sample", "epoch boundary", "clip threshold (max_norm)"]


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
    # 0 to 2, widened by 5% of that height on both sides.
    assert low == pytest.approx(-0.1)
    assert high == pytest.approx(2.1)


@pytest.mark.parametrize("diverged_at_step", [None, TOTAL_STEPS], ids=["linear", "symlog"])
def test_every_curve_inside_axes(diverged_at_step):
    # No_clip's weight norm climbs from 8.5 to 1000 while clip's stays between
    # 8.0 and 8.1, so clip's whole curve lies along the bottom of the shared axis.
    wave = series(TOTAL_STEPS, grad_peak=7.5)
    no_clip = ArmCurves("no_clip", None, StepSeries(
        step=wave.step, epoch=wave.epoch, loss=wave.loss, grad_norm=wave.grad_norm,
        weight_norm=np.geomspace(8.5, 1000.0, TOTAL_STEPS),
    ), diverged_at_step)
    arms = [no_clip, arm_curves("clip", 1.0, grad_peak=2.0)]
    markers = markers_for(RARE_INDICES, N_SAMPLES, TOTAL_STEPS, show_rare=True)
    limits = shared_limits(arms)
    log_scale = figures.uses_log_scale(arms)
    _, grid = draw_comparison(arms, log_scale)
    singles = [arm_figure(arm, markers, limits, log_scale) for arm in arms]

    for row, (attribute, _, _) in enumerate(figures.ROWS):
        for column, arm in enumerate(arms):
            values = getattr(arm.series, attribute)
            for axis in (grid[row, column], singles[column].axes[row]):
                heights = axes_fractions(axis, arm.series.step, values)
                # Clear of the edges by at least 2% of the axis height, the start included.
                assert heights[0] >= 0.02, (attribute, arm.name)
                assert heights.min() >= 0.02, (attribute, arm.name)
                assert heights.max() <= 0.98, (attribute, arm.name)


def test_curves_inside_axes_after_divergence():
    arms = diverged_arms()
    _, grid = draw_comparison(arms, log_scale=True)

    for row, (attribute, _, _) in enumerate(figures.ROWS):
        for column, arm in enumerate(arms):
            heights = axes_fractions(grid[row, column], arm.series.step, getattr(arm.series, attribute))
            assert heights[0] >= 0.02, (attribute, arm.name)
            assert heights.min() >= 0.02, (attribute, arm.name)
            assert heights.max() <= 0.98, (attribute, arm.name)


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


def figure_of(kind: str, n_arms: int) -> Figure:
    """Draw a figure with every legend entry: the first arm is clipped and still diverged."""
    diverged = replace(diverged_arms()[0], name="clip_diverged", max_norm=1.0)
    arms = [diverged] + [arm_curves(f"clip_{index}", 0.5) for index in range(n_arms - 1)]
    markers = markers_for(RARE_INDICES, N_SAMPLES, TOTAL_STEPS, show_rare=True)
    limits = shared_limits(arms)
    if kind == "arm":
        return arm_figure(arms[-1], markers, limits, log_scale=True)
    return comparison_figure(arms, markers, limits, log_scale=True)


@pytest.mark.parametrize("kind, n_arms", [("arm", 1), ("arm", 2), ("comparison", 1), ("comparison", 2),
                                          ("comparison", 3), ("comparison", 4)])
def test_legend_outside_every_axes(kind, n_arms):
    figure = figure_of(kind, n_arms)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legend = figure.legends[0].get_window_extent(renderer)

    assert figure.bbox.x0 <= legend.x0
    assert legend.x1 <= figure.bbox.x1
    assert figure.bbox.y0 <= legend.y0
    for axis in figure.axes:
        assert axis.get_legend() is None
        # The tight box contains the axes, their tick labels, axis labels and title.
        assert not legend.overlaps(axis.get_tightbbox(renderer)), axis.get_ylabel()


@pytest.mark.parametrize("kind, n_arms", [("arm", 1), ("comparison", 1), ("comparison", 2)])
def test_legend_keeps_every_entry(kind, n_arms):
    # A single-arm comparison is too narrow for the four entries in one row.
    assert legend_labels(figure_of(kind, n_arms)) == [
        "rare-target sample", "epoch boundary", "clip threshold (max_norm)", "divergence",
    ]


@pytest.mark.parametrize("low, high, major", [
    (0.0, 4.0, [0.0, 1.0]),
    (0.0, 1e5, [0.0, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5]),
    # Eight labels exceed the maximum, so every second decade gets one, and 10^0 none beside 0.
    (0.0, 1e6, [0.0, 100.0, 1e4, 1e6]),
    (-4.0, 3.4e38, [0.0, 1e10, 1e20, 1e30]),
    (28.8, 1e19, [1e3, 1e6, 1e9, 1e12, 1e15, 1e18]),
    (8.0, 8.1, []),
])
def test_symlog_ticks_bounded(low, high, major):
    ticks, minor = symlog_ticks(low, high)

    assert ticks == pytest.approx(major)
    assert len(ticks) <= figures.MAX_LOG_TICKS
    # Every power of ten in range keeps a tick: labelled or minor.
    decades = [10.0**exponent for exponent in range(-1, 40) if max(low, 1.0) <= 10.0**exponent <= high]
    assert sorted(ticks + minor) == pytest.approx(([0.0] if low <= 0.0 else []) + decades)


# Matplotlib's own autoscaling overflows while it widens the data by its
# default margins, before the figure sets its limits, which stay finite.
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
def test_symlog_limits_finite_near_float64_max():
    # An edited per-step file may hold values beyond float32, which training never writes.
    step = np.arange(3)
    huge = StepSeries(step, step + 1, np.array([0.0, 1e300, 1.0]), np.ones(3), np.array([9.0, 1e300, 9.0]))
    arms = [ArmCurves("no_clip", None, huge, 3)]

    limits = shared_limits(arms)
    figure, _ = draw_comparison(arms, log_scale=True)
    figure.canvas.draw()

    for attribute, (low, high) in limits.items():
        assert np.isfinite([low, high]).all(), attribute
    assert limits["loss"][1] > 1e300
    assert symlog_ticks(*limits["loss"])[0] == [0.0, 1e100, 1e200, 1e300]


def test_symlog_labels_readable_after_divergence():
    figure, grid = draw_comparison(diverged_arms(), log_scale=True)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()

    for row in range(len(figures.ROWS)):
        axis = grid[row, 0]
        labels = shown_tick_labels(axis)
        assert 2 <= len(labels) <= figures.MAX_LOG_TICKS, axis.get_ylabel()
        boxes = [label.get_window_extent(renderer) for label in labels]
        for index, box in enumerate(boxes):
            for other in boxes[index + 1:]:
                assert not box.overlaps(other), axis.get_ylabel()
        # The other columns share the row's y-axis and show no labels of their own.
        assert shown_tick_labels(grid[row, 1]) == []


def test_symlog_labels_within_one_decade():
    # An arm that diverged at its first step leaves the other arm's values
    # alone on the symlog axes, where the weight norm spans no power of ten.
    empty = StepSeries(*(np.empty(0) for _ in range(5)))
    arms = [ArmCurves("no_clip", None, empty, 0), arm_curves("clip", 1.0)]
    figure, grid = draw_comparison(arms, log_scale=True)
    figure.canvas.draw()

    weight_labels = shown_tick_labels(grid[2, 0])
    assert 2 <= len(weight_labels) <= figures.MAX_LOG_TICKS
    low, high = grid[2, 0].get_ylim()
    assert low <= 8.0
    assert high >= 8.1


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
    assert "divergence" in legend_labels(figure)


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
