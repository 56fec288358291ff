"""The analysis of an experiment, pure Polars on the frame of `experiment.results_frame`:
the measured cost of scoring, compute counted two ways, each policy against the baseline
stopped at equal compute, means with 95% t-intervals over seeds, and on a dataset with
flipped labels, the noisy share of the pool and how well the noise guard finds them."""

from __future__ import annotations

from typing import Any

import polars as pl

from pipeline.label_noise import SUSPECT_LABEL

RUN_KEYS = ["policy", "params", "seed"]
# The accuracy over every group, as models.evaluate names it.
OVERALL = "_overall"
MEASURES = {"compute_train": "training only", "compute_total": "training + scoring"}
# Label noise: the boolean sample column that marks the labels flipped on purpose
# (examples/digits/make_dataset.py --flip), the truth the guard's `suspect-label`
# quarantine is measured against.
FLIPPED = "flipped"
# Per step, from `label_noise`; the last three are cumulative over the run.
NOISE_COLUMNS = ("noisy_share", "quarantined", "suspect_precision", "suspect_recall")

# Two-sided 95% quantiles of Student's t, t_{0.975}(df), df = 1..30 (standard tables);
# beyond 30 the value for 30 (2.042) is used, at most 4% wider than the exact one.
# Kept here so the analysis needs no scipy.
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_975(df: int) -> float:
    return T_975[min(df, len(T_975)) - 1]


def group_columns(frame: pl.DataFrame | pl.LazyFrame, prefix: str) -> list[str]:
    names = frame.collect_schema().names()
    return sorted(name for name in names if name.startswith(f"{prefix}."))


def scoring_cost(results: pl.LazyFrame) -> pl.LazyFrame:
    """Per step, the wall time per token of its scoring pass over that of its training
    pass, from the seconds and tokens each manifest records. A run's first step is left
    out: its training time includes building the model and warming torch up."""
    return (
        results.filter(pl.col("step") > 1, pl.col("tokens_scored_step") > 0)
        .select(
            "run_id",
            "step",
            ratio=(pl.col("score_seconds") / pl.col("tokens_scored_step"))
            / (pl.col("train_seconds") / pl.col("tokens_trained_step")),
        )
        .sort("run_id", "step")
    )


def experiment_scoring_cost(per_step: pl.DataFrame) -> dict[str, Any]:
    """One ratio for the whole experiment, the median over steps (robust to a step slowed
    by a neighbour), so every policy's scoring is priced the same."""
    ratios = per_step.get_column("ratio").drop_nans().drop_nulls()
    return {
        "ratio": float(ratios.median()) if len(ratios) else 0.0,
        "q25": float(ratios.quantile(0.25)) if len(ratios) else 0.0,
        "q75": float(ratios.quantile(0.75)) if len(ratios) else 0.0,
        "steps": len(ratios),
        "method": "median over steps (each run's first left out) of (scoring seconds / "
        "tokens scored) / (training seconds / tokens trained), from metrics.seconds.score "
        "and .train of every manifest",
    }


def with_compute(results: pl.LazyFrame, ratio: float, baseline: str) -> pl.LazyFrame:
    """`compute_train`: tokens trained. `compute_total`: plus tokens scored weighted by
    `ratio`, except for the baseline, which needs no scoring pass (the pipeline scores
    its pool anyway, for the record, but Standard training would not)."""
    scoring = pl.when(pl.col("policy") == baseline).then(0.0).otherwise(ratio)
    return results.with_columns(
        compute_train=pl.col("tokens_trained").cast(pl.Float64),
        compute_total=pl.col("tokens_trained") + scoring * pl.col("tokens_scored"),
    )


def label_noise(
    results: pl.LazyFrame,
    pools: pl.LazyFrame,
    quarantined: pl.LazyFrame,
    truth: pl.LazyFrame,
) -> pl.LazyFrame:
    """`results` (run_id, step, pool_size, ...) with, per step: `flipped_in_pool` and
    `noisy_share` (of the pool after the step), and the `suspect-label` quarantine so far
    against the flipped labels: `quarantined` samples, `quarantined_flipped`,
    `suspect_precision` (flipped among the quarantined; null before any quarantine) and
    `suspect_recall` (quarantined among the run's flipped; null when none is flipped).
    `pools` and `quarantined` are (run_id, step, sample_id) rows, `truth` (run_id,
    sample_id, flipped). A sample quarantined again in a later round counts once. A run
    without truth (its dataset marks no flipped labels) gets nulls."""
    keys = ["run_id", "sample_id"]
    steps = ["run_id", "step"]
    flipped = pl.col(FLIPPED).fill_null(False)
    in_pool = (
        pools.join(truth, on=keys, how="left")
        .group_by(steps)
        .agg(flipped_in_pool=flipped.sum().cast(pl.Int64))
    )
    first = quarantined.group_by(keys).agg(pl.col("step").min())
    new = (
        first.join(truth, on=keys, how="left")
        .group_by(steps)
        .agg(new=pl.len().cast(pl.Int64), new_flipped=flipped.sum().cast(pl.Int64))
    )
    totals = truth.group_by("run_id").agg(flipped_total=flipped.sum().cast(pl.Int64))
    known = pl.col("flipped_total").is_not_null()
    return (
        results.join(in_pool, on=steps, how="left", maintain_order="left")
        .join(new, on=steps, how="left", maintain_order="left")
        .join(totals, on="run_id", how="left", maintain_order="left")
        .with_columns(
            pl.when(known).then(pl.col(c).fill_null(0)).alias(c)
            for c in ("flipped_in_pool", "new", "new_flipped")
        )
        .with_columns(
            quarantined=pl.col("new").cum_sum().over("run_id", order_by="step"),
            quarantined_flipped=pl.col("new_flipped").cum_sum().over("run_id", order_by="step"),
        )
        .with_columns(
            noisy_share=pl.when(pl.col("pool_size") > 0).then(
                pl.col("flipped_in_pool") / pl.col("pool_size")
            ),
            suspect_precision=pl.when(pl.col("quarantined") > 0).then(
                pl.col("quarantined_flipped") / pl.col("quarantined")
            ),
            suspect_recall=pl.when(pl.col("flipped_total") > 0).then(
                pl.col("quarantined_flipped") / pl.col("flipped_total")
            ),
        )
        .drop("new", "new_flipped", "flipped_total")
    )


def final_rows(results: pl.LazyFrame) -> pl.LazyFrame:
    """The last step of every run."""
    return results.sort("step").group_by("run_id").last()


def equal_compute(results: pl.LazyFrame, baseline: str, measure: str) -> pl.LazyFrame:
    """Each non-baseline run's final accuracy against the baseline run of the same params
    and seed at the last baseline step whose cumulative `measure` is <= the run's total
    (no interpolation: accuracy is measured at epoch ends only). Null baseline columns
    when even the baseline's first epoch cost more. `diff.<group>` = run - baseline;
    `compute_ratio` = the baseline's compute there over the run's: under 1 by up to an
    epoch, and far under when the run spent more than the baseline's whole run."""
    accuracy = group_columns(results, "accuracy")
    runs = (
        final_rows(results)
        .filter(pl.col("policy") != baseline)
        .select(*RUN_KEYS, "run_id", pl.col(measure).alias("compute"), *accuracy)
        .sort("compute")
    )
    reference = (
        results.filter(pl.col("policy") == baseline)
        .select(
            "params",
            "seed",
            pl.col("step").alias("baseline_step"),
            pl.col(measure).alias("baseline_compute"),
            *(pl.col(c).alias(f"baseline.{c}") for c in accuracy),
        )
        .sort("baseline_compute")
    )
    matched = runs.join_asof(
        reference,
        left_on="compute",
        right_on="baseline_compute",
        by=["params", "seed"],
        strategy="backward",
        check_sortedness=False,  # sorted by compute overall, so within every group too
    )
    return matched.with_columns(
        *((pl.col(c) - pl.col(f"baseline.{c}")).alias(f"diff.{c}") for c in accuracy),
        compute_ratio=pl.col("baseline_compute") / pl.col("compute"),
    ).sort(RUN_KEYS)


def compute_saved(results: pl.LazyFrame, baseline: str) -> pl.LazyFrame:
    """Per run, the fraction of the baseline's total compute (same params and seed) it did
    not use, both ways of counting: `saved.compute_train`, `saved.compute_total`."""
    finals = final_rows(results)
    reference = finals.filter(pl.col("policy") == baseline).select(
        "params", "seed", *(pl.col(m).alias(f"baseline.{m}") for m in MEASURES)
    )
    return (
        finals.join(reference, on=["params", "seed"], how="left")
        .select(
            *RUN_KEYS,
            *((1 - pl.col(m) / pl.col(f"baseline.{m}")).alias(f"saved.{m}") for m in MEASURES),
        )
        .sort(RUN_KEYS)
    )


def mean_interval(frame: pl.LazyFrame, by: list[str], columns: list[str]) -> pl.LazyFrame:
    """Per `by` group and column: `<c>.mean`, `<c>.half` (the half-width of the 95%
    t-interval over the group's non-null values; null below two values) and `<c>.n`."""
    aggregated = frame.group_by(by).agg(
        *(pl.col(c).mean().alias(f"{c}.mean") for c in columns),
        *(pl.col(c).std().alias(f"{c}.sd") for c in columns),
        *(pl.col(c).count().alias(f"{c}.n") for c in columns),
    )
    quantiles = {df: t for df, t in enumerate(T_975, start=1)}

    def half_width(c: str) -> pl.Expr:
        n = pl.col(f"{c}.n")
        t = (n - 1).replace_strict(quantiles, default=1.96, return_dtype=pl.Float64)
        return pl.when(n > 1).then(t * pl.col(f"{c}.sd") / n.sqrt()).alias(f"{c}.half")

    return aggregated.with_columns(half_width(c) for c in columns).sort(by)


def policy_summary(results: pl.LazyFrame, baseline: str) -> pl.DataFrame:
    """One row per (policy, params): final accuracy and pool per group, compute saved both
    ways, and the paired accuracy difference to the baseline at equal compute both ways,
    each as mean, 95% half-width and number of seeds; with label noise, the final noisy
    share and the precision and recall of the `suspect-label` quarantine too."""
    by = ["policy", "params"]
    accuracy = group_columns(results, "accuracy")
    seen = group_columns(results, "accuracy_seen")
    pools = ["pool_size", *group_columns(results, "pool_size")]
    names = results.collect_schema().names()
    noise = [c for c in NOISE_COLUMNS if c in names]
    finals = mean_interval(final_rows(results), by, [*accuracy, *seen, *pools, *MEASURES, *noise])
    saved = mean_interval(compute_saved(results, baseline), by, [f"saved.{m}" for m in MEASURES])
    summary = finals.join(saved, on=by, how="left")
    for measure in MEASURES:
        diffs = equal_compute(results, baseline, measure).select(
            *by,
            *(pl.col(f"diff.{c}").alias(f"diff@{measure}.{c}") for c in accuracy),
            pl.col("compute_ratio").alias(f"ratio@{measure}"),
        )
        columns = [*(f"diff@{measure}.{c}" for c in accuracy), f"ratio@{measure}"]
        summary = summary.join(mean_interval(diffs, by, columns), on=by, how="left")
    return summary.sort(by).collect()


def noisy_share_by_step(results: pl.LazyFrame) -> pl.DataFrame | None:
    """Per (policy, params, step): the noisy share of the pool after the step over seeds
    (`noisy_share.mean`, `.half`, `.n`); None without label noise in the results."""
    if "noisy_share" not in results.collect_schema().names():
        return None
    return mean_interval(results, ["policy", "params", "step"], ["noisy_share"]).collect()


def _cell(row: dict[str, Any], column: str, digits: int = 3, percent: bool = False) -> str:
    mean, half = row.get(f"{column}.mean"), row.get(f"{column}.half")
    if mean is None:
        return "-"
    scale, unit = (100, "%") if percent else (1, "")
    text = f"{mean * scale:.{digits}f}{unit}"
    return f"{text} ± {half * scale:.{digits}f}" if half is not None else text


def _summary_groups(summary: pl.DataFrame, prefix: str) -> list[str]:
    """The groups of `<prefix>.<group>.mean` columns (not the `<prefix>.mean` of a total)."""
    names = group_columns(summary, prefix)
    return [
        n[len(prefix) + 1 : -len(".mean")]
        for n in names
        if n.count(".") >= 2 and n.endswith(".mean")
    ]


def _shown(group: str) -> str:
    return "all groups" if group == OVERALL else group


def summary_markdown(
    summary: pl.DataFrame,
    baseline: str,
    cost: dict[str, Any],
    title: str,
    noise_by_step: pl.DataFrame | None = None,
) -> str:
    groups = _summary_groups(summary, "accuracy")
    pools = _summary_groups(summary, "pool_size")
    lines = [
        f"# Experiment {title}",
        "",
        "Mean ± half-width of the 95% t-interval over seeds. Compute is counted in tokens: "
        "training only, and training + scoring, where a scored token costs "
        f"**{cost['ratio']:.3f}** trained tokens ({cost['method']}; quartiles over "
        f"{cost['steps']} steps {cost['q25']:.3f}-{cost['q75']:.3f}). The baseline "
        f"`{baseline}` is charged no scoring.",
        "",
        "## Final held-out accuracy per group",
        "",
        "| policy | params | seeds | " + " | ".join(map(_shown, groups)) + " |",
        "|---|---|---|" + "---|" * len(groups),
    ]
    rows = summary.to_dicts()
    for row in rows:
        seeds = row[f"accuracy.{groups[0]}.n"] if groups else "-"
        cells = [_cell(row, f"accuracy.{g}") for g in groups]
        lines.append(
            f"| {row['policy']} | {row['params'] or '-'} | {seeds} | {' | '.join(cells)} |"
        )
    seen = _summary_groups(summary, "accuracy_seen")
    if seen:
        lines += [
            "",
            "## Final accuracy on seen training samples per group (retention)",
            "",
            "| policy | params | " + " | ".join(map(_shown, seen)) + " |",
            "|---|---|" + "---|" * len(seen),
        ]
        for row in rows:
            cells = [_cell(row, f"accuracy_seen.{g}") for g in seen]
            lines.append(f"| {row['policy']} | {row['params'] or '-'} | {' | '.join(cells)} |")
    lines += [
        "",
        "## Final pool and compute",
        "",
        "| policy | params | pool | "
        + " | ".join(f"pool {g}" for g in pools)
        + " | saved (training) | saved (training + scoring) |",
        "|---|---|---|" + "---|" * (len(pools) + 2),
    ]
    for row in rows:
        cells = [
            _cell(row, "pool_size", 1),
            *(_cell(row, f"pool_size.{g}", 1) for g in pools),
            _cell(row, "saved.compute_train", 1, percent=True),
            _cell(row, "saved.compute_total", 1, percent=True),
        ]
        lines.append(f"| {row['policy']} | {row['params'] or '-'} | {' | '.join(cells)} |")
    lines += [
        "",
        f"## Paired difference to `{baseline}` at equal compute",
        "",
        f"Each run's final accuracy minus that of `{baseline}` (same params and seed) after "
        "its last epoch whose cumulative compute is <= the run's total (no interpolation); "
        "then mean and 95% t-interval of these paired differences over seeds. `-` when "
        "the baseline's first epoch already cost more. `baseline / run` is the compute the "
        "baseline was read at over the run's: below 1 by up to one epoch, which favours "
        "the run; far below 1 when the run spent more than the baseline's whole run, "
        "which is then not an equal-compute comparison.",
        "",
        "| policy | params | compute | baseline / run | " + " | ".join(map(_shown, groups)) + " |",
        "|---|---|---|---|" + "---|" * len(groups),
    ]
    for row in rows:
        if row["policy"] == baseline:
            continue
        for measure, name in MEASURES.items():
            cells = [
                _cell(row, f"ratio@{measure}", 2),
                *(_cell(row, f"diff@{measure}.accuracy.{g}") for g in groups),
            ]
            lines.append(
                f"| {row['policy']} | {row['params'] or '-'} | {name} | {' | '.join(cells)} |"
            )
    if noise_by_step is not None:
        lines += _label_noise_markdown(rows, noise_by_step)
    return "\n".join(lines) + "\n"


def _label_noise_markdown(rows: list[dict[str, Any]], by_step: pl.DataFrame) -> list[str]:
    """The noisy share of the pool per epoch, and the `suspect-label` quarantine against
    the flipped labels at the end of each run."""
    steps = sorted(by_step.get_column("step").unique().to_list())
    cells = {(r["policy"], r["params"], r["step"]): r for r in by_step.to_dicts()}
    lines = [
        "",
        "## Label noise: share of flipped labels in the pool after each epoch",
        "",
        "Flipped samples over the pool after the epoch's pruning (epochs counted across "
        "rounds), that is in the pool the next epoch trains on; the first epoch of a round "
        "trains on the whole dataset.",
        "",
        "| policy | params | " + " | ".join(f"epoch {s}" for s in steps) + " |",
        "|---|---|" + "---|" * len(steps),
    ]
    for row in rows:
        shares = [
            _cell(cells.get((row["policy"], row["params"], s), {}), "noisy_share", 1, True)
            for s in steps
        ]
        lines.append(f"| {row['policy']} | {row['params'] or '-'} | {' | '.join(shares)} |")
    lines += [
        "",
        f"## Label noise: the `{SUSPECT_LABEL}` quarantine against the flipped labels",
        "",
        "Per run, every sample quarantined as a suspect label by its end: precision = "
        "share of flipped labels among them (over the runs that quarantined any; `-`: "
        "none did), recall = share of all flipped labels among them.",
        "",
        "| policy | params | quarantined | precision | recall |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        quality = [
            _cell(row, "quarantined", 1),
            _cell(row, "suspect_precision", 1, percent=True),
            _cell(row, "suspect_recall", 1, percent=True),
        ]
        lines.append(f"| {row['policy']} | {row['params'] or '-'} | {' | '.join(quality)} |")
    return lines
