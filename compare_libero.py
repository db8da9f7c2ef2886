"""Does state feedback help, when, and at what cost: streaming FAS-VLAs against chunk baselines on LIBERO.

    python compare_libero.py --stream_model runs/stream --chunk_model runs/chunk \
        --task_suite_name libero_object --task_ids 0 1 2 --first_trial 40 --num_trials_per_task 10
    python compare_libero.py --stream_model v1=runs/fas_v1 fixed=runs/fas_fixed --chunk_model chunk=runs/chunk ...

Policies: each chunk model (SmolVLA's execution: plan H actions, execute `n_action_steps` of them open loop) and each
streaming model with open-loop, synchronous and anticipatory feedback (models are named `NAME=MODEL`; unnamed, a
streaming model is "stream" and a chunk model "chunk"). Perturbations: none, delayed actions, an external push,
action noise, and with `--inference_delays` the delay sweep (each chunk observed D actions before it starts;
`delay_sweep.png`, and each policy at D against itself at D = 0). Every (perturbation, policy) condition is an
`eval_libero.py` run over the same tasks and trials (`--first_trial` picks init states not trained on) in
`<output_dir>/<perturbation>/<policy>/`; a rerun resumes what was interrupted (`--report_only` runs nothing and
reports the conditions that have finished). Writes `comparison.md`, `comparison.json` and `comparison.png`: success
rates with 95% Wilson intervals, and paired differences between policies on the same episodes with an exact sign
test.
"""

import argparse
import json
import time
from pathlib import Path

import eval_libero
from fasvla.libero.comparison import (comparison_figure, comparison_table, condition_arguments, condition_folder,
                                      delay_differences, delay_sweep_figure, delay_table, episode_seconds,
                                      inference_delay_name, make_policies, outcomes_of, paired_differences,
                                      paired_table, perturbations, read_condition)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stream_model", nargs="+", default=[], metavar="[NAME=]MODEL",
                   help="streaming FAS-VLA folders or Hub ids, each optionally named (default name: stream)")
    p.add_argument("--chunk_model", nargs="+", default=[], metavar="[NAME=]MODEL",
                   help="chunk-objective baselines, each optionally named (default name: chunk)")
    p.add_argument("--policies", nargs="+", default=None,
                   help="the policies to run (default: every one): a chunk model's name, or a streaming model's "
                        "name and a feedback mode, e.g. 'stream anticipatory'")
    p.add_argument("--perturbations", nargs="*", default=["nominal", "action delay", "push", "action noise"],
                   choices=["nominal", "action delay", "push", "action noise"])
    p.add_argument("--action_delay", type=int, default=2, help="steps the executed actions lag")
    p.add_argument("--push", type=float, nargs=5, default=(40, 0.0, 60.0, 0.0, 2),
                   metavar=("STEP", "FX", "FY", "FZ", "STEPS"), help="an external push on the end effector")
    p.add_argument("--action_noise", type=float, default=0.1, help="std of the noise on executed actions")
    p.add_argument("--inference_delays", type=int, nargs="+", default=[],
                   help="the delay sweep: a condition per inference delay D (eval_libero.py --inference_delay; "
                        "0 is nominal), each policy's success against D in delay_sweep.png")
    p.add_argument("--pair", nargs=2, action="append", default=[], metavar=("POLICY", "REFERENCE"),
                   help="also pair these two policies episode by episode (repeatable), e.g. two models in one mode: "
                        "--pair 'new open loop' 'old open loop'")
    p.add_argument("--output_dir", default="outputs/libero_comparison")
    p.add_argument("--report_only", action="store_true",
                   help="run nothing: the tables and figures of the conditions that have finished, the others "
                        "'not run' (a look at a comparison still running, or a report of part of one)")
    args, common = p.parse_known_args(argv)  # the rest goes to every eval_libero.py run (tasks, trials, ...)
    for forbidden in ("--model", "--feedback_mode", "--output_dir", "--action_delay", "--push_step", "--action_noise"):
        if forbidden in common:
            p.error(f"{forbidden} is set per condition; give the comparison's own options instead")
    args.common = common
    if any(d < 0 for d in args.inference_delays):
        p.error(f"--inference_delays must be >= 0, got {args.inference_delays}")
    args.delays = sorted(set(args.inference_delays))
    args.conditions = list(dict.fromkeys(args.perturbations + [inference_delay_name(d) for d in args.delays]))
    try:
        args.models = named_models(args.stream_model, "stream") | named_models(args.chunk_model, "chunk")
    except ValueError as error:
        p.error(str(error))
    policies = make_policies(list(named_models(args.stream_model, "stream")),
                             list(named_models(args.chunk_model, "chunk")))
    if not policies:
        p.error("give at least one --stream_model or --chunk_model")
    unknown = sorted(set(args.policies or []) - {policy.name for policy in policies})
    if unknown:
        p.error(f"--policies {unknown} are not among {[policy.name for policy in policies]}")
    args.chosen = [policy for policy in policies if args.policies is None or policy.name in args.policies]
    unpaired = sorted({name for pair in args.pair for name in pair} - {policy.name for policy in args.chosen})
    if unpaired:
        p.error(f"--pair {unpaired} are not among the policies run, {[policy.name for policy in args.chosen]}")
    return args


def named_models(values: list[str], default: str) -> dict[str, str]:
    """["a=dir", "dir2"] -> {"a": "dir", default: "dir2"}, refusing a name given twice."""
    models = {}
    for value in values:
        name, _, folder = value.rpartition("=") if "=" in value else (default, "", value)
        if name in models:
            raise ValueError(f"model name {name!r} is given twice: name the models, NAME=MODEL")
        models[name] = folder
    return models


def main(argv=None) -> dict:
    args = parse_args(argv)
    root = Path(args.output_dir)
    models, chosen = args.models, args.chosen
    arguments = perturbations(args.action_delay, tuple(args.push), args.action_noise, tuple(args.delays))
    summaries, outcomes, started, inside = {}, {}, time.perf_counter(), 0.0
    for perturbation in args.conditions:
        for policy in chosen:
            folder = condition_folder(root, perturbation, policy)
            if not args.report_only:
                print(f"\n== {perturbation} / {policy.name} -> {folder}", flush=True)
                eval_libero.main(condition_arguments(policy, models, arguments[perturbation], args.common, folder))
            condition = read_condition(folder)
            summaries[(perturbation, policy.name)] = condition.get("summary", {})
            outcomes[(perturbation, policy.name)] = outcomes_of(condition.get("episodes", []))
            inside += episode_seconds(condition.get("episodes", []))
    table = comparison_table(summaries, chosen, args.conditions)
    differences = paired_differences(outcomes, chosen, args.conditions, args.pair)
    table += "\n" + paired_table(differences, args.conditions)
    if args.delays:
        delay_costs = delay_differences(outcomes, chosen, args.delays)
        table += "\n" + delay_table(delay_costs, args.delays)
        differences += delay_costs
        delay_sweep_figure(summaries, chosen, args.delays, root / "delay_sweep.png")
    wall = time.perf_counter() - started
    footer = (f"{inside:.0f} s of policy and simulator time inside the episodes (over every run, resumed ones "
              f"included); {wall:.0f} s of wall time in the last run")
    (root / "comparison.md").write_text(f"# LIBERO: feedback comparison\n\n{table}\n{footer}\n")
    (root / "comparison.json").write_text(json.dumps(
        {"arguments": vars(args), "wall_s": wall, "episode_s": inside,
         "conditions": [{"perturbation": p, "policy": n, "summary": s} for (p, n), s in summaries.items()],
         "paired": differences},
        indent=2, default=str))
    comparison_figure(summaries, chosen, args.conditions, root / "comparison.png")
    print(table)
    return summaries


if __name__ == "__main__":
    main()
