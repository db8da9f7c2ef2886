"""One condition's episodes, run in parts (other init states, other sessions), as one evaluation folder.

    python scripts/merge_conditions.py --output outputs/feedback_v2/chunk_test/push/NAME \\
        outputs/feedback_v2/tracking_test/push/NAME outputs/feedback_v2/confirmation_test/push/NAME

Each part must be a finished `eval_libero.py` folder (settings.json and results.json) with the same settings and
other episodes. The output gets those settings and every episode as a finished run's rank file, so that
`eval_libero.py` (and `compare_libero.py`) over the parts' init states together resume it with nothing left to run
and write its results.json: one condition of the union, paired with other policies on all of its episodes.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fasvla.libero.comparison import episode_key, read_condition  # noqa: E402


def finished_part(part: Path) -> tuple[dict, list[dict]]:
    """A finished evaluation folder's settings and episodes."""
    settings, results = part / "settings.json", read_condition(part)
    if not settings.is_file() or not results:
        raise ValueError(f"part {str(part)!r} is not a finished evaluation (settings.json and results.json)")
    return json.loads(settings.read_text()), results["episodes"]


def merge(parts: list[Path], output: Path) -> int:
    """Writes output/settings.json and output/results_rank0.jsonl from `parts`; returns the episodes merged."""
    if not parts:
        raise ValueError("give at least one part to merge")
    if output.exists() and any(output.iterdir()):
        raise ValueError(f"--output {str(output)!r} is not empty: merge into a new folder")
    settings, episodes, seen = None, [], {}
    for part in parts:
        part_settings, part_episodes = finished_part(part)
        if settings is not None and part_settings != settings:
            changed = sorted(k for k in settings.keys() | part_settings.keys() if settings.get(k) != part_settings.get(k))
            raise ValueError(f"part {str(part)!r} ran with other settings than {str(parts[0])!r}: {changed}")
        settings = part_settings
        for episode in part_episodes:
            key = episode_key(episode)
            if key in seen:
                raise ValueError(f"episode {key} is in both {str(seen[key])!r} and {str(part)!r}")
            seen[key] = part
            episodes.append(episode)
    output.mkdir(parents=True, exist_ok=True)
    (output / "settings.json").write_text(json.dumps(settings, indent=2))
    (output / "results_rank0.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
    return len(episodes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("parts", type=Path, nargs="+", help="finished evaluation folders of one condition")
    p.add_argument("--output", type=Path, required=True, help="a new folder")
    args = p.parse_args(argv)
    merged = merge(args.parts, args.output)
    print(f"{merged} episodes of {len(args.parts)} parts in {args.output}")
    return merged


if __name__ == "__main__":
    main()
