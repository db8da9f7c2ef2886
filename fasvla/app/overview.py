"""Success per task and per suite of a set of rollouts, for each condition (feedback mode, perturbation, model).

Computed from the episodes' own metadata, so a folder whose evaluation stopped early (no results.json) still gets
its overview.
"""

import pandas as pd

from fasvla.app.rollouts import Rollout, perturbation_label

COLUMNS = ["suite / task", "task", "condition", "episodes", "successes", "success rate", "mean steps"]


def success_table(rollouts: list[Rollout]) -> pd.DataFrame:
    """One row per (task, condition), then one per (suite, condition); episodes without an outcome are left out."""
    judged = [r for r in rollouts if r.success is not None]
    if not judged:
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.DataFrame([{"suite": r.suite, "task_id": r.task_id, "task": r.task, "success": bool(r.success),
                           "steps": r.steps, "condition": condition(r)} for r in judged])
    per_task = _aggregate(frame, ["suite", "task_id", "task", "condition"])
    per_task["suite / task"] = per_task["suite"] + "/" + per_task["task_id"].astype(str)
    per_suite = _aggregate(frame, ["suite", "condition"])
    per_suite["suite / task"], per_suite["task"] = per_suite["suite"] + " (all)", ""
    return pd.concat([per_task, per_suite], ignore_index=True)[COLUMNS]


def condition(rollout: Rollout) -> str:
    return f"{rollout.feedback_mode} · {perturbation_label(rollout.perturbation)} · {rollout.model}"


def _aggregate(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    grouped = frame.groupby(keys, sort=True)
    table = grouped.agg(episodes=("success", "size"), successes=("success", "sum"), mean_steps=("steps", "mean"))
    table["success rate"] = table["successes"] / table["episodes"]
    return table.reset_index().rename(columns={"mean_steps": "mean steps"})
