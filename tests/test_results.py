"""RESULTS.md is generated, not typed: its tables are what the shipped per-episode results give."""

import json
from pathlib import Path

import pytest

from fasvla.libero.comparison import (POLICIES, comparison_table, condition_folder, outcomes_of, paired_differences,
                                      paired_table, read_condition)
from fasvla.libero.episode import EpisodeResult
from fasvla.libero.evaluation import summarize

ROOT = Path(__file__).resolve().parents[1]
# folder -> (perturbations, policies) of each comparison in RESULTS.md
COMPARISONS = {ROOT / "results" / "libero_object": (["nominal", "action delay", "push", "action noise"], POLICIES),
               ROOT / "results" / "libero_object_real_time": (["nominal"], POLICIES[1:])}
CONDITIONS = sorted(path for folder in COMPARISONS for path in folder.glob("*/*/results.json"))


def test_every_condition_of_both_comparisons_is_shipped():
    assert len(CONDITIONS) == sum(len(perturbations) * len(policies) for perturbations, policies in
                                  COMPARISONS.values())


@pytest.mark.parametrize("path", CONDITIONS, ids=lambda p: "/".join(p.parts[-4:-1]))
def test_each_summary_is_recomputed_from_its_episodes(path):
    data = json.loads(path.read_text())
    episodes = [EpisodeResult(**e) for e in data["episodes"]]
    assert {e.init_state_id for e in episodes} == set(range(40, 45))  # held out: demonstrations used 0-19
    recomputed = summarize(episodes)
    for key in ("overall", "per_task"):
        assert recomputed[key] == data["summary"][key]


@pytest.mark.parametrize("folder", list(COMPARISONS), ids=lambda p: p.name)
def test_the_tables_in_results_md_are_the_ones_the_shipped_episodes_give(folder):
    perturbations, policies = COMPARISONS[folder]
    summaries, outcomes = {}, {}
    for perturbation in perturbations:
        for policy in policies:
            condition = read_condition(condition_folder(folder, perturbation, policy))
            summaries[(perturbation, policy.name)] = condition["summary"]
            outcomes[(perturbation, policy.name)] = outcomes_of(condition["episodes"])
    text = (ROOT / "RESULTS.md").read_text()
    assert comparison_table(summaries, policies, perturbations) in text
    assert paired_table(paired_differences(outcomes, policies, perturbations), perturbations) in text
