"""Policies x perturbations on the same LIBERO episodes: the conditions, their `eval_libero.py` runs and the table.

A condition is a policy (the chunk baseline, or the streaming model with one feedback mode) under one perturbation.
Every condition runs the same tasks and trials (so the same init states and episode seeds), each in its own
folder, so that an interrupted comparison resumes where it stopped.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from fasvla.libero.evaluation import percent_with_interval


@dataclass(frozen=True)
class Policy:
    name: str
    model: str  # "stream" or "chunk": which of the compared models
    feedback_mode: str | None  # streaming only


POLICIES = [Policy("chunk", "chunk", None), Policy("stream open loop", "stream", "open_loop"),
            Policy("stream synchronous", "stream", "synchronous"),
            Policy("stream anticipatory", "stream", "anticipatory")]


def perturbations(action_delay: int, push: tuple[int, float, float, float, int], action_noise: float) -> dict:
    """name -> the `eval_libero.py` arguments of that perturbation. push: (step, fx, fy, fz, steps)."""
    step, fx, fy, fz, steps = push
    return {"nominal": [], "action delay": ["--action_delay", str(action_delay)],
            "push": ["--push_step", str(int(step)), "--push_force", str(fx), str(fy), str(fz),
                     "--push_steps", str(int(steps))],
            "action noise": ["--action_noise", str(action_noise)]}


def condition_folder(root: Path, perturbation: str, policy: Policy) -> Path:
    return Path(root) / perturbation.replace(" ", "_") / policy.name.replace(" ", "_")


def condition_arguments(policy: Policy, models: dict[str, str], perturbation_arguments: list[str],
                        common: list[str], folder: Path) -> list[str]:
    """The `eval_libero.py` command line of one condition."""
    feedback = ["--feedback_mode", policy.feedback_mode] if policy.feedback_mode else []
    return ["--model", models[policy.model], *feedback, *perturbation_arguments, *common, "--output_dir", str(folder)]


def read_condition(folder: Path) -> dict | None:
    """The overall summary of one finished condition (None while it has not run to its end)."""
    results = Path(folder) / "results.json"
    return json.loads(results.read_text())["summary"] if results.is_file() else None


def comparison_table(summaries: dict[tuple[str, str], dict], policies: list[Policy], perturbations: list[str]) -> str:
    """Markdown: success [95% CI] (episodes) per policy and perturbation, then the mean episode length and the
    policy's time per action (what feedback costs)."""
    header = "| policy | " + " | ".join(perturbations) + " |"
    rule = "|---|" + "---|" * len(perturbations)
    success, cost = [header, rule], [header, rule]
    for policy in policies:
        entries = [summaries.get((p, policy.name), {}).get("overall") for p in perturbations]
        success.append(f"| {policy.name} | " + " | ".join(
            f"{percent_with_interval(e)} ({e['episodes']})" if e else "not run" for e in entries) + " |")
        cost.append(f"| {policy.name} | " + " | ".join(
            f"{e['mean_steps']:.0f} steps, {e['policy_ms_per_action']:.1f} ms" if e else "not run"
            for e in entries) + " |")
    return ("Success rate [95% Wilson interval] (episodes):\n\n" + "\n".join(success)
            + "\n\nMean episode length (steps) and policy time per action:\n\n" + "\n".join(cost) + "\n")


def comparison_figure(summaries: dict[tuple[str, str], dict], policies: list[Policy], perturbations: list[str],
                      path: Path) -> Path:
    """Grouped bars of the success rates with their 95% intervals, one group per perturbation."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(2.2 * len(perturbations) + 2, 3.6))
    width = 0.8 / len(policies)
    for index, policy in enumerate(policies):
        entries = [summaries.get((p, policy.name), {}).get("overall") for p in perturbations]
        rates = [100 * e["success_rate"] if e else 0.0 for e in entries]
        errors = [[100 * (e["success_rate"] - e["ci95"][0]) if e else 0.0 for e in entries],
                  [100 * (e["ci95"][1] - e["success_rate"]) if e else 0.0 for e in entries]]
        positions = [group + (index - (len(policies) - 1) / 2) * width for group in range(len(perturbations))]
        axes.bar(positions, rates, width, yerr=errors, capsize=3, label=policy.name)
    axes.set_xticks(range(len(perturbations)), perturbations)
    axes.set_ylabel("success rate (%)")
    axes.set_ylim(0, 105)
    axes.legend(fontsize=8, ncols=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
