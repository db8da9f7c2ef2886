"""Rollout recordings for the app's tests, written by the evaluation's own recorder without a simulator.

Every value is a known function of (step, dimension, seed) so that tests can check what the app shows against
what was recorded; camera frames carry the step in their brightness, so a frame can be told from its neighbours.
"""

from pathlib import Path

import numpy as np

from fasvla.libero.env import Observation
from fasvla.libero.episode import EpisodeJob
from fasvla.libero.policy import PolicyOutput
from fasvla.libero.recording import EpisodeRecorder

TASK = "put the bowl on the plate"
RESOLUTION = 32


def frame_value(step: int, camera: int) -> int:
    """The brightness of camera `camera`'s frame at `step` (distinct steps are >= 10 apart, modulo 250)."""
    return (10 * step + 100 * camera) % 250


def write_rollout(root: Path, job: EpisodeJob, steps: int = 12, feedback_mode: str = "anticipatory",
                  perturbation: str = "nominal", success: bool = False, seed: int = 0,
                  chunk_every: int | None = None) -> Path:
    """One episode recorded as eval_libero.py records it, under `root / job.name`; with `chunk_every` K, as an
    episode without video whose policy looked at the cameras every K steps."""
    rng = np.random.default_rng(seed)
    recorder = EpisodeRecorder(video=chunk_every is None)
    for t in range(steps):
        images = [np.full((RESOLUTION, RESOLUTION, 3), frame_value(t, c), np.uint8) for c in range(2)]
        state = rng.normal(size=8).astype(np.float32)
        output = PolicyOutput(action=rng.uniform(-1, 1, 7).astype(np.float32),
                              predicted_state=rng.normal(size=8).astype(np.float32),
                              state_input=rng.normal(size=8).astype(np.float32), latency_s=0.001 * (t + 1))
        observed = chunk_every is None or t % chunk_every == 0
        recorder.add(Observation(state, {}, images), output, output.action + 0.5, observed)
    metadata = {"suite": job.suite, "task_id": job.task_id, "trial": job.trial, "init_state_id": job.trial,
                "success": success, "steps": steps, "policy_ms_per_action": 1.0, "env_ms_per_step": 1.0,
                "feedback_mode": feedback_mode, "perturbation": perturbation, "model": "tiny"}
    return recorder.save(root / job.name, TASK, metadata)


def write_evaluation(root: Path) -> dict[str, Path]:
    """A small evaluation output: two tasks, anticipatory and open-loop episodes of task 0 trial 0 (comparable),
    one success."""
    folders = {
        "anticipatory": write_rollout(root / "anticipatory" / "rollouts", EpisodeJob("libero_object", 0, 0), 12,
                                      "anticipatory", success=True, seed=1),
        "open_loop": write_rollout(root / "open_loop" / "rollouts", EpisodeJob("libero_object", 0, 0), 15,
                                   "open_loop", seed=2),
        "other_task": write_rollout(root / "anticipatory" / "rollouts", EpisodeJob("libero_object", 3, 1), 9,
                                    "anticipatory", seed=3),
    }
    return folders
