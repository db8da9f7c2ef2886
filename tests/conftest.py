"""Shared test setup: offline Hub, the repository root importable, tiny models built once per session."""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MUJOCO_GL", "egl")  # LIBERO renders off-screen (robosuite reads it when first imported)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

from fasvla.tiny import fake_observation, tiny_model_and_processor  # noqa: E402

# Reference outputs of other implementations, copied from shared/fixtures so that a clean clone tests against them.
FIXTURES = ROOT / "tests" / "fixtures"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (full-size model, subprocesses)")


@pytest.fixture(scope="session")
def tiny_models():
    """`tiny_models(objective)` -> (model, processor), each built once; tests must not modify them."""
    cache = {}

    def get(objective: str = "stream_joint"):
        if objective not in cache:
            cache[objective] = tiny_model_and_processor(seed=0, objective=objective)
        return cache[objective]

    return get


@pytest.fixture(scope="session")
def joint(tiny_models):
    return tiny_models("stream_joint")


@pytest.fixture
def inputs_of():
    """`inputs_of(model, processor, batch_size=1, seed=0)` -> processor output for a fake observation."""

    def make(model, processor, batch_size=1, seed=0):
        return processor(**fake_observation(model.config, batch_size=batch_size, seed=seed))

    return make


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
