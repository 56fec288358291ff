"""The figures of a run report, drawn with matplotlib's Agg canvas (no pyplot, no display,
no global figure state) from the frames of `pipeline.report` and returned as PNG bytes.
Every per-step figure shares one x axis: a position per manifest, rounds shaded."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import cycle

import matplotlib
import polars as pl
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.patheffects import withStroke
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from pipeline.label_noise import SUSPECT_LABEL
from pipeline.report import OVERALL, ReportData
from pipeline.trajectories import SETTLED, TRAJECTORY_STATES, UNDETERMINED, WANDERING

# Groups drawn one by one up to this many; beyond it a plot would be a tangle, so the
# distributions show all groups together and the pool the largest groups only.
MAX_GROUPS = 6
# Small multiples of the most unsettled samples: more would be too small to read.
MAX_TRAJECTORY_PANELS = 12
DPI = 110
WIDTH = 11.0

GROUP_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#8172B3", "#937860", "#DA8BC3")
OTHER_GROUPS_COLOR = "#8C8C8C"
# Likely-mislabeled samples and the quarantine's reason, in every figure.
NOISE_COLOR = "#5B3F8C"
ALL_GROUPS_COLOR = "#7F8FA6"
REASON_COLORS = {
    "mastered": "#C44E52",
    "above_floor": "#E6A157",
    "learning": "#6A8FC7",
    "baseline": "#C8C8C8",
    "kept": "#7DB489",
    SUSPECT_LABEL: NOISE_COLOR,
}
OTHER_REASON_COLORS = ("#8172B3", "#937860", "#DA8BC3", "#64B5CD")
STATE_COLORS = {SETTLED: "#55A868", WANDERING: "#DD8452", UNDETERMINED: "#C8C8C8"}
ROUND_SHADE = "#F1F3F6"
# Above this ratio of the largest to the smallest loss quantile, the loss axis is
# logarithmic: later rounds' losses (and floors) would otherwise be a flat line at zero.
LOG_LOSS_RATIO = 30.0
NOT_SCORED = "No epoch of this run has been scored yet."
NO_NOISE_ESTIMATE = (
    "No label-noise estimate recorded: this run was made before stm-curate recorded one in "
    "its manifests."
)
WARNING_COLOR = "#C44E52"
STYLE = {
    "font.size": 9.5,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 9.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#888888",
    "axes.grid": True,
    "axes.grid.axis": "y",
    "grid.color": "#E3E3E3",
    "grid.linewidth": 0.8,
    "legend.frameon": False,
    "legend.fontsize": 9,
    "xtick.color": "#444444",
    "ytick.color": "#444444",
}


@contextmanager
def _figure(height: float, **subplots: object) -> Iterator[tuple[Figure, object]]:
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(WIDTH, height), dpi=DPI, layout="constrained")
        FigureCanvasAgg(figure)
        yield figure, figure.subplots(**subplots)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    # No timestamp or software metadata: the same run gives the same bytes.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _group_colors(groups: list[str]) -> dict[str, str]:
    """Colours by sorted group name, so a group keeps its colour in every report."""
    return {g: GROUP_COLORS[i % len(GROUP_COLORS)] for i, g in enumerate(sorted(groups))}


def _reason_colors(reasons: list[str]) -> dict[str, str]:
    """Known reasons keep their colour in every report; another policy's reasons get the
    spare ones."""
    spare = cycle(OTHER_REASON_COLORS)
    return {r: REASON_COLORS.get(r) or next(spare) for r in reasons}


def _thousands(value: float, _position: int) -> str:
    return f"{value:,.0f}"


def _compact(value: float, _position: int) -> str:
    """Token counts as 250k or 1.2M: full digits collide on a shared axis."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


def _step_axis(ax: Axes, data: ReportData, label_rounds: bool = True) -> None:
    """Shade every other round, label each round (with its floor when the policy has
    one) and tick each step with its epoch: the reader sees where the pool was reset."""
    steps = data.steps
    last = steps.height - 1
    for index, (round_index, rows) in enumerate(steps.group_by("round", maintain_order=True)):
        start, end = rows["step"].min(), rows["step"].max()
        if index % 2 == 0:
            ax.axvspan(start - 0.5, end + 0.5, color=ROUND_SHADE, zorder=0, lw=0)
        if label_rounds:
            floor = rows["floor"][0]
            text = f"round {round_index[0]}" + ("" if floor is None else f"  ·  floor {floor:g}")
            ax.text(
                (start + end) / 2,
                1.0,
                text,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8.5,
                color="#555555",
            )
    every = max(1, -(-steps.height // 40))
    ticks = steps.filter(pl.col("step") % every == 0)
    ax.set_xticks(ticks["step"].to_list(), [str(e) for e in ticks["epoch"]])
    ax.set_xlim(-0.6, last + 0.6)
    ax.tick_params(axis="x", length=0)


def _empty(ax: Axes, message: str) -> None:
    ax.text(
        0.5,
        0.5,
        message,
        transform=ax.transAxes,
        ha="center",
        va="center",
        color="#777777",
        fontsize=11,
    )


def _pool_series(data: ReportData) -> list[tuple[str, pl.DataFrame]]:
    """Pool size per step of each group drawn: every group when there are few, else the
    largest ones and the rest summed as one line."""
    groups = data.groups
    if len(groups) <= MAX_GROUPS:
        shown, rest = groups, []
    else:
        shown, rest = groups[: MAX_GROUPS - 1], groups[MAX_GROUPS - 1 :]
    series = [(g, data.pool.filter(pl.col("group") == g)) for g in shown]
    if rest:
        others = (
            data.pool.filter(pl.col("group").is_in(rest))
            .group_by("step", "round", maintain_order=True)
            .agg(pl.col("size").sum())
        )
        series.append((f"{len(rest)} other groups", others))
    return series


def _round_lines(
    ax: Axes, frame: pl.DataFrame, color: str, label: str, width: float, column: str = "size"
) -> None:
    """One line segment per round of `column` against the step, so no line runs through
    a reset."""
    for index, (_, rows) in enumerate(frame.group_by("round", maintain_order=True)):
        ax.plot(
            rows["step"],
            rows[column],
            color=color,
            marker="o",
            markersize=3.5,
            lw=width,
            label=label if index == 0 else None,
        )


def _left(frame: pl.DataFrame) -> str:
    first, last = frame["size"][0], frame["size"][-1]
    return f"{last:,} left ({last / first:.0%})" if first else f"{last:,} left"


def pool_plot(data: ReportData) -> bytes:
    """The pool in total (top) and per group (bottom, on its own scale so a small group's
    shrinking shows), per step; the legend gives each final size and share."""
    totals = data.steps.select("step", "round", size="pool")
    series = _pool_series(data) if len(data.groups) > 1 else []
    colors = _group_colors(data.groups[:MAX_GROUPS])
    panels = 2 if series else 1
    layout = {"nrows": panels, "sharex": True, "squeeze": False}
    if series:
        layout["height_ratios"] = [1, 1.6]
    with _figure(2.4 + 2.3 * panels, **layout) as (figure, axes):
        top = axes[0][0]
        _round_lines(top, totals, "#222222", f"total: {_left(totals)}", 2.2)
        top.set_ylabel("samples in pool")
        for name, frame in series:
            color = colors.get(name, OTHER_GROUPS_COLOR)
            _round_lines(axes[1][0], frame, color, f"{name}: {_left(frame)}", 1.8)
        if series:
            axes[1][0].set_ylabel("samples per group")
        for index, ax in enumerate(axes[:, 0]):
            _step_axis(ax, data, label_rounds=index == 0)
            ax.set_ylim(bottom=0)
            ax.yaxis.set_major_formatter(FuncFormatter(_thousands))
        axes[-1][0].set_xlabel("epoch within round (rounds shaded; epoch 0 is the reset pool)")
        figure.legend(loc="outside right upper")
        return _png(figure)


def _stacked_bars(
    ax: Axes, frame: pl.DataFrame, key: str, value: str, colors: dict[str, str]
) -> None:
    bottoms: dict[int, float] = {}
    for name in colors:
        rows = frame.filter(pl.col(key) == name)
        if rows.is_empty():
            continue
        steps = rows["step"].to_list()
        heights = rows[value].to_list()
        ax.bar(
            steps,
            heights,
            bottom=[bottoms.get(s, 0.0) for s in steps],
            color=colors[name],
            width=0.75,
            label=name,
            zorder=2,
        )
        for step, height in zip(steps, heights, strict=True):
            bottoms[step] = bottoms.get(step, 0.0) + height


def drops_plot(data: ReportData) -> bytes:
    """Top: samples dropped per step, stacked by reason, totals on the bars. Bottom: what
    the policy decided for every scored sample, as shares, which explains the drops (or
    their absence: a pool stuck `above_floor` has a floor nothing reaches)."""
    reasons = sorted(set(data.decisions["reason"]) | set(data.drops["reason"]))
    colors = _reason_colors(reasons)
    with _figure(6.0, nrows=2, sharex=True, height_ratios=[1.2, 1]) as (figure, (top, bottom)):
        if data.drops.is_empty():
            _empty(top, "no sample dropped")
        else:
            _stacked_bars(top, data.drops, "reason", "dropped", colors)
            totals = data.drops.group_by("step").agg(pl.col("dropped").sum())
            for step, total in totals.iter_rows():
                top.annotate(
                    f"{total:,}",
                    (step, total),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
            top.margins(y=0.15)
        top.set_ylabel("samples dropped")
        top.yaxis.set_major_formatter(FuncFormatter(_thousands))
        top.yaxis.set_major_locator(MaxNLocator(integer=True))
        shares = data.decisions.with_columns(
            share=pl.col("count") / pl.col("count").sum().over("step")
        )
        _stacked_bars(bottom, shares, "reason", "share", colors)
        bottom.set_ylim(0, 1)
        bottom.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        bottom.set_ylabel("decisions by reason")
        _step_axis(top, data)
        _step_axis(bottom, data, label_rounds=False)
        bottom.set_xlabel("epoch within round (rounds shaded)")
        handles = [Patch(color=colors[r], label=r) for r in reasons]
        figure.legend(handles=handles, loc="outside right upper", title="reason")
        return _png(figure)


def _box_groups(data: ReportData) -> list[str | None]:
    """The groups drawn side by side in the distribution plots, or None: all as one."""
    groups = data.groups
    return list(groups) if 1 < len(groups) <= MAX_GROUPS else [None]


def _boxes(ax: Axes, stats: pl.DataFrame, groups: list[str | None], colors: dict[str, str]) -> None:
    """Box plots from precomputed quantiles: box p25-p75, line at the median, whiskers
    p5-p95; the groups of a step side by side within its slot (None: all groups)."""
    width = 0.8 / len(groups)
    for index, group in enumerate(groups):
        same = pl.col("group").is_null() if group is None else pl.col("group") == group
        rows = stats.filter(same)
        if rows.is_empty():
            continue
        offset = (index - (len(groups) - 1) / 2) * width
        boxes = [
            {
                "med": row["p50"],
                "q1": row["p25"],
                "q3": row["p75"],
                "whislo": row["p05"],
                "whishi": row["p95"],
                "label": "",
            }
            for row in rows.iter_rows(named=True)
        ]
        color = colors.get(group or "", ALL_GROUPS_COLOR)
        ax.bxp(
            boxes,
            positions=[s + offset for s in rows["step"]],
            widths=width * 0.85,
            showfliers=False,
            patch_artist=True,
            manage_ticks=False,
            boxprops={"facecolor": color, "edgecolor": color, "alpha": 0.85},
            # white on the box, outlined in the box's colour so a box with no spread
            # (every sample at one loss) still shows its median
            medianprops={
                "color": "white",
                "lw": 1.6,
                "path_effects": [withStroke(linewidth=3.2, foreground=color)],
            },
            whiskerprops={"color": color, "lw": 1.1},
            capprops={"color": color, "lw": 1.1},
            zorder=3,
        )


def distributions_plot(data: ReportData) -> bytes:
    """Loss (top) and delta (bottom) per scored step as box plots per group, with the
    policy drawn in: each round's mastery floor on the loss, the delta threshold and the
    settling band on the delta."""
    groups = _box_groups(data)
    colors = _group_colors([g for g in groups if g is not None])
    with _figure(7.0, nrows=2, sharex=True) as (figure, (top, bottom)):
        _boxes(top, data.loss_stats, groups, colors)
        floors = (
            data.steps.filter(pl.col("kind") == "prune")
            .group_by("round")
            .agg(
                pl.col("step").min().alias("start"),
                pl.col("step").max().alias("end"),
                pl.col("floor").first(),
            )
        )
        for start, end, floor in floors.select("start", "end", "floor").iter_rows():
            if floor is not None:
                top.hlines(floor, start - 0.45, end + 0.45, colors="#C44E52", ls="--", lw=1.3)
        low, high = data.loss_stats["p05"].min(), data.loss_stats["p95"].max()
        if low is not None and low > 0 and high / low > LOG_LOSS_RATIO:
            top.set_yscale("log")
            top.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            top.set_ylabel("loss (nats, log scale)")
        else:
            top.set_ylabel("loss (nats)")
        _step_axis(top, data)
        _boxes(bottom, data.delta_stats, groups, colors)
        band = data.params.band
        bottom.axhspan(-band, band, color="#55A868", alpha=0.18, lw=0, zorder=1)
        bottom.axhline(0, color="#999999", lw=0.8, zorder=1)
        thresholds = data.steps.filter(
            (pl.col("kind") == "prune") & (pl.col("delta_mode") == "absolute")
        )["delta_threshold"].unique()
        thresholds = thresholds.drop_nulls()
        for threshold in thresholds:
            bottom.axhline(threshold, color="#C44E52", ls="--", lw=1.3, zorder=1)
        bottom.set_ylabel("delta = loss_prev - loss")
        _step_axis(bottom, data, label_rounds=False)
        bottom.set_xlabel("epoch within round (rounds shaded; a round's first epoch has no delta)")
        handles = [
            Patch(color=colors.get(g or "", ALL_GROUPS_COLOR), label=g or "all groups")
            for g in groups
        ]
        handles += [
            Line2D(
                [],
                [],
                color="#C44E52",
                ls="--",
                label="floor / delta threshold" if len(thresholds) else "mastery floor",
            ),
            Patch(color="#55A868", alpha=0.3, label=f"settling band ±{band:g}"),
        ]
        figure.legend(handles=handles, loc="outside right upper")
        return _png(figure)


def quality_plot(data: ReportData) -> bytes:
    """Held-out accuracy (or the external trainer's metrics, one row each) against
    cumulative tokens: trained only (left) and trained + scored (right). The dotted line
    is what Standard would have trained in the same epochs."""
    quality = data.quality.with_columns(compute=pl.col("trained") + pl.col("scored_tokens"))
    if data.quality_source == "accuracy":
        rows = [None]
        # per group when few enough to tell apart, else only over all groups
        groups = data.groups if len(data.groups) <= MAX_GROUPS else []
        series = [g for g in groups if g in set(quality["series"])] + [OVERALL]
    else:
        rows = sorted(set(quality["series"]))[:4]
        series = []
    colors = _group_colors([s for s in series if s != OVERALL])
    # A reset's record carries the tokens spent before its round: where the round starts.
    round_starts = data.steps.filter((pl.col("kind") == "reset") & (pl.col("round") > 0))
    round_starts = round_starts.with_columns(compute=pl.col("trained") + pl.col("scored_tokens"))
    standard = data.standard_tokens
    with _figure(3.6 * len(rows) + 0.4, nrows=len(rows), ncols=2, sharey="row", squeeze=False) as (
        figure,
        axes,
    ):
        for row, metric in zip(axes, rows, strict=True):
            for ax, x, xlabel in zip(
                row,
                ("trained", "compute"),
                ("target tokens trained", "target tokens trained + scored"),
                strict=True,
            ):
                names = series if metric is None else [metric]
                for name in names:
                    line = quality.filter(pl.col("series") == name).sort("step")
                    overall = name == OVERALL
                    ax.plot(
                        line[x],
                        line["value"],
                        marker="o",
                        markersize=3,
                        lw=2.2 if overall else 1.6,
                        ls="--" if overall else "-",
                        color="#222222" if overall or metric else colors[name],
                        label="all groups"
                        if overall
                        else (name if metric is None else "trainer metric"),
                    )
                for round_index, at in round_starts.select("round", x).iter_rows():
                    ax.axvline(at, color="#BBBBBB", lw=0.8)
                    ax.text(
                        at,
                        1.0,
                        f" r{round_index}",
                        transform=ax.get_xaxis_transform(),
                        fontsize=8,
                        color="#777777",
                        va="top",
                    )
                if standard:
                    ax.axvline(
                        standard,
                        color="#444444",
                        ls=":",
                        lw=1.5,
                        label="Standard's tokens,\nsame epochs" if ax is row[0] else None,
                    )
                ax.set_xlabel(xlabel)
                ax.xaxis.set_major_formatter(FuncFormatter(_compact))
                ax.grid(True, axis="x")
            row[0].set_ylabel("held-out accuracy" if metric is None else metric)
            if metric is None:
                row[0].set_ylim(-0.02, 1.02)
        figure.legend(*axes[0][0].get_legend_handles_labels(), loc="outside right upper")
        return _png(figure)


def trajectory_counts_plot(data: ReportData) -> bytes:
    """Per round and group, the share of samples that settled, kept wandering or could not
    be judged, as horizontal 100% bars with the counts written in."""
    counts = data.counts  # by round and group name, as in the table below the figure
    if len(data.groups) > MAX_GROUPS:
        counts = counts.group_by("round").agg(pl.col(*TRAJECTORY_STATES, "total").sum())
        counts = counts.with_columns(group=pl.lit("all groups")).sort("round")
    labels = [f"round {r}  ·  {g}" for r, g in counts.select("round", "group").iter_rows()]
    with _figure(1.2 + 0.42 * max(counts.height, 1)) as (figure, ax):
        left = [0.0] * counts.height
        for state in TRAJECTORY_STATES:
            shares = [
                c / t if t else 0.0 for c, t in zip(counts[state], counts["total"], strict=True)
            ]
            ax.barh(labels, shares, left=left, color=STATE_COLORS[state], label=state, zorder=2)
            for y, (start, share, count) in enumerate(
                zip(left, shares, counts[state], strict=True)
            ):
                if share >= 0.06:
                    ax.text(
                        start + share / 2,
                        y,
                        f"{count:,}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if state != UNDETERMINED else "#333333",
                    )
            left = [a + b for a, b in zip(left, shares, strict=True)]
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.grid(True, axis="x")
        ax.grid(False, axis="y")
        ax.set_xlabel("share of the group's samples")
        figure.legend(loc="outside right upper")
        return _png(figure)


def unsettled_plot(data: ReportData) -> bytes:
    """Small multiples of the most unsettled samples' loss per epoch; a point is green
    when its change from the previous epoch was within the band, orange when not, hollow
    for the round's baseline pass."""
    top = data.unsettled.head(MAX_TRAJECTORY_PANELS)
    columns = 4
    rows = max(1, -(-top.height // columns))
    band = data.params.band
    with _figure(2.1 * rows + 0.3, nrows=rows, ncols=columns, sharey=True, squeeze=False) as (
        figure,
        axes,
    ):
        flat = [ax for row in axes for ax in row]
        for ax, sample in zip(flat, top.iter_rows(named=True), strict=False):
            history = data.unsettled_history.filter(
                (pl.col("round") == sample["round"]) & (pl.col("sample_id") == sample["sample_id"])
            )
            ax.plot(history["epoch"], history["loss"], color="#999999", lw=1.2, zorder=2)
            for epoch, loss, delta in history.select("epoch", "loss", "delta").iter_rows():
                if delta is None:
                    style = {"facecolor": "white", "edgecolor": "#777777"}
                else:
                    color = STATE_COLORS[SETTLED if abs(delta) <= band else WANDERING]
                    style = {"facecolor": color, "edgecolor": color}
                ax.scatter([epoch], [loss], s=22, zorder=3, **style)
            ax.set_title(
                f"{sample['sample_id']}\nround {sample['round']} · {sample['group']} · "
                f"wander {sample['wander']:.2f}",
                fontsize=8.5,
                fontweight="normal",
            )
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=8)
        for ax in flat[top.height :]:
            ax.set_axis_off()
        for row in axes:
            row[0].set_ylabel("loss")
        return _png(figure)


def noise_plot(data: ReportData) -> bytes:
    """Top: the likely-mislabeled share of the pool after each step, one line per round,
    with the share above which the round warns (dashed: the growth threshold times the
    round's first judged share) and the steps that warned circled. Bottom, when the guard
    quarantined any: the samples quarantined per step."""
    noise = data.noise
    quarantined = noise.filter(pl.col("quarantined") > 0)
    panels = 2 if quarantined.height else 1
    layout = {"nrows": panels, "sharex": True, "squeeze": False}
    with _figure(1.2 + 2.6 * panels, **layout) as (figure, axes):
        top = axes[0][0]
        shares = noise.filter(pl.col("share").is_not_null())
        if shares.is_empty():
            _empty(top, "no share yet: every step so far was within the warm-up")
        _round_lines(top, shares, NOISE_COLOR, "likely-mislabeled share", 2, column="share")
        for index, (_, rows) in enumerate(shares.group_by("round", maintain_order=True)):
            # the round's start is set at its first step with a share above 0, maybe late
            starts = rows["round_start_share"].drop_nulls()
            start = starts[-1] if starts.len() else None
            threshold = rows["growth_threshold"][0]
            # a share cannot pass 100%: above it, the round could not have warned
            if start and threshold and start * threshold < 1:
                top.hlines(
                    start * threshold,
                    rows["step"].min() - 0.45,
                    rows["step"].max() + 0.45,
                    colors=WARNING_COLOR,
                    ls="--",
                    lw=1.3,
                    label="warns above" if index == 0 else None,
                )
        warned = shares.filter(pl.col("warning").is_not_null())
        if warned.height:
            top.scatter(
                warned["step"],
                warned["share"],
                s=90,
                facecolors="none",
                edgecolors=WARNING_COLOR,
                linewidths=1.8,
                zorder=4,
                label="warning",
            )
        top.set_ylim(0, min(1.05, top.get_ylim()[1]) if shares.height else 1.0)
        top.yaxis.set_major_formatter(PercentFormatter(1.0))
        top.set_ylabel("share of the pool")
        if quarantined.height:
            bottom = axes[1][0]
            bottom.bar(
                quarantined["step"],
                quarantined["quarantined"],
                color=NOISE_COLOR,
                width=0.75,
                zorder=2,
                label=f"quarantined ({SUSPECT_LABEL})",
            )
            bottom.set_ylabel("samples quarantined")
            bottom.yaxis.set_major_formatter(FuncFormatter(_thousands))
            bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
        for index, ax in enumerate(axes[:, 0]):
            _step_axis(ax, data, label_rounds=index == 0)
        axes[-1][0].set_xlabel("epoch within round (rounds shaded)")
        if any(ax.get_legend_handles_labels()[0] for ax in axes[:, 0]):
            figure.legend(loc="outside right upper")
        return _png(figure)


Renderer = Callable[[ReportData], bytes]


@dataclass(frozen=True)
class Section:
    """One figure of the report: `name` is its file stem and anchor, `note` the sentence
    that tells a reader what it shows, `missing` why this run has nothing to draw (the
    page says so instead of showing an empty plot)."""

    name: str
    title: str
    note: str
    renderer: Renderer
    missing: str | None = None


@dataclass(frozen=True)
class Plot:
    """A rendered section: its PNG, or None when the run has nothing to draw."""

    section: Section
    png: bytes | None


def sections(data: ReportData) -> list[Section]:
    """The report's figures in page order, each with what it shows or why it is missing."""
    band, window = data.params.band, data.params.window
    unscored = None if data.steps.filter(pl.col("kind") == "prune").height else NOT_SCORED
    quality_title = (
        "Trainer metrics vs compute"
        if data.quality_source == "trainer"
        else "Held-out accuracy vs compute"
    )
    what = "trainer's metrics" if data.quality_source == "trainer" else "held-out accuracy"
    return [
        Section(
            "pool",
            "Pool size per group",
            "How many samples of each group are still in the pool after each epoch; every "
            "round starts again from the whole dataset (epoch 0).",
            pool_plot,
            None if data.manifests else "This run has no manifest yet.",
        ),
        Section(
            "drops",
            "Drops per reason",
            "Samples the policy removed after each epoch by reason (top), and the share of "
            "every decision by reason (bottom), which says why the rest stayed.",
            drops_plot,
            unscored,
        ),
        Section(
            "distributions",
            "Loss and delta per epoch",
            "Box plots of every scored sample's loss and loss drop (box: middle half, "
            "whiskers: 5th to 95th percentile) per group, with each round's mastery floor, "
            "the delta threshold (dashed) and the settling band (green).",
            distributions_plot,
            unscored,
        ),
        Section(
            "quality",
            quality_title,
            f"The {what} after each epoch against the cumulative target tokens trained "
            "(left) and trained plus scored (right); the dotted line marks what Standard "
            "trains in the same number of epochs.",
            quality_plot,
            None
            if data.quality_source
            else "No held-out accuracy in this run: it has no held-out set, or its external "
            "trainer reports no metrics.",
        ),
        Section(
            "trajectories",
            "Which samples settle",
            f"Per round, the samples whose loss change stayed within ±{band:g} nats for the "
            f"last {window} or more of their epochs (settled), those still moving at the end "
            "of the round (wandering), and those with too short a history or dropped before "
            "settling (undetermined).",
            trajectory_counts_plot,
            unscored,
        ),
        Section(
            "unsettled",
            "The most unsettled samples",
            "Loss per epoch of the wandering samples with the largest mean |delta|: green "
            "points moved less than the band since the previous epoch, orange ones more.",
            unsettled_plot,
            unscored or (None if data.unsettled.height else "No sample kept wandering."),
        ),
        Section(
            "noise",
            "Likely-mislabeled samples",
            _noise_note(data),
            noise_plot,
            unscored or (None if data.noise.height else NO_NOISE_ESTIMATE),
        ),
    ]


def _noise_note(data: ReportData) -> str:
    """What the noise figure shows, with the criterion's parameters as the run used them."""
    if data.noise.is_empty():
        return ""
    last = data.noise.row(-1, named=True)
    guard = (
        f"the guard quarantined them (reason {SUSPECT_LABEL}), so the share stays near 0"
        if last["guard"]
        else "the guard was off: they stayed in the pool"
    )
    return (
        "A sample is likely mislabeled when, after the first "
        f"{last['warmup']} passes of its round, its loss has never been below "
        f"{last['high_loss']:g} nats and is not falling; a loss alone cannot tell it from "
        f"a clean sample the model cannot fit yet. The share of the pool they make up "
        f"after each epoch, and a warning when it grows more than "
        f"{last['growth_threshold']:g} times within a round; {guard}."
    )


def render_plots(data: ReportData, on_plot: Callable[[str], None] | None = None) -> list[Plot]:
    """Every section of the report, drawn when there is something to draw;
    `on_plot(title)` is called before each, for progress displays."""
    rendered = []
    for section in sections(data):
        if on_plot is not None:
            on_plot(section.title)
        png = None if section.missing else section.renderer(data)
        rendered.append(Plot(section, png))
    return rendered
