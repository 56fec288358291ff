"""What `stm run --dry-run` reports: the resolved config, the prepared dataset, where the
run would write and in what state it finds the run, and the plan of rounds, epochs,
floors, policy and trainer. Read-only: it looks at the store and writes nothing."""

from __future__ import annotations

from typing import Any

import polars as pl
import pyarrow as pa

from pipeline.config import RunConfig, dumps_toml, to_dict
from pipeline.errors import StoreError
from pipeline.launch import RunPlan
from pipeline.manifest import group_counts
from pipeline.policies import policy_parameters
from pipeline.pruning import run_manifests
from pipeline.resume import is_being_written
from pipeline.runs import RunInputs
from pipeline.store import step_name

BUILTIN_SOURCE = "builtin:arithmetic"


def describe_run(
    plan: RunPlan, inputs: RunInputs, named: bool, prefect: dict[str, str]
) -> dict[str, Any]:
    """Everything the dry run prints, JSON-ready. `named`: the run id was given rather
    than generated (a generated one carries the time, so a later run gets another);
    `prefect` says where the flow would run, as the CLI reads it from the environment."""
    config = plan.config
    return {
        "dry_run": True,
        "config": to_dict(config),
        "config_toml": dumps_toml(config),
        "dataset": _dataset(config, inputs),
        "run": {**_run_target(plan), "named": named},
        "plan": _plan(config),
        "prefect": prefect,
    }


def _counts(table: pa.Table) -> dict[str, Any]:
    return {
        "samples": table.num_rows,
        "by_group": group_counts(pl.from_arrow(table.select(["group"]))),
    }


def _dataset(config: RunConfig, inputs: RunInputs) -> dict[str, Any]:
    data = config.data
    held_out = None
    if inputs.eval_samples is not None:
        source = data.eval_path or BUILTIN_SOURCE
        held_out = {"source": source, **_counts(inputs.eval_samples)}
    return {
        "source": data.path or BUILTIN_SOURCE,
        "fingerprint": inputs.fingerprint,
        **_counts(inputs.samples),
        "held_out": held_out,
    }


def _run_target(plan: RunPlan) -> dict[str, Any]:
    """Where the run would write, and what it would do there: start, resume after the
    last manifest written, or nothing (complete)."""
    layout = plan.layout
    target: dict[str, Any] = {
        "id": layout.run_id,
        "store": str(layout.root),
        "run_dir": str(layout.run_dir),
        "state": plan.state,
    }
    if plan.state == "new":
        return target
    if plan.state == "resume" and is_being_written(layout):
        # where the real run would stop: its lock is held by the process writing the run
        raise StoreError(
            f"{layout.run_dir}: run {layout.run_id!r} is being written by another process"
        )
    manifests = run_manifests(layout)
    last = manifests[-1] if manifests else None
    target["steps_done"] = sum(record["kind"] == "prune" for record in manifests)
    target["last_step"] = step_name(last["round"], last["epoch"]) if last else None
    if plan.state == "complete" and last is not None:
        target["final_manifest"] = last["id"]
        target["final_pool"] = last["pool"]["size"]
    return target


def _plan(config: RunConfig) -> dict[str, Any]:
    policy = config.policy
    per_round = [policy_parameters(policy.name, policy, r) for r in range(config.rounds)]
    policy_plan: dict[str, Any] = {"name": policy.name, **per_round[0]}
    if "floor" in per_round[0]:
        policy_plan["tighten"] = policy.tighten
        policy_plan["floor_by_round"] = [params["floor"] for params in per_round]
    return {
        "rounds": config.rounds,
        "epochs": config.epochs,
        "max_steps": config.rounds * config.epochs,
        "policy": policy_plan,
        "trainer": _trainer(config),
        "scoring": to_dict(config.scoring),
    }


def _trainer(config: RunConfig) -> dict[str, Any]:
    if config.trainer.command is not None:
        return {"kind": "external", **to_dict(config.trainer)}
    return {"kind": "builtin", "model": to_dict(config.model), "train": to_dict(config.train)}


def render_text(description: dict[str, Any]) -> str:
    """The description for people: the config as TOML, then one short section each."""
    dataset, run, plan = description["dataset"], description["run"], description["plan"]
    lines = [
        "Dry run: nothing is written and Prefect is not started.",
        "",
        "# resolved config",
        description["config_toml"].rstrip(),
        "",
        f"dataset   {dataset['source']} (fingerprint {dataset['fingerprint'][:16]})",
        f"          {_group_line(dataset)}",
        "held out  " + (_group_line(dataset["held_out"]) if dataset["held_out"] else "none"),
        f"run       {run['id']}{'' if run['named'] else ' (generated from the time and config)'}",
        f"          in {run['run_dir']}",
        f"          {_state_line(run, plan)}",
        f"plan      {plan['rounds']} round(s) x {plan['epochs']} epoch(s): at most "
        f"{plan['max_steps']} train, score and prune steps",
        f"policy    {_policy_line(plan['policy'])}",
        f"trainer   {_trainer_line(plan['trainer'])}",
        f"scoring   batch {plan['scoring']['batch_size']}, {plan['scoring']['threads']} thread(s)",
        f"prefect   {_prefect_line(description['prefect'])}",
    ]
    return "\n".join(lines) + "\n"


def _group_line(counts: dict[str, Any]) -> str:
    groups = ", ".join(f"{group} {count:,}" for group, count in counts["by_group"].items())
    return f"{counts['samples']:,} samples ({groups})"


def _state_line(run: dict[str, Any], plan: dict[str, Any]) -> str:
    if run["state"] == "new":
        return "a new run"
    if run["state"] == "complete":
        return (
            f"already complete: nothing would run (final manifest "
            f"{run['final_manifest'][:12]}, pool {run['final_pool']:,})"
        )
    after = f"after {run['last_step']}" if run["last_step"] else "from its start"
    return (
        f"would resume this unfinished run {after} "
        f"({run['steps_done']} of at most {plan['max_steps']} steps done)"
    )


def _policy_line(policy: dict[str, Any]) -> str:
    """STM's rule in words; any other policy by its parameters (docs/policies.md)."""
    params = {k: v for k, v in policy.items() if k not in ("name", "tighten", "floor_by_round")}
    floors = ""
    if "floor_by_round" in policy:
        per_round = ", ".join(f"{floor:g}" for floor in policy["floor_by_round"])
        floors = f"floor per round {per_round} (x{policy['tighten']:g} each round)"
    if policy["name"] == "stm":
        extra = "".join(f"; {key} {params[key]}" for key in ("warmup", "patience") if key in params)
        return (
            f"{policy['name']}: drop when the loss fell by >= {policy['delta']:g} "
            f"({policy['delta_mode']}) and is <= the floor; {floors}{extra}"
        )
    if not params:
        return f"{policy['name']}: keeps every sample"
    listed = ", ".join(f"{key} {value}" for key, value in params.items() if key != "floor")
    return f"{policy['name']}: " + "; ".join(part for part in (listed, floors) if part)


def _trainer_line(trainer: dict[str, Any]) -> str:
    if trainer["kind"] == "external":
        timeout = trainer.get("timeout_seconds")
        limit = f"timeout {timeout:g} s" if timeout is not None else "no timeout"
        return f"external command `{trainer['command']}` ({limit})"
    model, train = trainer["model"], trainer["train"]
    shape = f"embed {model['embed_dim']}, hidden {model['hidden_dim']}, {model['layers']} layer(s)"
    if model["arch"] == "transformer":
        shape += f", {model['heads']} heads"
    return (
        f"built-in {model['arch']} ({shape}, max_len {model['max_len']}); batch "
        f"{train['batch_size']}, lr {train['lr']:g}, {train['threads']} thread(s)"
    )


def _prefect_line(prefect: dict[str, str]) -> str:
    if prefect["mode"] == "server":
        return f"server at {prefect['api_url']} (PREFECT_API_URL)"
    return f"local, in-process, no server (state in {prefect['home']})"
