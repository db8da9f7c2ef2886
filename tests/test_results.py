"""RESULTS.md is generated, not typed: its tables are what the shipped per-episode results give."""

import json
import sys
from pathlib import Path

import pytest

from compare_libero import named_models
from fasvla.libero.comparison import (POLICIES, Policy, agreement_sentence, comparison_table, condition_folder,
                                      delay_differences, delay_table, episode_agreement, make_policies, outcomes_of,
                                      paired_differences, paired_table, read_condition)
from fasvla.libero.episode import EpisodeResult
from fasvla.libero.evaluation import summarize
from fasvla.sensitivity import gains_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
# the first study's comparisons, from before comparison.json recorded every condition: folder -> (conditions,
# policies); its episodes ran on init states 40-44 (the demonstrations used 0-19)
FIRST_STUDY = {RESULTS / "libero_object": (["nominal", "action delay", "push", "action noise"], POLICIES),
               RESULTS / "libero_object_real_time": (["nominal"], POLICIES[1:])}
FEEDBACK_V2 = RESULTS / "feedback_v2"
# the feedback experiment (results/feedback_v2/PLAN.md): init states 0-9, demonstrations from random resets
FEEDBACK_EXPERIMENT = [FEEDBACK_V2 / name
                       for name in ("evaluation", "braking_test", "tracking_full_g", "tracking_test",
                                    "reproduction_check")]
# the corrective gains in RESULTS.md, each model on the same unseen demonstrations (benchmarks/feedback_sensitivity.py)
GAINS = {"first version (first study)": RESULTS / "feedback_v2" / "sensitivity_shipped_fasvla.json",
         "`fas_stabilised`": RESULTS / "feedback_v2" / "sensitivity" / "fas_stabilised_unseen.json",
         "`fas_recovery`": RESULTS / "feedback_v2" / "sensitivity" / "fas_recovery_unseen.json",
         "`fas_recovery_no_delay`": RESULTS / "feedback_v2" / "sensitivity" / "fas_recovery_no_delay_unseen.json",
         "`fas_recovery_no_delay_kappa0`":
             RESULTS / "feedback_v2" / "sensitivity" / "fas_recovery_no_delay_kappa0_unseen.json"}
# the action sizes in RESULTS.md, on the same unseen demonstrations (benchmarks/action_scale.py)
SCALES = {"first version (first study)": RESULTS / "feedback_v2" / "action_scale" / "shipped_fasvla.json",
          "chunk baseline (first study)": RESULTS / "feedback_v2" / "action_scale" / "shipped_chunk.json",
          "`fas_recovery_no_delay`": RESULTS / "feedback_v2" / "action_scale" / "fas_recovery_no_delay_unseen.json"}
# the planned actions' error with each frame's own cameras and with another episode's (action_scale.py --swap_images)
IMAGE_SWAPS = {"first version (first study)": "shipped_fasvla", "chunk baseline (first study)": "shipped_chunk",
               "`fas_recovery_no_delay`": "fas_recovery_no_delay",
               "`fas_recovery_no_delay_kappa0`": "fas_recovery_no_delay_kappa0"}
GRASPS = [RESULTS / "feedback_v2" / "grasp_offset" / f"{name}_open_loop.json"
          for name in ("fas_recovery_no_delay", "fas_recovery_no_delay_kappa0")]
# the unseen demonstrations, generated twice by the same command on two machines (PLAN items 1 and 10)
UNSEEN_DEMOS = {"outputs/demos_random_eval/dataset", "outputs/feedback_v2/demos_unseen/dataset"}
# the confirmation of the tracking test (PLAN item 18a): new episodes, init states 10-29 (never 45-49)
CONFIRMATION = FEEDBACK_V2 / "confirmation_test"
# the chunk baseline on the tracked model's episodes of both (PLAN item 19(i)): init states 0-29
CHUNK_TEST = FEEDBACK_V2 / "chunk_test"
INIT_STATES = ({folder: range(40, 45) for folder in FIRST_STUDY} | {folder: range(10) for folder in FEEDBACK_EXPERIMENT}
               | {CONFIRMATION: range(10, 30), CHUNK_TEST: range(30)})
# reruns of one policy on the same episodes (scripts/episode_agreement.py): the shipped agreement -> (run, reference)
RERUN = FEEDBACK_V2 / "reproduction_check" / "nominal" / "fas_recovery_no_delay_kappa0_open_loop"
AGREEMENTS = {
    FEEDBACK_V2 / "reproduction_check" / "agreement_objective_test.json":
        (RERUN, FEEDBACK_V2 / "braking_test" / "nominal" / "fas_recovery_no_delay_kappa0_open_loop"),
    FEEDBACK_V2 / "reproduction_check" / "agreement_tracking_test.json":
        (RERUN, FEEDBACK_V2 / "tracking_test" / "nominal" / "fas_recovery_no_delay_kappa0_track4_open_loop")}


def comparison_of(folder: Path) -> tuple[list[str], list[Policy], list[int], list[list[str]]]:
    """A shipped comparison's conditions, policies, swept inference delays and extra pairs, as its comparison.json
    ran them."""
    if folder in FIRST_STUDY:
        return (*FIRST_STUDY[folder], [], [])
    arguments = json.loads((folder / "comparison.json").read_text())["arguments"]
    policies = make_policies(list(named_models(arguments["stream_model"], "stream")),
                             list(named_models(arguments["chunk_model"], "chunk")))
    chosen = [policy for policy in policies if arguments["policies"] is None or policy.name in arguments["policies"]]
    return arguments["conditions"], chosen, arguments["delays"], arguments.get("pair", [])


CONDITIONS = sorted(path for folder in INIT_STATES for path in folder.glob("*/*/results.json"))


def finished_conditions(folder: Path) -> set[tuple[str, str]]:
    """(condition, policy) of every condition the comparison reported as finished (a `--report_only` report of a
    comparison still running leaves the others out)."""
    conditions, policies, *_ = comparison_of(folder)
    if folder in FIRST_STUDY:
        return {(c, p.name) for c in conditions for p in policies}
    reported = json.loads((folder / "comparison.json").read_text())["conditions"]
    return {(c["perturbation"], c["policy"]) for c in reported if c["summary"]}


def shipped_episodes(folder: Path):
    conditions, policies, *_ = comparison_of(folder)
    summaries, outcomes = {}, {}
    finished = finished_conditions(folder)
    for condition in conditions:
        for policy in policies:
            if (condition, policy.name) in finished:
                data = read_condition(condition_folder(folder, condition, policy))
                summaries[(condition, policy.name)] = data["summary"]
                outcomes[(condition, policy.name)] = outcomes_of(data["episodes"])
    return summaries, outcomes


@pytest.mark.parametrize("folder", list(INIT_STATES), ids=lambda p: p.name)
def test_every_finished_condition_of_each_comparison_is_shipped(folder):
    _, policies, *_ = comparison_of(folder)
    by_name = {policy.name: policy for policy in policies}
    expected = {condition_folder(folder, c, by_name[p]) / "results.json" for c, p in finished_conditions(folder)}
    assert set(folder.glob("*/*/results.json")) == expected


@pytest.mark.parametrize("path", CONDITIONS, ids=lambda p: "/".join(p.parts[-4:-1]))
def test_each_summary_is_recomputed_from_its_episodes(path):
    data = json.loads(path.read_text())
    episodes = [EpisodeResult(**e) for e in data["episodes"]]
    folder = path.parents[2]
    assert {e.init_state_id for e in episodes} == set(INIT_STATES[folder])  # never 45-49, the independent check
    recomputed = summarize(episodes)
    for key in ("overall", "per_task"):
        assert recomputed[key] == data["summary"][key]


@pytest.mark.parametrize("folder", list(INIT_STATES), ids=lambda p: p.name)
def test_the_tables_in_results_md_are_the_ones_the_shipped_episodes_give(folder):
    conditions, policies, delays, pairs = comparison_of(folder)
    summaries, outcomes = shipped_episodes(folder)
    text = (ROOT / "RESULTS.md").read_text()
    assert comparison_table(summaries, policies, conditions) in text
    assert paired_table(paired_differences(outcomes, policies, conditions, pairs), conditions) in text
    if delays:
        assert delay_table(delay_differences(outcomes, policies, delays), delays) in text


@pytest.mark.parametrize("shipped", list(AGREEMENTS), ids=lambda p: p.stem)
def test_the_reruns_agree_as_shipped_and_as_results_md_says(shipped):
    run, reference = (read_condition(folder)["episodes"] for folder in AGREEMENTS[shipped])
    agreement = episode_agreement(run, reference)
    assert json.loads(shipped.read_text()) == agreement
    assert agreement_sentence(agreement) in (ROOT / "RESULTS.md").read_text()


def test_the_corrective_gains_in_results_md_are_the_shipped_measurements():
    measurements = {name: json.loads(path.read_text()) for name, path in GAINS.items()}
    assert {m["dataset"] for m in measurements.values()} <= UNSEEN_DEMOS  # the same episodes for every model
    assert {m["frames"] for m in measurements.values()} == {256}
    table = gains_table({name: m["summary"] for name, m in measurements.items()})
    assert table in (ROOT / "RESULTS.md").read_text()


def test_the_action_sizes_in_results_md_are_the_shipped_measurements():
    text = (ROOT / "RESULTS.md").read_text()
    for name, path in SCALES.items():
        measured = json.loads(path.read_text())
        assert measured["dataset"] in UNSEEN_DEMOS
        ratios = [f"{100 * row['ratio_translation']:.0f}%" for row in measured["table"][:3]]
        assert f"| {name} | " + " | ".join(ratios) + " |" in text


def image_swap_table() -> str:
    """The error of the first chunks' translation (share of the labels), own cameras / swapped, per model."""
    folder = RESULTS / "feedback_v2" / "action_error"
    lines = []
    for name, stem in IMAGE_SWAPS.items():
        own, swapped = (json.loads((folder / f"{stem}{suffix}.json").read_text()) for suffix in ("", "_swapped"))
        assert own["dataset"] in UNSEEN_DEMOS and swapped["swap_images"] and not own["swap_images"]
        if not lines:
            frames = [row["first_frame"] for row in own["table"]]
            lines += ["| model | " + " | ".join(f"frame {f}" for f in frames) + " |", "|---|" + "---|" * len(frames)]
            partner = swapped["table"]
        lines.append(f"| {name} | " + " | ".join(
            f"{100 * a['error_share_translation']:.0f}% / {100 * b['error_share_translation']:.0f}%"
            for a, b in zip(own["table"], swapped["table"])) + " |")
    lines.append("| the other episode's labels | " + " | ".join(
        f"{100 * row['partner_share_translation']:.0f}%" for row in partner) + " |")
    return "\n".join(lines)


def test_the_image_swap_table_in_results_md_is_the_shipped_measurement():
    assert image_swap_table() in (ROOT / "RESULTS.md").read_text()


def test_the_grasp_offsets_in_results_md_are_the_shipped_measurement():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import grasp_offset

    text = (ROOT / "RESULTS.md").read_text()
    for path in GRASPS:
        table = grasp_offset.report(json.loads(path.read_text())["episodes"])
        assert table in text or "\n".join("  " + line if line else "" for line in table.splitlines()) in text
