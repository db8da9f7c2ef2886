"""Attention masks, suffix layouts, rotary embedding and attention of modeling_fasvla.py, from tables of cases."""

import pytest
import torch

from modeling_fasvla import (
    ATTENTION_FUNCTIONS,
    apply_rope,
    chunk_suffix_layout,
    prefix_attention_mask,
    query_suffix_layout,
    rope_angles,
    suffix_attention_mask,
)

F64 = torch.float64


def randn(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def bools(rows):
    return torch.tensor(rows, dtype=torch.bool)


# Prefix: image, image, language, padded language, state.
PAD_MASK = bools([[1, 1, 1, 0, 1], [1, 1, 1, 1, 1]])
BLOCK_START = bools([[0, 0, 0, 0, 1], [0, 0, 0, 0, 1]])
EXPECTED_PREFIX_MASK = bools([
    [[1, 1, 1, 0, 0],  # images and language see each other, neither the pad nor the state token
     [1, 1, 1, 0, 0],
     [1, 1, 1, 0, 0],
     [0, 0, 0, 1, 0],  # the padded token sees only itself
     [1, 1, 1, 0, 1]],  # the state token sees every real token
    [[1, 1, 1, 1, 0],
     [1, 1, 1, 1, 0],
     [1, 1, 1, 1, 0],
     [1, 1, 1, 1, 0],
     [1, 1, 1, 1, 1]],
])


def test_prefix_mask_matches_the_hand_written_table():
    assert torch.equal(prefix_attention_mask(PAD_MASK, BLOCK_START), EXPECTED_PREFIX_MASK)


def test_prefix_mask_hides_padded_tokens_from_every_other_token():
    mask = prefix_attention_mask(PAD_MASK, BLOCK_START)
    padded = 3
    assert not mask[0, :, padded][torch.arange(5) != padded].any()
    assert mask[0, padded].tolist() == [False, False, False, True, False]


def test_prefix_mask_never_has_an_empty_row():
    pad_mask = bools([[0, 0, 0, 0, 0], [1, 0, 0, 0, 1]])
    assert prefix_attention_mask(pad_mask, BLOCK_START).any(dim=-1).all()


def test_prefix_mask_blocks_are_causal_between_and_bidirectional_within():
    # Three blocks [0, 1], [2], [3, 4]: a token sees its own block and the earlier ones.
    mask = prefix_attention_mask(torch.ones(1, 5, dtype=torch.bool), bools([[0, 0, 1, 1, 0]]))
    assert torch.equal(mask[0], bools([
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
    ]))


def test_chunk_suffix_layout_is_causal_with_consecutive_positions():
    layout = chunk_suffix_layout(4)
    assert torch.equal(layout.visibility, bools([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]))
    assert layout.position_offsets.tolist() == [0, 1, 2, 3]


def test_query_suffix_layout_isolates_queries_at_one_position():
    layout = query_suffix_layout(3)
    assert torch.equal(layout.visibility, torch.eye(3, dtype=torch.bool))
    assert layout.position_offsets.tolist() == [0, 0, 0]


@pytest.mark.parametrize("layout", [chunk_suffix_layout(3), query_suffix_layout(3)], ids=["chunk", "query"])
def test_suffix_mask_sees_the_real_prefix_then_the_suffix_by_visibility(layout):
    prefix_pad = bools([[1, 1, 0, 0], [1, 1, 1, 0]])
    mask = suffix_attention_mask(prefix_pad, layout.visibility)
    assert mask.shape == (2, 3, 7)
    for b in range(2):
        for i in range(3):
            assert torch.equal(mask[b, i, :4], prefix_pad[b])
            assert torch.equal(mask[b, i, 4:], layout.visibility[i])


def test_suffix_mask_of_a_hand_written_case():
    mask = suffix_attention_mask(bools([[1, 0]]), chunk_suffix_layout(2).visibility)
    assert torch.equal(mask, bools([[[1, 0, 1, 0], [1, 0, 1, 1]]]))


# ---------------------------------------------------------------------------------------------------------------
# rotary embedding
# ---------------------------------------------------------------------------------------------------------------


def reference_rope(x, positions, theta):
    """Rotate-half RoPE (Llama / SmolVLA) in float64: x (B, L, heads, head_dim), positions (B, L)."""
    head_dim = x.shape[-1]
    inverse_frequency = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=F64) / head_dim)
    angles = positions.to(F64)[..., None] * inverse_frequency  # (B, L, head_dim / 2)
    angles = torch.cat([angles, angles], dim=-1)[:, :, None]
    x1, x2 = x.to(F64).chunk(2, dim=-1)
    return x.to(F64) * angles.cos() + torch.cat([-x2, x1], dim=-1) * angles.sin()


def rotate(x, positions, theta=10000.0):
    cos, sin = rope_angles(positions, x.shape[-1], theta)
    return apply_rope(x, cos, sin)


def test_rope_matches_rotate_half_with_base_theta():
    x, positions = randn(2, 6, 3, 16, dtype=torch.float32), torch.tensor([[0, 1, 2, 7, 30, 99], [5, 5, 6, 8, 9, 60]])
    for theta in (10000.0, 100.0):
        torch.testing.assert_close(rotate(x, positions, theta).to(F64), reference_rope(x, positions, theta),
                                   rtol=0, atol=5e-5)


def test_rope_preserves_vector_norms():
    x = randn(2, 5, 3, 16, dtype=torch.float32)
    rotated = rotate(x, torch.tensor([[0, 3, 11, 40, 200], [1, 2, 3, 4, 5]]))
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=0)


def test_rope_at_position_zero_is_the_identity():
    x = randn(1, 4, 2, 16, dtype=torch.float32)
    assert torch.equal(rotate(x, torch.zeros(1, 4, dtype=torch.long)), x)


def test_rope_dot_product_depends_only_on_the_relative_position():
    q, k = randn(1, 1, 1, 16, seed=1, dtype=torch.float32), randn(1, 1, 1, 16, seed=2, dtype=torch.float32)

    def score(m, n):
        return (rotate(q, torch.tensor([[m]])) * rotate(k, torch.tensor([[n]]))).sum().item()

    same_offset = [score(m, m - 3) for m in (3, 10, 41, 77)]
    assert max(same_offset) - min(same_offset) < 1e-4
    assert abs(score(10, 7) - score(10, 8)) > 1e-2


# ---------------------------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------------------------


def naive_attention(q, k, v, mask):
    """softmax(q k^T / sqrt(d)) v per head, query head h reading key/value head h // (heads / kv_heads)."""
    heads, kv_heads, head_dim = q.shape[2], k.shape[2], q.shape[3]
    outputs = []
    for h in range(heads):
        kv = h // (heads // kv_heads)
        scores = q[:, :, h] @ k[:, :, kv].transpose(1, 2) / head_dim**0.5  # (B, L, M)
        weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        outputs.append(weights @ v[:, :, kv])  # (B, L, head_dim)
    return torch.cat(outputs, dim=-1)


MASK = bools([
    [[1, 1, 0, 0, 1], [1, 1, 1, 0, 1], [0, 0, 0, 1, 0]],
    [[1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0]],
])


@pytest.mark.parametrize("implementation", list(ATTENTION_FUNCTIONS))
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (6, 3), (4, 1)])
def test_attention_equals_naive_grouped_query_attention(heads, kv_heads, implementation):
    attend = ATTENTION_FUNCTIONS[implementation]
    q, k, v = randn(2, 3, heads, 8, seed=1), randn(2, 5, kv_heads, 8, seed=2), randn(2, 5, kv_heads, 8, seed=3)
    torch.testing.assert_close(attend(q, k, v, MASK), naive_attention(q, k, v, MASK), rtol=0, atol=1e-12)


@pytest.mark.parametrize("implementation", list(ATTENTION_FUNCTIONS))
def test_attention_ignores_a_masked_out_key(implementation):
    attend = ATTENTION_FUNCTIONS[implementation]
    q, k, v = randn(2, 3, 4, 8, seed=1), randn(2, 5, 2, 8, seed=2), randn(2, 5, 2, 8, seed=3)
    masked_key = 3  # hidden from every query of sample 0
    mask = MASK.clone()
    mask[0, :, masked_key] = False
    k_changed, v_changed = k.clone(), v.clone()
    k_changed[:, masked_key], v_changed[:, masked_key] = 1e6, -1e6
    before, after = attend(q, k, v, mask), attend(q, k_changed, v_changed, mask)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=1e-12)
    assert not torch.allclose(after[1], before[1])  # the same key, visible in sample 1, does matter


def test_a_query_allowed_no_key_gets_zeros_in_both_implementations():
    q, k, v = randn(2, 3, 4, 8, seed=1), randn(2, 5, 2, 8, seed=2), randn(2, 5, 2, 8, seed=3)
    mask = MASK.clone()
    mask[1, 2] = False  # a padded query: it may attend to nothing
    outputs = {name: attend(q, k, v, mask) for name, attend in ATTENTION_FUNCTIONS.items()}
    assert torch.equal(outputs["eager"][1, 2], torch.zeros(32, dtype=F64))
    torch.testing.assert_close(outputs["eager"], outputs["sdpa"], rtol=0, atol=1e-12)
