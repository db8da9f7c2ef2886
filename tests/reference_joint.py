"""An independent, deliberately naive reference of the joint (uncached) forward, written the way SmolVLA's training
pass runs: prefix and suffix concatenated, one attention over the whole sequence with an explicit 2-D mask in the
joint layers, eager float32 softmax, key/value heads repeated for grouped-query attention.

The model computes the same thing split in two (a cached prefix pass, then suffix passes against the cache);
comparing the two checks the cache, the positions and the masks of the product code.
"""

import torch


def _rope(x, positions, theta):
    half = x.shape[-1] // 2
    inv_timescale = theta ** (-(2.0 / x.shape[-1]) * torch.arange(half, dtype=torch.float32))
    angles = positions[..., None, None].float() * inv_timescale  # (B, L, 1, half)
    x1, x2 = x.float()[..., :half], x.float()[..., half:]
    return torch.cat([x1 * angles.cos() - x2 * angles.sin(), x2 * angles.cos() + x1 * angles.sin()], -1).to(x.dtype)


def _eager_attention(q, k, v, mask):
    """q (B, L, H, d), k/v (B, M, KV, d), mask (B, L, M) bool; masked logits filled with float32 min."""
    repeat = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(repeat, dim=2), v.repeat_interleave(repeat, dim=2)
    scores = torch.einsum("blhd,bmhd->bhlm", q.float(), k.float()) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~mask[:, None], torch.finfo(torch.float32).min)
    probs = scores.softmax(dim=-1).to(v.dtype)
    return torch.einsum("bhlm,bmhd->blhd", probs, v).flatten(2)


def _qkv(layer, h, head_dim):
    x = layer.input_layernorm(h)
    attn = layer.self_attn
    return tuple(p(x).unflatten(-1, (-1, head_dim)) for p in (attn.q_proj, attn.k_proj, attn.v_proj))


def _finish(layer, h, attention):
    h = h + layer.self_attn.o_proj(attention)
    return h + layer.mlp(layer.post_attention_layernorm(h))


def joint_mask(prefix_pad, prefix_state_index, visibility):
    """The full (B, P + S, P + S) mask written out cell by cell."""
    batch, prefix_len = prefix_pad.shape
    length = visibility.shape[0]
    total = prefix_len + length
    mask = torch.zeros(batch, total, total, dtype=torch.bool)
    for b in range(batch):
        for i in range(total):
            for j in range(total):
                if i < prefix_len and j < prefix_len:
                    # images+language see each other; the state token sees every prefix token
                    sees = j != prefix_state_index or i == prefix_state_index
                    mask[b, i, j] = bool(sees and prefix_pad[b, i] and prefix_pad[b, j])
                elif i >= prefix_len and j < prefix_len:
                    mask[b, i, j] = bool(prefix_pad[b, j])
                elif i >= prefix_len and j >= prefix_len:
                    mask[b, i, j] = bool(visibility[i - prefix_len, j - prefix_len])
        for i in range(prefix_len):  # padded tokens attend to themselves only (keeps their rows finite)
            if not prefix_pad[b, i]:
                mask[b, i, i] = True
    return mask


@torch.no_grad()
def joint_velocity(model, inputs, x_t, time, layout):
    """v(x_t, time) from one joint pass over prefix + suffix. x_t (B, S, D), time (B, S)."""
    config = model.config
    state = model.normalizer.normalize_state(inputs["state"])
    state = torch.nn.functional.pad(state, (0, config.max_state_dim - config.state_dim))
    prefix, pad, _ = model.embed_prefix(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], state)
    suffix = model.embed_suffix(x_t, time)
    prefix_len, length = prefix.shape[1], suffix.shape[1]
    mask = joint_mask(pad, prefix_len - 1, layout.visibility)
    prefix_positions = pad.long().cumsum(1) - 1
    suffix_positions = pad.sum(1, keepdim=True) + layout.position_offsets
    head_dim, theta = config.text_config.head_dim, config.rope_theta

    for i, vlm_layer in enumerate(model.vlm.text_model.layers):
        q, k, v = _qkv(vlm_layer, prefix, head_dim)
        q, k = _rope(q, prefix_positions, theta), _rope(k, prefix_positions, theta)
        expert_index = model.expert_of_vlm_layer[i]
        if expert_index is None:
            prefix = _finish(vlm_layer, prefix, _eager_attention(q, k, v, mask[:, :prefix_len, :prefix_len]))
            continue
        expert_layer = model.expert.layers[expert_index]
        is_cross = model.expert.cross_attention[expert_index]
        if not is_cross:
            qs, ks, vs = _qkv(expert_layer, suffix, head_dim)
            qs, ks = _rope(qs, suffix_positions, theta), _rope(ks, suffix_positions, theta)
            out = _eager_attention(torch.cat([q, qs], 1), torch.cat([k, ks], 1), torch.cat([v, vs], 1), mask)
            prefix_out, suffix_out = out[:, :prefix_len], out[:, prefix_len:]
        else:
            prefix_out = _eager_attention(q, k, v, mask[:, :prefix_len, :prefix_len])
            attn = expert_layer.self_attn
            qs = attn.q_proj(expert_layer.input_layernorm(suffix)).unflatten(-1, (-1, head_dim))
            rebased = suffix_positions - suffix_positions.min(dim=1, keepdim=True).values
            qs = _rope(qs, rebased, theta)
            ks = attn.k_proj(k.flatten(2)).unflatten(-1, (-1, head_dim))
            vs = attn.v_proj(v.flatten(2)).unflatten(-1, (-1, head_dim))
            suffix_out = _eager_attention(qs, ks, vs, mask[:, prefix_len:, :prefix_len])
        prefix = _finish(vlm_layer, prefix, prefix_out)
        suffix = _finish(expert_layer, suffix, suffix_out)
    return model.action_out_proj(model.expert.norm(suffix)).float()
