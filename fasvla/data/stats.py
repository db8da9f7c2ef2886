"""Normalisation statistics of a LeRobot dataset: mean, std, min and max from its metadata where present, the
quantiles always from the data.

v3.0 keeps statistics in meta/stats.json; v2.1 keeps per-episode statistics in meta/episodes_stats.jsonl (mean, std,
min, max, count; no quantiles), which are pooled here the way LeRobot pools them (exactly: the variance of a union).
Quantiles cannot be pooled: LeRobot 0.4.x writes the mean of the per-episode quantiles into stats.json (action q01
-0.092 there against -0.239 over the frames of one LIBERO dataset), so the same content would get a streaming action
scale `max(|q01|, |q99|)` 2.6x apart as v2.1 and as v3.0. q01 and q99 are therefore computed from the frames (the
states and actions are small arrays: one pass), whatever the metadata says; a missing mean/std/min/max too.
"""

import json

import numpy as np

from fasvla.data.lerobot_dataset import LeRobotDataset

STATS = ("mean", "std", "min", "max", "q01", "q99")
FROM_DATA = ("q01", "q99")  # always computed from the frames (see the module docstring)


def metadata_stats(dataset: LeRobotDataset) -> dict[str, dict[str, np.ndarray]]:
    """Per feature, the statistics the dataset's metadata holds (possibly none)."""
    stats_file = dataset.root / "meta" / "stats.json"
    if stats_file.is_file():
        raw = json.loads(stats_file.read_text())
        return {key: {name: np.asarray(value, dtype=np.float64) for name, value in entry.items()}
                for key, entry in raw.items()}
    episodes_file = dataset.root / "meta" / "episodes_stats.jsonl"
    if episodes_file.is_file():
        rows = [json.loads(line)["stats"] for line in episodes_file.read_text().splitlines() if line.strip()]
        return {key: pooled([row[key] for row in rows]) for key in rows[0]} if rows else {}
    return {}


def pooled(per_episode: list[dict]) -> dict[str, np.ndarray]:
    """Pool per-episode mean/std/min/max/count: the mean weighted by counts, the variance of the union."""
    counts = np.array([np.asarray(e["count"], dtype=np.float64).reshape(-1)[0] for e in per_episode])
    means = np.stack([np.asarray(e["mean"], dtype=np.float64) for e in per_episode])
    stds = np.stack([np.asarray(e["std"], dtype=np.float64) for e in per_episode])
    weights = (counts / counts.sum()).reshape(-1, *[1] * (means.ndim - 1))
    mean = (weights * means).sum(axis=0)
    variance = (weights * (stds**2 + (means - mean) ** 2)).sum(axis=0)
    return {
        "mean": mean, "std": np.sqrt(variance), "count": np.array([counts.sum()]),
        "min": np.min([np.asarray(e["min"], dtype=np.float64) for e in per_episode], axis=0),
        "max": np.max([np.asarray(e["max"], dtype=np.float64) for e in per_episode], axis=0),
    }


def computed_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """The statistics of (frames, D) values."""
    values = values.astype(np.float64)
    return {"mean": values.mean(0), "std": values.std(0), "min": values.min(0), "max": values.max(0),
            "q01": np.quantile(values, 0.01, axis=0), "q99": np.quantile(values, 0.99, axis=0)}


def dataset_norm_stats(dataset: LeRobotDataset, state_key: str, action_key: str) -> tuple[dict, list[str]]:
    """`norm_stats` for `FasVLAConfig` ({"state": {...}, "action": {...}} of lists) and the names of the statistics
    computed from the data (the quantiles, and what the metadata lacks)."""
    from_metadata = metadata_stats(dataset)
    result, computed = {}, []
    for name, key in (("state", state_key), ("action", action_key)):
        known = {stat: value for stat, value in from_metadata.get(key, {}).items() if stat not in FROM_DATA}
        missing = [stat for stat in STATS if stat not in known]
        fresh = computed_stats(dataset.column(key)) if missing else {}
        computed += [f"{key}.{stat}" for stat in missing]
        result[name] = {stat: np.asarray(known.get(stat, fresh.get(stat))).reshape(-1).tolist() for stat in STATS}
    return result, computed
