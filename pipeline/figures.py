"""Matplotlib figures of the per-step series: one per arm, and all arms side by side.

Every arm is drawn on the same y-limits per series, so curves can be compared
by eye across figures and columns. The limits span every arm's values with a
margin on both sides, so no curve runs along an axis edge.
"""

import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or wanted

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.scale import SymmetricalLogScale  # noqa: E402
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator, ScalarFormatter  # noqa: E402

from pipeline.steps import StepSeries  # noqa: E402

# (series attribute, axis label, colour) for the three rows of every figure.
ROWS = (
    ("loss", "Training loss", "tab:blue"),
    ("grad_norm", "Gradient L2 norm\n(before clipping)", "tab:green"),
    ("weight_norm", "Weight L2 norm", "tab:purple"),
)
RARE_COLOR = "tab:red"
THRESHOLD_COLOR = "tab:red"
DIVERGED_COLOR = "black"

# Symmetric log scale of every y-axis once an arm diverged: linear between -1 and 1.
SYMLOG = {"base": 10, "linthresh": 1.0, "linscale": 1.0}
# Part of the y-range, on the axis's own scale, left empty below and above the data.
LIMIT_MARGIN = 0.05
# Labelled ticks per symlog y-axis, zero included: a diverged arm spans up to 39
# decades, and a label per decade overlaps its neighbours on a 3-inch panel.
MAX_LOG_TICKS = 7
# Spacings between labelled decades, smallest first. Training writes float32
# values, at most 39 decades, but 100 keeps even float64's 309 within MAX_LOG_TICKS.
DECADE_STRIDES = (1, 2, 3, 5, 10, 20, 50, 100)


@dataclass(frozen=True)
class ArmCurves:
    name: str
    max_norm: float | None
    series: StepSeries
    diverged_at_step: int | None

    @property
    def title(self) -> str:
        clipping = "no clipping" if self.max_norm is None else f"clipped at max_norm={self.max_norm:g}"
        return f"{self.name} ({clipping})"


@dataclass(frozen=True)
class Markers:
    total_steps: int  # x-axis extent, the longest arm's step count
    rare_steps: np.ndarray  # global steps that trained on a rare sample
    epoch_starts: np.ndarray  # first step of every epoch after the first
    show_rare: bool


def markers_for(rare_indices: np.ndarray, n_samples: int, total_steps: int, show_rare: bool) -> Markers:
    """Place the rare-sample and epoch markers for a run of `total_steps` steps."""
    n_epochs = -(-total_steps // n_samples)  # ceiling: a diverged run ends mid-epoch
    offsets = np.arange(n_epochs, dtype=np.int64) * n_samples
    # (epochs, 1) + (1, n_rare): every rare position in every epoch, without a Python loop.
    rare_steps = (offsets[:, None] + rare_indices[None, :]).ravel()
    return Markers(
        total_steps=total_steps,
        rare_steps=rare_steps[rare_steps < total_steps],
        epoch_starts=offsets[1:],
        show_rare=show_rare,
    )


def arm_figure(
    arm: ArmCurves, markers: Markers, limits: dict[str, tuple[float, float]], log_scale: bool = False
) -> Figure:
    figure, axes = plt.subplots(
        len(ROWS), 1, figsize=(12, 10), sharex=True, squeeze=False, layout="constrained"
    )
    _draw_column(axes[:, 0], arm, markers, limits, log_scale=log_scale)
    axes[0, 0].set_title(f"Training {arm.title}", fontsize=14, fontweight="bold")
    _add_legend(figure, [arm], markers)
    return figure


def comparison_figure(
    arms: list[ArmCurves], markers: Markers, limits: dict[str, tuple[float, float]], log_scale: bool = False
) -> Figure:
    columns = len(arms)
    figure, axes = plt.subplots(
        len(ROWS), columns, figsize=(5.5 * columns + 1.5, 11), sharex=True, sharey="row", squeeze=False,
        layout="constrained",
    )
    for column, arm in enumerate(arms):
        _draw_column(axes[:, column], arm, markers, limits, label_rows=column == 0, log_scale=log_scale)
        axes[0, column].set_title(arm.title, fontsize=12, fontweight="bold")

    figure.suptitle("Effect of gradient clipping on training stability", fontsize=14, fontweight="bold")
    _add_legend(figure, arms, markers)
    return figure


def shared_limits(arms: list[ArmCurves]) -> dict[str, tuple[float, float]]:
    """Return y-limits per series that fit every arm's values and clip thresholds, with margins.

    The limits come from the union of all arms, so an arm whose values another
    arm's dwarf still starts and ends inside the axes. They are always finite:
    a per-step file holds only finite values.
    """
    log_scale = uses_log_scale(arms)
    limits = {}
    for attribute, _, _ in ROWS:
        values = [getattr(arm.series, attribute) for arm in arms if len(arm.series)]
        if attribute == "grad_norm":
            values += [np.array([arm.max_norm]) for arm in arms if arm.max_norm is not None]
        if not values:
            limits[attribute] = (0.0, 1.0)
            continue
        low = min(float(np.min(value)) for value in values)
        high = max(float(np.max(value)) for value in values)
        if attribute != "weight_norm":
            # Loss and gradient norm spike up from near zero: anchor them at zero.
            # The weight norm moves within a narrow band far from zero.
            low = min(low, 0.0)
        limits[attribute] = _add_margins(low, high, log_scale)
    return limits


def _add_margins(low: float, high: float, log_scale: bool) -> tuple[float, float]:
    """Widen [low, high] by LIMIT_MARGIN of its height on each side, measured on the axis's scale.

    On a symlog axis a margin measured in data units would vanish below a
    spike of 1e30, so the margin is taken in the scale's transformed units.
    """
    if not log_scale:
        margin = (high - low) * LIMIT_MARGIN or 1.0
        return low - margin, high + margin

    transform = SymmetricalLogScale(None, **SYMLOG).get_transform()
    start, end = transform.transform(np.array([low, high]))
    margin = (end - start) * LIMIT_MARGIN or 1.0
    # For values above about 1e293 the margin overflows to infinity, which
    # matplotlib rejects as a limit, so the largest finite float replaces it.
    with np.errstate(over="ignore"):
        padded = transform.inverted().transform(np.array([start - margin, end + margin]))
    padded_low, padded_high = np.nan_to_num(padded)
    return float(padded_low), float(padded_high)


def symlog_ticks(low: float, high: float) -> tuple[list[float], list[float]]:
    """Return the major and minor y-ticks of a symlog axis from `low` to `high`.

    Major ticks, the labelled ones, are zero and powers of ten at a regular
    stride, at most MAX_LOG_TICKS in all. Minor ticks mark the other powers of
    ten. No series plotted has values below zero, so no negative ticks are placed.
    """
    zero = [0.0] if low <= 0.0 <= high else []
    first = math.ceil(math.log10(max(low, SYMLOG["linthresh"])))
    last = math.floor(math.log10(high)) if high >= SYMLOG["linthresh"] else first - 1
    exponents = range(first, last + 1)
    budget = MAX_LOG_TICKS - len(zero)
    stride = next(stride for stride in DECADE_STRIDES if math.ceil(len(exponents) / stride) <= budget)

    labelled = [exponent for exponent in exponents if exponent % stride == 0]
    if zero and stride > 1:
        # 0 and 10^0 sit one decade apart, a sliver of an axis that spans many
        # decades, so their labels would overlap.
        labelled = [exponent for exponent in labelled if exponent != 0]
    major = zero + [10.0**exponent for exponent in labelled]
    minor = [10.0**exponent for exponent in exponents if exponent not in labelled]
    return major, minor


def uses_log_scale(arms: list[ArmCurves]) -> bool:
    """Return whether the y-axes are logarithmic: when an arm diverged.

    A diverging arm's values grow by up to 38 orders of magnitude (float32
    overflows above 3.4e38), which on a linear axis flattens every other arm
    to zero. A symmetric log scale, linear between -1 and 1, keeps the zero
    losses of a converged arm visible.
    """
    return any(arm.diverged_at_step is not None for arm in arms)


def _draw_column(
    axes, arm: ArmCurves, markers: Markers, limits, label_rows: bool = True, log_scale: bool = False
) -> None:
    series = arm.series
    for axis, (attribute, label, color) in zip(axes, ROWS):
        axis.plot(series.step, getattr(series, attribute), color=color, alpha=0.8, linewidth=0.5)
        if log_scale:
            axis.set_yscale("symlog", **SYMLOG)
            _set_symlog_ticks(axis.yaxis, *limits[attribute])
        axis.set_ylim(*limits[attribute])
        axis.grid(True, alpha=0.3)
        if label_rows:
            axis.set_ylabel(label, fontsize=11)

        # One vlines call per axis: a line per rare step would be thousands of artists.
        if markers.show_rare and len(markers.rare_steps):
            axis.vlines(
                markers.rare_steps, 0, 1, transform=axis.get_xaxis_transform(),
                color=RARE_COLOR, alpha=0.25, linewidth=0.5,
            )
        if len(markers.epoch_starts):
            axis.vlines(
                markers.epoch_starts, 0, 1, transform=axis.get_xaxis_transform(),
                color="grey", linestyle=":", linewidth=1,
            )
        if arm.diverged_at_step is not None:
            axis.axvline(arm.diverged_at_step, color=DIVERGED_COLOR, linestyle="--", linewidth=1.5)

    if arm.max_norm is not None:
        axes[1].axhline(arm.max_norm, color=THRESHOLD_COLOR, linestyle="--", linewidth=1.5)
    if arm.diverged_at_step is not None:
        # Write the label on the side of the line with more room, so it stays inside the axes.
        left_half = arm.diverged_at_step < markers.total_steps / 2
        axes[0].annotate(
            f"diverged at step {arm.diverged_at_step}", xy=(arm.diverged_at_step, 0.95),
            xycoords=axes[0].get_xaxis_transform(), xytext=(4 if left_half else -4, 0), textcoords="offset points",
            ha="left" if left_half else "right", va="top", fontsize=9,
        )
    axes[-1].set_xlabel("Training step", fontsize=11)
    axes[-1].set_xlim(0, max(markers.total_steps, 1))


def _set_symlog_ticks(y_axis, low: float, high: float) -> None:
    major, minor = symlog_ticks(low, high)
    if len(major) >= 2:
        y_axis.set_major_locator(FixedLocator(major))
        y_axis.set_minor_locator(FixedLocator(minor))
        return

    # The range contains no power of ten above the linear part, as when the only
    # diverged arm stopped at its first step. Linear ticks label it instead.
    y_axis.set_major_locator(MaxNLocator(MAX_LOG_TICKS - 1))
    y_axis.set_major_formatter(ScalarFormatter())
    y_axis.set_minor_locator(NullLocator())


def _add_legend(figure: Figure, arms: list[ArmCurves], markers: Markers) -> None:
    """Add the legend below the panels, outside every axes, so it covers no data.

    Constrained layout shrinks the panels to make room for it. The entries go
    in one row, or in more rows when one row is wider than the figure, as in
    a comparison of a single arm.
    """
    handles = _legend_handles(arms, markers)
    renderer = figure.canvas.get_renderer()
    for columns in range(len(handles), 0, -1):
        legend = figure.legend(
            handles=handles, loc="outside lower center", ncol=columns, fontsize=10, frameon=False
        )
        if columns == 1 or legend.get_window_extent(renderer).width <= figure.bbox.width:
            return
        legend.remove()


def _legend_handles(arms: list[ArmCurves], markers: Markers) -> list[Line2D]:
    # Proxy artists describe the markers without adding lines to any axis.
    handles = []
    if markers.show_rare and len(markers.rare_steps):
        handles.append(Line2D([], [], color=RARE_COLOR, alpha=0.5, linewidth=1.5, label="rare-target sample"))
    if len(markers.epoch_starts):
        handles.append(Line2D([], [], color="grey", linestyle=":", linewidth=1, label="epoch boundary"))
    if any(arm.max_norm is not None for arm in arms):
        handles.append(Line2D([], [], color=THRESHOLD_COLOR, linestyle="--", label="clip threshold (max_norm)"))
    if any(arm.diverged_at_step is not None for arm in arms):
        handles.append(Line2D([], [], color=DIVERGED_COLOR, linestyle="--", label="divergence"))
    return handles
