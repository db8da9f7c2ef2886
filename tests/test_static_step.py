"""The compiled streamed step on a static prefix cache (static_step_fasvla.py) against the eager step. On the CPU
torch.compile generates C++ (about 30 s for the tiny model); CUDA graphs are the same code path with
mode="reduce-overhead" on a GPU."""

import pytest
import torch

from fasvla.tiny import fake_observation, tiny_model_and_processor
from static_step_fasvla import StaticStreamStep

pytestmark = pytest.mark.slow


def _episode(model, processor, observations) -> torch.Tensor:
    """Actions and state inputs of one chunk per observation, the measured state a fixed offset from the
    prediction (so that feedback matters)."""
    streamer = model.episode_streamer("anticipatory", n_action_steps=model.config.n_action_steps)
    rows = []
    for observation in observations:
        stream = streamer.start_chunk(**processor(**observation))
        step = next(stream)
        rows.append(torch.cat([step.action, step.state_input], -1))
        for step in iter(lambda: _send(stream, step), None):
            rows.append(torch.cat([step.action, step.state_input], -1))
    return torch.stack(rows)


def _send(stream, step):
    try:
        return stream.send(step.predicted_state + 0.05)
    except StopIteration:
        return None


def test_the_static_step_streams_what_the_eager_step_streams():
    model, processor = tiny_model_and_processor(seed=3)
    observations = [fake_observation(model.config, batch_size=1, seed=seed) for seed in (0, 1)]
    eager = _episode(model, processor, observations)
    model.use_static_step(batch=1)
    static = _episode(model, processor, observations)
    step = model._static_step
    assert step.loaded is not None  # the second chunk's prefix was copied into the buffers of the first
    torch.testing.assert_close(static, eager, atol=1e-5, rtol=1e-5)
    assert not torch.equal(eager[0], eager[model.config.n_action_steps])  # the two chunks differ: the copy mattered

    # another batch size falls back to the eager step; None turns the static step off
    batch_two = [fake_observation(model.config, batch_size=2, seed=0)]
    loaded = step.loaded
    _episode(model, processor, batch_two)
    assert step.loaded is loaded
    model.use_static_step(None)
    torch.testing.assert_close(_episode(model, processor, observations), eager, atol=0, rtol=0)


def test_bad_static_step_use_is_refused():
    model, _ = tiny_model_and_processor(seed=0)
    with pytest.raises(ValueError, match="batch must be an integer >= 1, got 0"):
        StaticStreamStep(model, 0)
    step = StaticStreamStep(model, 1)
    with pytest.raises(ValueError, match="load_prefix"):
        step(torch.zeros(1, 1, model.config.max_action_dim), torch.zeros(1, 1))
