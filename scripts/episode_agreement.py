"""Do two runs of one policy on the same episodes agree? Episode by episode, from their results.json.

    python scripts/episode_agreement.py outputs/feedback_v2/reproduction_check/nominal/NAME \\
        results/feedback_v2/braking_test/nominal/NAME [--output agreement.json]

For a rerun on another machine, or a change that must leave a policy as it was (tracking leaves open loop bit for
bit in the tests; this says whether the simulator agrees). Prints the successes of each, the episodes whose outcome
or length differs, and the paired sign test.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fasvla.libero.comparison import agreement_sentence, episode_agreement, read_condition  # noqa: E402


def episodes_in(folder: Path) -> list[dict]:
    results = read_condition(folder)
    if not results:
        raise ValueError(f"run folder {str(folder)!r} has no results.json (not run, or not finished)")
    return results["episodes"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a condition's folder (with results.json)")
    p.add_argument("reference", type=Path, help="the same policy's run to compare with")
    p.add_argument("--output", type=Path, help="also write the agreement as JSON")
    args = p.parse_args(argv)
    agreement = episode_agreement(episodes_in(args.run), episodes_in(args.reference))
    if agreement["episodes"] == 0:
        raise ValueError(f"{str(args.run)!r} and {str(args.reference)!r} share no episode")
    print(agreement_sentence(agreement))
    for suite, task, trial in agreement["other_outcome"]:
        print(f"  other outcome: {suite} task {task} trial {trial}")
    if args.output:
        args.output.write_text(json.dumps(agreement, indent=2) + "\n")
    return agreement


if __name__ == "__main__":
    main()
