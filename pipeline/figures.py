"""Matplotlib figures of the per-step series: one per arm, and all arms side by side.

Every arm is drawn on the same y-limits per series, so curves can be compared
by eye across figures and columns.
"""

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or wanted

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

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
    figure, axes = plt.subplots(len(ROWS), 1, figsize=(12, 10), sharex=True, squeeze=False)
    _draw_column(axes[:, 0], arm, markers, limits, log_scale=log_scale)
    axes[0, 0].set_title(f"Training {arm.title}", fontsize=14, fontweight="bold")
    axes[0, 0].legend(handles=_legend_handles([arm], markers), loc="upper right", fontsize=9)
    figure.tight_layout()
    return figure


def comparison_figure(
    arms: list[ArmCurves], markers: Markers, limits: dict[str, tuple[float, float]], log_scale: bool = False
) -> Figure:
    columns = len(arms)
    figure, axes = plt.subplots(
        len(ROWS), columns, figsize=(5.5 * columns + 1.5, 11), sharex=True, sharey="row", squeeze=False
    )
    for column, arm in enumerate(arms):
        _draw_column(axes[:, column], arm, markers, limits, label_rows=column == 0, log_scale=log_scale)
        axes[0, column].set_title(arm.title, fontsize=12, fontweight="bold")

    figure.suptitle("Effect of gradient clipping on training stability", fontsize=14, fontweight="bold")
    figure.legend(
        handles=_legend_handles(arms, markers), loc="lower center", ncol=4, fontsize=10, frameon=False
    )
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return figure


def shared_limits(arms: list[ArmCurves]) -> dict[str, tuple[float, float]]:
    """Return y-limits per series that fit every arm's values and clip thresholds.

    The limits are always finite: a per-step file holds only finite values.
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
        if log_scale:
            limits[attribute] = (low, high * 2.0 or 1.0)  # a third of a decade above the peak
        else:
            margin = (high - low) * 0.05 or 1.0
            limits[attribute] = (low, high + margin)
    return limits


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
            axis.set_yscale("symlog", linthresh=1.0)
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
