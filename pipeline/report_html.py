"""The report page and its files: one self-contained `report.html` (every figure embedded as
a base64 PNG, inline CSS, no external URL, so it opens anywhere, offline, mailed or
archived) plus the same PNGs beside it, each written atomically."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.report import OVERALL, ReportData, summary
from pipeline.report_plots import Plot, render_plots
from pipeline.store import write_bytes_atomic, write_text_atomic
from pipeline.trajectories import TRAJECTORY_STATES

REPORT_FILE = "report.html"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
  margin: 0; background: #fafafa; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 1.55em; margin: 0 0 4px; }
h2 { font-size: 1.2em; margin: 34px 0 4px; border-top: 1px solid #e5e5e5; padding-top: 18px; }
.sub { color: #666; margin: 0 0 16px; }
.note { color: #555; margin: 2px 0 10px; max-width: 900px; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr));
  gap: 10px; margin: 14px 0; }
.tile { background: #f4f6f9; border-radius: 6px; padding: 10px 14px; }
.tile .label { font-size: .78em; text-transform: uppercase; letter-spacing: .04em; color: #666; }
.tile .value { font-size: 1.35em; font-weight: 600; }
.tile .detail { font-size: .85em; color: #555; }
dl.config { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px;
  font-size: .92em; margin: 8px 0; }
dl.config dt { color: #666; }
dl.config dd { margin: 0; }
nav { font-size: .9em; margin: 6px 0 0; }
nav a { color: #3a5f9f; margin-right: 14px; text-decoration: none; }
img { width: 100%; height: auto; display: block; }
table { border-collapse: collapse; font-size: .88em; margin: 8px 0; }
th, td { padding: 4px 10px; text-align: right; border-bottom: 1px solid #eee; }
th { color: #555; font-weight: 600; border-bottom: 1px solid #ccc; }
td.text, th.text { text-align: left; }
td.mono, th.mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; text-align: left; }
.empty { color: #777; font-style: italic; }
.warning { background: #fdf1ee; border-left: 4px solid #c44e52; padding: 6px 12px;
  margin: 10px 0; max-width: 900px; }
footer { color: #888; font-size: .82em; margin-top: 36px; }
"""


@dataclass(frozen=True)
class ReportFiles:
    """What `write_report` wrote: the page and the figures beside it."""

    html: Path
    figures: list[Path]


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _listed(items: Iterable[str], limit: int = 4) -> str:
    """The first few items of a list for a tile, and how many more there are."""
    listed = list(items)
    more = f", and {len(listed) - limit} more" if len(listed) > limit else ""
    return ", ".join(listed[:limit]) + more


def _share(count: int, total: int) -> str:
    """A percentage that never rounds a few samples away to 0% or all but a few to 100%."""
    if not total:
        return "-"
    share = count / total
    if 0 < share < 0.01:
        return "<1%"
    if 0.99 < share < 1:
        return ">99%"
    return f"{share:.0%}"


def _versus_standard(tokens: int, standard: int | None) -> str:
    """An honest comparison: fewer or more tokens than Standard, never a bare ratio."""
    if not standard:
        return ""
    change = tokens / standard - 1
    direction = "fewer" if change < 0 else "more"
    return f"{abs(change):.1%} {direction} than Standard's {standard:,}"


def _tile(label: str, value: str, detail: str = "") -> str:
    return (
        f'<div class="tile"><div class="label">{escape(label)}</div>'
        f'<div class="value">{escape(value)}</div>'
        f'<div class="detail">{escape(detail)}</div></div>'
    )


def _tiles(data: ReportData) -> str:
    if not data.manifests:
        return '<p class="empty">This run has no manifest yet: nothing to show.</p>'
    first, final = data.manifests[0], data.manifests[-1]
    full = first["pool"]["size"]
    pool = final["pool"]
    by_group = _listed(f"{g} {n:,}" for g, n in sorted(pool["by_group"].items()))
    tokens = final["tokens"]
    standard = data.standard_tokens
    tiles = [
        _tile(
            f"final pool (r{final['round']} e{final['epoch']})",
            f"{pool['size']:,} of {full:,}",
            f"{_share(pool['size'], full)} of the dataset; {by_group}",
        ),
        _tile(
            "tokens trained",
            f"{tokens['trained']:,}",
            _versus_standard(tokens["trained"], standard),
        ),
        _tile(
            "tokens trained + scored",
            f"{tokens['trained'] + tokens['scored']:,}",
            _versus_standard(tokens["trained"] + tokens["scored"], standard),
        ),
    ]
    tiles.append(_quality_tile(data))
    if not data.counts.is_empty():
        last_round = data.counts.filter(pl.col("round") == data.counts["round"].max())
        states = {s: int(last_round[s].sum()) for s in TRAJECTORY_STATES}
        total = sum(states.values())
        tiles.append(
            _tile(
                f"trajectories, round {last_round['round'][0]}",
                f"{states['settled'] / total:.0%} settled",
                ", ".join(f"{n:,} {s}" for s, n in states.items()),
            )
        )
    return f'<div class="tiles">{"".join(tiles)}</div>'


def _quality_tile(data: ReportData) -> str:
    if data.quality_source is None:
        return _tile("held-out accuracy", "none", "no held-out accuracy in this run")
    last = data.quality.filter(pl.col("step") == data.quality["step"].max())
    values = dict(last.select("series", "value").iter_rows())
    if data.quality_source == "accuracy":
        details = _listed(f"{g} {v:.3f}" for g, v in sorted(values.items()) if g != OVERALL)
        return _tile("final held-out accuracy", _number(values.get(OVERALL)), details)
    name = sorted(values)[0]
    others = _listed(f"{k} {v:.4g}" for k, v in sorted(values.items()) if k != name)
    return _tile(f"final trainer metric: {name}", f"{values[name]:.4g}", others)


def _policy_text(data: ReportData) -> str:
    """The policy as the manifests recorded it (what actually ran: the floor of each
    round), with `tighten` from the config; the config alone before any manifest."""
    config = data.config
    name = data.manifests[-1]["policy"]["name"] if data.manifests else data.run.get("policy")
    if name == "standard":
        return "standard: keeps every sample"
    tighten = f", tighten {config.policy.tighten:g}" if config is not None else ""
    if data.manifests:
        params = data.manifests[-1]["policy"]["params"]
        floors = data.steps.group_by("round", maintain_order=True).agg(pl.col("floor").first())
        per_round = ", ".join(f"{f:g}" for f in floors["floor"] if f is not None)
        return (
            f"{name}: delta {params.get('delta')} ({params.get('delta_mode')}), floor per "
            f"round {per_round}{tighten}"
        )
    if config is None:
        return str(name)
    p = config.policy
    return f"{name}: delta {p.delta:g} ({p.delta_mode}), floor {p.floor:g}{tighten}"


def _config_items(data: ReportData) -> list[tuple[str, str]]:
    run = data.run
    config = data.config
    dataset = run.get("dataset", {})
    trainer = run.get("trainer", "builtin")
    if config is not None and trainer == "builtin":
        model = config.model
        trainer = f"builtin {model.arch} (embedding {model.embed_dim}, hidden {model.hidden_dim})"
    status = "complete" if data.complete else "interrupted or still running"
    return [
        ("run", f"{data.layout.run_id} ({status}), created {run.get('created', '?')}"),
        ("policy", _policy_text(data)),
        (
            "schedule",
            f"{run.get('rounds')} rounds × {run.get('epochs')} epochs, seed "
            f"{run.get('seed')}; {len(data.manifests)} manifests written",
        ),
        ("trainer", trainer),
        (
            "dataset",
            f"{dataset.get('source')} ({dataset.get('samples', 0):,} samples, "
            f"{dataset.get('eval_samples', 0):,} held out), fingerprint "
            f"{str(dataset.get('fingerprint', ''))[:16]}",
        ),
        (
            "final manifest",
            data.manifests[-1]["id"] if data.manifests else "none yet",
        ),
    ]


def _config_list(data: ReportData) -> str:
    items = "".join(
        f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in _config_items(data)
    )
    return f'<dl class="config">{items}</dl>'


def _table(headers: list[str], rows: list[list[str]], classes: dict[int, str]) -> str:
    """A plain table; `classes` names the CSS class of some columns (numbers otherwise,
    right-aligned)."""

    def cell(tag: str, index: int, value: str) -> str:
        css = f' class="{classes[index]}"' if index in classes else ""
        return f"<{tag}{css}>{escape(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _counts_table(data: ReportData) -> str:
    if data.counts.is_empty():
        return ""
    rows = [
        [
            str(row["round"]),
            row["group"] or "-",
            *(f"{row[s]:,} ({_share(row[s], row['total'])})" for s in TRAJECTORY_STATES),
            f"{row['total']:,}",
        ]
        for row in data.counts.iter_rows(named=True)
    ]
    return _table(["round", "group", *TRAJECTORY_STATES, "samples"], rows, {1: "text"})


def _unsettled_table(data: ReportData) -> str:
    if data.unsettled.is_empty():
        return '<p class="empty">No sample kept wandering.</p>'
    histories = data.unsettled_history.group_by("round", "sample_id").agg(
        pl.col("loss").sort_by("epoch")
    )
    losses = {(r, s): h for r, s, h in histories.iter_rows()}
    rows = [
        [
            str(rank),
            row["sample_id"],
            str(row["round"]),
            row["group"] or "-",
            f"{row['wander']:.3f}",
            f"{row['mean_loss']:.3f}",
            f"{row['loss_rank']:.2f}",
            " → ".join(f"{loss:.2f}" for loss in losses.get((row["round"], row["sample_id"]), [])),
        ]
        for rank, row in enumerate(data.unsettled.iter_rows(named=True), start=1)
    ]
    table = _table(
        ["#", "sample_id", "round", "group", "wander", "mean loss", "loss rank", "loss per epoch"],
        rows,
        {1: "mono", 3: "text", 7: "text"},
    )
    return table + (
        '<p class="note">wander: mean |delta| per epoch over the sample\'s history in that '
        "round (nats). mean loss: its mean loss over that history (nats), a simple mislabel "
        "score: high is suspicious. loss rank: mean percentile of its loss among the "
        "samples scored in the same epoch (0 lowest, 1 highest).</p>"
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _noise_table(data: ReportData) -> str:
    """The noise estimate per step, and each warning in full below it."""
    if data.noise.is_empty():
        return ""
    rows = [
        [
            f"r{row['round']} e{row['epoch']}",
            f"{row['pool']:,}",
            "-" if row["pool_suspects"] is None else f"{row['pool_suspects']:,}",
            _percent(row["share"]),
            _percent(row["round_start_share"]),
            "-" if row["growth"] is None else f"{row['growth']:.1f}×",
            "-" if row["quarantined"] is None else f"{row['quarantined']:,}",
            "warning" if row["warning"] else "",
        ]
        for row in data.noise.iter_rows(named=True)
    ]
    headers = [
        "step",
        "pool",
        "likely mislabeled in pool",
        "share",
        "share at round start",
        "growth",
        "quarantined",
        "",
    ]
    return _table(headers, rows, {0: "text", 7: "text"}) + _warnings(data)


def _warnings(data: ReportData) -> str:
    """The label-noise warnings of the run, each in its own box; none: nothing."""
    warnings = data.noise["warning"].drop_nulls()
    return "".join(f'<p class="warning">{escape(text)}</p>' for text in warnings)


def _trajectory_hint(data: ReportData) -> str:
    """Say so when no sample could be judged because every round is shorter than the
    window: otherwise an all-undetermined bar looks like a finding."""
    if data.trajectories.is_empty():
        return ""
    longest = int(data.trajectories["n_deltas"].max())
    if longest >= data.params.window:
        return ""
    return (
        f'<p class="note">Each sample has at most {longest} scored change(s) per round here, '
        f"fewer than the window of {data.params.window}: no sample can be judged settled "
        "or wandering. A smaller <code>--window</code> (or longer rounds) can.</p>"
    )


def _section(plot: Plot, extra: str) -> str:
    section = plot.section
    if plot.png is None:
        body = f'<p class="empty">{escape(section.missing or "")}</p>'
    else:
        data_uri = "data:image/png;base64," + base64.b64encode(plot.png).decode("ascii")
        body = (
            f'<p class="note">{escape(section.note)}</p>'
            f'<img alt="{escape(section.title)}" src="{data_uri}">{extra}'
        )
    return f'<section id="{section.name}"><h2>{escape(section.title)}</h2>{body}</section>'


def page(data: ReportData, plots: list[Plot]) -> str:
    """The whole report as one HTML document; nothing in it refers outside itself."""
    extras = {
        "trajectories": _trajectory_hint(data) + _counts_table(data),
        "unsettled": _unsettled_table(data),
        "noise": _noise_table(data),
    }
    sections = "".join(_section(plot, extras.get(plot.section.name, "")) for plot in plots)
    nav = "".join(f'<a href="#{p.section.name}">{escape(p.section.title)}</a>' for p in plots)
    band, window = data.params.band, data.params.window
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>STM report: {escape(data.layout.run_id)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<h1>STM curation report: {escape(data.layout.run_id)}</h1>
<p class="sub">What the policy removed, when and why, what it cost, and how each sample's
loss moved.</p>
{_config_list(data)}
{_tiles(data)}
{_warnings(data)}
<nav>{nav}</nav>
{sections}
<footer>Written by <code>stm report</code>; trajectories with band ±{band:g} nats and window
{window} epochs. Figures are also saved as PNG files beside this page.</footer>
</main>
</body>
</html>
"""


def write_report(
    data: ReportData, out: Path, on_plot: Callable[[str], None] | None = None
) -> ReportFiles:
    """Render every figure, write it as `<name>.png` into `out` and the page as
    `report.html`. The PNG of a section this run has nothing for is removed, so a
    rewritten report never keeps a figure of an earlier one."""
    plots = render_plots(data, on_plot)
    figures = []
    for plot in plots:
        path = out / f"{plot.section.name}.png"
        if plot.png is None:
            path.unlink(missing_ok=True)
            continue
        write_bytes_atomic(path, plot.png)
        figures.append(path)
    html = out / REPORT_FILE
    write_text_atomic(html, page(data, plots))
    return ReportFiles(html, figures)


def report_json(data: ReportData, files: ReportFiles) -> dict[str, Any]:
    """The paths written and the summary numbers, for `stm report --json`."""
    return {
        "html": str(files.html),
        "figures": [str(path) for path in files.figures],
        **summary(data),
    }
