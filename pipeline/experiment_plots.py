"""The figures of an experiment, drawn with matplotlib's Agg canvas from the results frame
(with compute columns): held-out accuracy against compute per group, the pool per group
after every epoch and, with label noise, the pool's share of flipped labels. Each returns
PNG bytes; one line per run, a colour per policy."""

from __future__ import annotations

import io

import matplotlib
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pipeline.experiment_results import MEASURES, group_columns
from pipeline.report_plots import GROUP_COLORS, STYLE

DPI = 110


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    # No timestamp or software metadata: the same results give the same bytes.
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _colors(results: pl.DataFrame) -> dict[str, str]:
    policies = results.get_column("policy").unique(maintain_order=True).to_list()
    return {p: GROUP_COLORS[i % len(GROUP_COLORS)] for i, p in enumerate(policies)}


def _run_lines(results: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    return [
        (frame.item(0, "policy"), frame.sort("step"))
        for _, frame in results.group_by("run_id", maintain_order=True)
    ]


def _legend(figure: Figure, colors: dict[str, str]) -> None:
    handles = [Line2D([], [], color=c, label=p) for p, c in colors.items()]
    figure.legend(handles=handles, loc="outside upper center", ncol=len(handles))


def accuracy_plot(results: pl.DataFrame) -> bytes:
    """A row per way of counting compute, a column per accuracy group."""
    groups = group_columns(results, "accuracy")
    colors = _colors(results)
    with matplotlib.rc_context(STYLE):
        figure = Figure(
            figsize=(4 * max(len(groups), 1), 3.4 * len(MEASURES)), layout="constrained"
        )
        axes = figure.subplots(len(MEASURES), max(len(groups), 1), squeeze=False)
    for row, (measure, name) in enumerate(MEASURES.items()):
        for col, group in enumerate(groups):
            ax = axes[row][col]
            for policy, frame in _run_lines(results):
                ax.plot(
                    frame.get_column(measure),
                    frame.get_column(group),
                    color=colors[policy],
                    marker=".",
                    linewidth=1,
                    alpha=0.8,
                )
            ax.set_title(f"held-out {group.removeprefix('accuracy.')}", loc="left")
            ax.set_xlabel(f"compute, tokens ({name})")
            ax.set_ylabel("accuracy")
            ax.set_ylim(-0.02, 1.02)
    _legend(figure, colors)
    return _png(figure)


def pool_plot(results: pl.DataFrame) -> bytes:
    """Pool size after each epoch (steps counted across rounds), a panel per group."""
    groups = group_columns(results, "pool_size") or ["pool_size"]
    colors = _colors(results)
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(4 * len(groups), 3.4), layout="constrained")
        axes = figure.subplots(1, len(groups), squeeze=False)[0]
    for ax, group in zip(axes, groups, strict=True):
        for policy, frame in _run_lines(results):
            ax.plot(
                frame.get_column("step"),
                frame.get_column(group),
                color=colors[policy],
                marker=".",
                linewidth=1,
                alpha=0.8,
            )
        ax.set_title(f"pool {group.removeprefix('pool_size.')}", loc="left")
        ax.set_xlabel("epoch (counted across rounds)")
        ax.set_ylabel("samples")
    _legend(figure, colors)
    return _png(figure)


def noisy_share_plot(results: pl.DataFrame) -> bytes:
    """The share of flipped labels in the pool after each epoch (`noisy_share`)."""
    colors = _colors(results)
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(5, 3.4), layout="constrained")
        ax = figure.subplots()
    for policy, frame in _run_lines(results):
        ax.plot(
            frame.get_column("step"),
            frame.get_column("noisy_share"),
            color=colors[policy],
            marker=".",
            linewidth=1,
            alpha=0.8,
        )
    ax.set_title("flipped labels in the pool", loc="left")
    ax.set_xlabel("epoch (counted across rounds)")
    ax.set_ylabel("share of the pool")
    ax.set_ylim(bottom=0)
    _legend(figure, colors)
    return _png(figure)
