"""What a manifest record says, laid out for people: the rows of a pool table and the
Markdown of a step or of a whole run. Plain functions of records, so the Prefect
artifacts, the logs and any other display say the same thing in the same words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ALL = "(all)"


def pool_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per group, then the total: the pool left after the step and what the step
    dropped from that group."""
    by_group = record["pool"]["by_group"]
    step = record.get("step") or {}
    dropped = step.get("dropped_by_group", {})
    rows = [
        {"group": group, "pool": by_group.get(group, 0), "dropped": dropped.get(group, 0)}
        for group in sorted(set(by_group) | set(dropped))
    ]
    rows.append({"group": ALL, "pool": record["pool"]["size"], "dropped": step.get("dropped", 0)})
    return rows


def step_title(record: dict[str, Any]) -> str:
    return f"round {record['round']} epoch {record['epoch']} ({record['kind']})"


def step_line(record: dict[str, Any]) -> str:
    """One log line per step: pool, drops by reason and cumulative tokens."""
    step = record.get("step") or {}
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(step.get("by_reason", {}).items()))
    decided = f"dropped {step.get('dropped', 0):,}" + (f" (reasons: {reasons})" if reasons else "")
    tokens = record["tokens"]
    return (
        f"{step_title(record)}: pool {record['pool']['size']:,}, {decided}; "
        f"tokens trained {tokens['trained']:,}, scored {tokens['scored']:,}; "
        f"manifest {record['id'][:12]}"
    )


def step_markdown(record: dict[str, Any], manifest_path: Path) -> str:
    """The description of a step's pool table: drops per reason, tokens, and where its
    manifest is, so a reader of the UI can open the file an auditor would."""
    step = record.get("step") or {}
    tokens = record["tokens"]
    lines = [
        f"**{step_title(record)}** of run `{record['run']}`, policy `{record['policy']['name']}`",
        "",
        f"- pool: {record['pool']['size']:,} samples",
        f"- dropped: {step.get('dropped', 0):,}",
    ]
    if step.get("by_reason"):
        lines.append("- decisions by reason (kept and dropped):")
    lines += [f"  - {reason}: {n:,}" for reason, n in sorted(step.get("by_reason", {}).items())]
    lines += [
        f"- tokens trained: {tokens['trained']:,} ({tokens.get('trained_step', 0):,} this step)",
        f"- tokens scored: {tokens['scored']:,} ({tokens.get('scored_step', 0):,} this step)",
        f"- manifest `{record['id'][:12]}`: `{manifest_path}`",
    ]
    lines[2:2] = noise_markdown(record)
    return "\n".join(lines)


def noise_line(noise: dict[str, Any], pool_size: int) -> str:
    """The label-noise estimate of a step in words (`pipeline.label_noise`)."""
    if noise["share"] is None:
        return (
            "likely mislabeled: none (empty pool)"
            if pool_size == 0
            else "likely mislabeled: not judged yet (warm-up)"
        )
    quarantined = f", {noise['quarantined']:,} quarantined" if noise["guard"] else ""
    growth = "" if noise["growth"] is None else f", {noise['growth']:.1f}x the round's start"
    return (
        f"likely mislabeled: {noise['pool_suspects']:,} in the pool ({noise['share']:.1%}"
        f"{growth}){quarantined}"
    )


def noise_markdown(record: dict[str, Any]) -> list[str]:
    """The step's noise warning first, where a reader of the UI sees it, and its estimate
    as a bullet; nothing for a record without one (a reset, or an older run)."""
    noise = record.get("noise")
    if not noise:
        return []
    warning = [f"> **Warning:** {noise['warning']}", ""] if noise["warning"] else []
    return [*warning, f"- {noise_line(noise, record['pool']['size'])}"]


def run_markdown(manifests: list[dict[str, Any]], run_dir: Path) -> str:
    """The run's final summary: one table row per step, then where everything is."""
    first, final = manifests[0], manifests[-1]
    groups = sorted(first["pool"]["by_group"])
    header = ["step", "pool", *groups, "dropped", "tokens trained", "tokens scored"]
    lines = [
        f"# STM run `{final['run']}`",
        "",
        f"Final pool: **{final['pool']['size']:,}** of {first['pool']['size']:,} samples "
        f"after round {final['round']} epoch {final['epoch']}; manifest `{final['id'][:12]}`.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    warnings = [r["noise"]["warning"] for r in manifests if (r.get("noise") or {}).get("warning")]
    if warnings:
        lines[2:2] = [f"> **Warning:** {warning}" for warning in warnings] + [""]
    for record in manifests:
        step = record.get("step") or {}
        by_group = record["pool"]["by_group"]
        cells = [
            f"r{record['round']} e{record['epoch']}",
            f"{record['pool']['size']:,}",
            *(f"{by_group.get(g, 0):,}" for g in groups),
            f"{step.get('dropped', 0):,}",
            f"{record['tokens']['trained']:,}",
            f"{record['tokens']['scored']:,}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    accuracy = final["metrics"].get("accuracy") or {}
    if accuracy:
        lines += [
            "",
            "Held-out accuracy at the end: "
            + ", ".join(f"{group} {value:.3f}" for group, value in sorted(accuracy.items())),
        ]
    lines += [
        "",
        f"Manifests: `{run_dir / 'manifests'}`. Audit with `stm manifests log {final['run']}`, "
        f"compare with another run by `stm manifests diff`, report with `stm report "
        f"{final['run']}`.",
    ]
    return "\n".join(lines)


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    raw = "-".join(parts).lower()
    return "".join(c if c.isalnum() and c.isascii() else "-" for c in raw).strip("-")
