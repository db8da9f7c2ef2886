"""Policies x perturbations on the same LIBERO episodes: the conditions, their `eval_libero.py` runs and the table.

A condition is a policy (a chunk baseline, or a streaming model with one feedback mode) under one perturbation.
Every condition runs the same tasks and trials (so the same init states and episode seeds), each in its own
folder, so that an interrupted comparison resumes where it stopped.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

from fasvla.libero.evaluation import percent_with_interval


@dataclass(frozen=True)
class Policy:
    name: str
    model: str  # the name of the compared model it runs
    feedback_mode: str | None  # streaming only


FEEDBACK_LABELS = {"open_loop": "open loop", "synchronous": "synchronous", "anticipatory": "anticipatory"}


def make_policies(stream_models: list[str], chunk_models: list[str]) -> list[Policy]:
    """Each chunk model as it is, each streaming model in every feedback mode ("<model> open loop", ...)."""
    return [Policy(name, name, None) for name in chunk_models] + [
        Policy(f"{name} {label}", name, mode) for name in stream_models for mode, label in FEEDBACK_LABELS.items()]


POLICIES = make_policies(["stream"], ["chunk"])  # one streaming model against one chunk baseline


def policy_pairs(policies: list[Policy]) -> list[tuple[str, str]]:
    """(policy, reference) pairs compared episode by episode: what feedback adds to the same model (anticipatory and
    synchronous against open loop, anticipatory against synchronous), and each model's anticipatory mode against
    every chunk baseline."""
    names = {policy.name for policy in policies}
    streams = list(dict.fromkeys(p.model for p in policies if p.feedback_mode))
    chunks = [p.name for p in policies if not p.feedback_mode]
    pairs = []
    for model in streams:
        pairs += [(f"{model} anticipatory", f"{model} open loop"), (f"{model} synchronous", f"{model} open loop"),
                  (f"{model} anticipatory", f"{model} synchronous")]
        pairs += [(f"{model} anticipatory", chunk) for chunk in chunks]
    return [(a, b) for a, b in pairs if a in names and b in names]


def perturbations(action_delay: int, push: tuple[int, float, float, float, int], action_noise: float,
                  inference_delays: tuple[int, ...] = ()) -> dict:
    """name -> the `eval_libero.py` arguments of that perturbation. push: (step, fx, fy, fz, steps). Each inference
    delay D > 0 is a condition "inference delay D" (D = 0 is nominal)."""
    step, fx, fy, fz, steps = push
    return {"nominal": [], "action delay": ["--action_delay", str(action_delay)],
            "push": ["--push_step", str(int(step)), "--push_force", str(fx), str(fy), str(fz),
                     "--push_steps", str(int(steps))],
            "action noise": ["--action_noise", str(action_noise)]} | {
        inference_delay_name(d): ["--inference_delay", str(d)] for d in inference_delays if d > 0}


def inference_delay_name(delay: int) -> str:
    return "nominal" if delay == 0 else f"inference delay {delay}"


def delay_differences(outcomes: dict[tuple[str, str], dict], policies: list[Policy],
                      delays: list[int]) -> list[dict]:
    """What each inference delay costs each policy: its success at delay D against its own at D = 0, paired on
    the same episodes."""
    return [{"pair": [f"{policy.name} at D={d}", f"{policy.name} at D=0"], "perturbation": inference_delay_name(d),
             "paired": paired_difference(outcomes.get((inference_delay_name(d), policy.name), {}),
                                         outcomes.get(("nominal", policy.name), {}))}
            for policy in policies for d in delays if d > 0]


def delay_table(delay_costs: list[dict], delays: list[int]) -> str:
    """Markdown of `delay_differences`: one row per policy and delay, one column per swept delay."""
    swept = [inference_delay_name(d) for d in delays if d > 0]
    return paired_table(delay_costs, swept, "Each policy at inference delay D against itself at D = 0")


def condition_folder(root: Path, perturbation: str, policy: Policy) -> Path:
    return Path(root) / perturbation.replace(" ", "_") / policy.name.replace(" ", "_")


def condition_arguments(policy: Policy, models: dict[str, str], perturbation_arguments: list[str],
                        common: list[str], folder: Path) -> list[str]:
    """The `eval_libero.py` command line of one condition."""
    feedback = ["--feedback_mode", policy.feedback_mode] if policy.feedback_mode else []
    return ["--model", models[policy.model], *feedback, *perturbation_arguments, *common, "--output_dir", str(folder)]


def read_condition(folder: Path) -> dict:
    """One condition's `results.json` (its "summary" and "episodes"), empty while it has not run to its end."""
    results = Path(folder) / "results.json"
    return json.loads(results.read_text()) if results.is_file() else {}


def episode_key(episode: dict) -> tuple[str, int, int]:
    """(suite, task id, trial): what makes two conditions' episodes the same episode (init state and seed)."""
    return episode["suite"], episode["task_id"], episode["trial"]


def outcomes_of(episodes: list[dict]) -> dict[tuple[str, int, int], bool]:
    """(suite, task id, trial) -> success, for every episode of one condition."""
    return {episode_key(e): bool(e["success"]) for e in episodes}


def episode_agreement(episodes: list[dict], reference: list[dict]) -> dict:
    """How far two runs of one policy on the same episodes agree (a rerun on another machine, or a change meant to
    leave the policy as it was): the shared episodes, each run's successes, the episodes whose outcome or length
    differs, and the paired difference of `paired_difference`."""
    steps, reference_steps = ({episode_key(e): e["steps"] for e in run} for run in (episodes, reference))
    outcomes, reference_outcomes = outcomes_of(episodes), outcomes_of(reference)
    shared = sorted(steps.keys() & reference_steps.keys())
    return {"episodes": len(shared), "successes": sum(outcomes[k] for k in shared),
            "reference_successes": sum(reference_outcomes[k] for k in shared),
            "other_outcome": [list(k) for k in shared if outcomes[k] != reference_outcomes[k]],
            "other_length": [list(k) for k in shared if steps[k] != reference_steps[k]],
            "paired": paired_difference(outcomes, reference_outcomes)}


def agreement_sentence(agreement: dict) -> str:
    """`episode_agreement` in one line, as RESULTS.md quotes it."""
    paired = agreement["paired"]
    return (f"{agreement['episodes']} shared episodes: {agreement['successes']} solved against "
            f"{agreement['reference_successes']}; {len(agreement['other_outcome'])} end otherwise, "
            f"{len(agreement['other_length'])} at another step (paired: {paired['wins']}/{paired['losses']}, "
            f"p = {paired['p']:.2f})")


def episode_seconds(episodes: list[dict]) -> float:
    """Policy and simulator time inside one condition's episodes: its cost, however often it resumed."""
    return sum(e["steps"] * (e["policy_ms_per_action"] + e["env_ms_per_step"]) / 1000 for e in episodes)


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided McNemar (sign) test on the discordant pairs: the chance of a split at least this uneven
    if either policy were equally likely to be the one that succeeds."""
    if wins < 0 or losses < 0:
        raise ValueError(f"wins and losses must be >= 0, got {wins} and {losses}")
    n = wins + losses
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_difference(outcomes: dict, reference: dict) -> dict | None:
    """Success-rate difference over the episodes both conditions ran (same init states and seeds), with the
    episodes only one of them solved and the sign test's p-value; None when they share no episode."""
    shared = sorted(outcomes.keys() & reference.keys())
    if not shared:
        return None
    wins = sum(outcomes[k] and not reference[k] for k in shared)
    losses = sum(reference[k] and not outcomes[k] for k in shared)
    return {"episodes": len(shared), "difference": (wins - losses) / len(shared), "wins": wins, "losses": losses,
            "p": sign_test_p(wins, losses)}


def paired_differences(outcomes: dict[tuple[str, str], dict], policies: list[Policy], perturbations: list[str],
                       extra_pairs: list[tuple[str, str]] = ()) -> list[dict]:
    """`paired_difference` of each pair of `policy_pairs` and then of `extra_pairs` (policy names: across models,
    which `policy_pairs` never pairs), per perturbation."""
    pairs = list(dict.fromkeys(policy_pairs(policies) + [tuple(pair) for pair in extra_pairs]))
    return [{"pair": [a, b], "perturbation": p,
             "paired": paired_difference(outcomes.get((p, a), {}), outcomes.get((p, b), {}))}
            for a, b in pairs for p in perturbations]


def paired_table(differences: list[dict], perturbations: list[str], title: str = "Paired on the same episodes") -> str:
    """Markdown of `paired_differences`: one row per pair, one column per perturbation."""
    cells = {(tuple(d["pair"]), d["perturbation"]): _paired_cell(d["paired"]) for d in differences}
    pairs = list(dict.fromkeys(tuple(d["pair"]) for d in differences))
    if not pairs:
        return ""
    rows = [f"| {a} - {b} | " + " | ".join(cells.get(((a, b), p), "not run") for p in perturbations) + " |"
            for a, b in pairs]
    return (f"{title}: success difference in points (episodes only the first / only the second "
            "solved, two-sided sign-test p):\n\n| pair | " + " | ".join(perturbations) + " |\n|---|"
            + "---|" * len(perturbations) + "\n" + "\n".join(rows) + "\n")


def _paired_cell(paired: dict | None) -> str:
    if paired is None:
        return "not run"
    return f"{100 * paired['difference']:+.0f} ({paired['wins']}/{paired['losses']}, p={paired['p']:.2f})"


def comparison_table(summaries: dict[tuple[str, str], dict], policies: list[Policy], perturbations: list[str]) -> str:
    """Markdown: success [95% CI] (episodes) per policy and perturbation, then the mean episode length, the
    policy's time per action and the held ticks of real-time runs (what feedback costs)."""
    header = "| policy | " + " | ".join(perturbations) + " |"
    rule = "|---|" + "---|" * len(perturbations)
    success, cost = [header, rule], [header, rule]
    for policy in policies:
        entries = [summaries.get((p, policy.name), {}).get("overall") for p in perturbations]
        success.append(f"| {policy.name} | " + " | ".join(
            f"{percent_with_interval(e)} ({e['episodes']})" if e else "not run" for e in entries) + " |")
        cost.append(f"| {policy.name} | " + " | ".join(_cost_cell(e) for e in entries) + " |")
    return ("Success rate [95% Wilson interval] (episodes):\n\n" + "\n".join(success)
            + "\n\nMean episode length (steps), policy time per action, and under the real-time runner the mean "
            "ticks the arm was held for want of an action:\n\n" + "\n".join(cost) + "\n")


def _cost_cell(entry: dict | None) -> str:
    if entry is None:
        return "not run"
    held = f", {entry['held_steps']:.1f} held" if entry.get("held_steps") else ""
    return f"{entry['mean_steps']:.0f} steps, {entry['policy_ms_per_action']:.1f} ms{held}"


def comparison_figure(summaries: dict[tuple[str, str], dict], policies: list[Policy], perturbations: list[str],
                      path: Path) -> Path:
    """Grouped bars of the success rates with their 95% intervals, one group per perturbation (none where a
    condition has not run)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(2.2 * len(perturbations) + 2, 3.6))
    width = 0.8 / len(policies)
    for index, policy in enumerate(policies):
        entries = [summaries.get((p, policy.name), {}).get("overall") for p in perturbations]
        rates = [100 * e["success_rate"] if e else math.nan for e in entries]  # a condition not run: no bar
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


def delay_sweep_figure(summaries: dict[tuple[str, str], dict], policies: list[Policy], delays: list[int],
                       path: Path) -> Path:
    """Success rate against the inference delay, one line per policy, with the 95% intervals as bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.8))
    for policy in policies:
        points = [(d, summaries.get((inference_delay_name(d), policy.name), {}).get("overall")) for d in delays]
        points = [(d, e) for d, e in points if e]
        if not points:
            continue
        x = [d for d, _ in points]
        line, = axes.plot(x, [100 * e["success_rate"] for _, e in points], marker="o", label=policy.name)
        axes.fill_between(x, [100 * e["ci95"][0] for _, e in points], [100 * e["ci95"][1] for _, e in points],
                          color=line.get_color(), alpha=0.15)
    axes.set_xticks(delays)
    axes.set_xlabel("inference delay D (actions between a chunk's observation and its first action)")
    axes.set_ylabel("success rate (%)")
    axes.set_ylim(0, 105)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
