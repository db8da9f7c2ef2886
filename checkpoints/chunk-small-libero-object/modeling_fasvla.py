"""FAS-VLA: a Feedback-Aware Streaming VLA on the SmolVLA architecture.

What differs from SmolVLA (LeRobot v0.3.2): the architecture and parameter names are SmolVLA's, so its checkpoints
convert, but the action head is trained as a *stream*. Instead of denoising a chunk of H actions at once, the expert
reads one point `x = [A ; S]` of the joint trajectory of accumulated action A and robot state S at execution time
`tau` and returns its velocity; one Euler step of size 1 / H yields the next action and the predicted next state.
The robot's measured state is fed back into S while the chunk executes (see `streaming_fasvla.py`). The SmolVLA
chunk objective is kept as `objective="chunk"`.

                      prefix (once per chunk, cached)                 suffix (every streamed action)
    images ─ SigLIP ─ connector ─┐
    task ─ token embeddings ─────┼─ VLM layers 0..L-1 ─ K/V ─────►  expert layers 0..L-1 ─ action_out_proj ─ v
    state ─ state_proj · tanh(g) ┘     (layer by layer)             ▲
                                               x = [A ; S], tau ─ action_in_proj ⊕ sincos(tau) ─ MLP

Layer i of the expert attends to layer i of the VLM: jointly over prefix and suffix when
`i % self_attn_every_n_layers == 0`, by cross attention to the (re-projected) prefix keys/values otherwise.

Shape letters: B batch, N cameras, P prefix tokens, S suffix tokens (H chunk actions or Q flow-time queries),
D trajectory width (`max_action_dim`), E expert hidden size, heads x head_dim the attention width.
Time: chunk flow time t = 1 is noise and t = 0 is data; streaming time tau in [0, 1) is execution time
(`flow_fasvla.py` states both).
"""

import copy
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, SmolVLMModel
from transformers import initialization as init
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm
from transformers.utils import ModelOutput

try:
    from .configuration_fasvla import FasVLAConfig
    from .flow_fasvla import (
        chunk_flow_path,
        euler_denoise,
        masked_mean,
        masked_query_mean,
        sample_chunk_time,
        sample_stream_time,
        sinusoidal_time_embedding,
        feedback_stabilize,
        stream_reference,
        trajectory_knots,
        trajectory_start,
        transition_mask,
    )
    from .normalization_fasvla import Normalizer
    from .static_step_fasvla import StaticStreamStep
    from .streaming_fasvla import ActionStream, EpisodeStreamer, as_batch, stream_options
except ImportError:
    from configuration_fasvla import FasVLAConfig
    from flow_fasvla import (
        chunk_flow_path,
        euler_denoise,
        masked_mean,
        masked_query_mean,
        sample_chunk_time,
        sample_stream_time,
        sinusoidal_time_embedding,
        feedback_stabilize,
        stream_reference,
        trajectory_knots,
        trajectory_start,
        transition_mask,
    )
    from normalization_fasvla import Normalizer
    from static_step_fasvla import StaticStreamStep
    from streaming_fasvla import ActionStream, EpisodeStreamer, as_batch, stream_options


# ---------------------------------------------------------------------------------------------------------------
# masks, positions and attention (pure functions)
# ---------------------------------------------------------------------------------------------------------------


def prefix_attention_mask(pad_mask: torch.Tensor, block_start: torch.Tensor) -> torch.Tensor:
    """2-D attention mask of the prefix from its pad mask and block starts (the `make_attn_mask` rule of pi0).

    Token i sees token j iff both are real and `block[j] <= block[i]`, with `block = cumsum(block_start)`. Padded
    tokens see only themselves, so no attention row is empty (no NaN from a softmax over nothing, in any dtype).
    Example, image and language tokens then the state token, `block_start = [0, 0, 0, 1]`:

        [[1, 1, 1, 0],      images and language attend bidirectionally among themselves,
         [1, 1, 1, 0],
         [1, 1, 1, 0],
         [1, 1, 1, 1]]      the state token sees everything before it and itself.

    pad_mask, block_start: (B, P) bool. Returns (B, P, P) bool.
    """
    block = block_start.long().cumsum(dim=1)
    visible = block[:, None, :] <= block[:, :, None]
    visible = visible & pad_mask[:, None, :] & pad_mask[:, :, None]
    return visible | torch.eye(pad_mask.shape[1], dtype=torch.bool, device=pad_mask.device)


class SuffixLayout(NamedTuple):
    """How suffix tokens see each other (S, S) bool and their position offsets after the prefix (S,) long."""

    visibility: torch.Tensor
    position_offsets: torch.Tensor


def chunk_suffix_layout(length: int, device=None) -> SuffixLayout:
    """SmolVLA's action chunk: causal among the H action tokens, consecutive positions."""
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return SuffixLayout(causal, torch.arange(length, device=device))


def query_suffix_layout(length: int, device=None) -> SuffixLayout:
    """Independent flow-time queries: each sees the prefix and itself only, all at the same position, so Q queries
    in one pass compute exactly what Q single-query passes would."""
    return SuffixLayout(torch.eye(length, dtype=torch.bool, device=device), torch.zeros(length, dtype=torch.long,
                                                                                       device=device))


def suffix_attention_mask(prefix_pad_mask: torch.Tensor, visibility: torch.Tensor) -> torch.Tensor:
    """Rows of the joint mask for the suffix: every real prefix token, then the suffix by `visibility`.

    prefix_pad_mask: (B, P); visibility: (S, S). Returns (B, S, P + S). Prefix rows never see the suffix, which is
    why the prefix can be computed once and cached.
    """
    batch, prefix_len = prefix_pad_mask.shape
    length = visibility.shape[0]
    return torch.cat(
        [prefix_pad_mask[:, None, :].expand(batch, length, prefix_len), visibility[None].expand(batch, -1, -1)], dim=-1
    )


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles `position / theta^(2i / head_dim)`, float32, (B, L, 1, head_dim / 2).

    Written as SmolVLA writes it (a division by the timescale, in float32) so that angles match it bit for bit.
    """
    exponents = (2.0 / head_dim) * torch.arange(head_dim // 2, dtype=torch.float32, device=positions.device)
    timescale = theta**exponents
    radians = positions[..., None].to(torch.float32) / timescale  # (B, L, head_dim / 2)
    radians = radians[:, :, None, :]
    return torch.cos(radians), torch.sin(radians)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the last dim of x (B, L, heads, head_dim) by the angles; computed in float32."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked multi-head attention with grouped key/value heads, scale head_dim^-0.5, by PyTorch's SDPA.

    q: (B, L, heads, head_dim); k, v: (B, M, kv_heads, head_dim); mask: (B, L, M) bool. Returns (B, L, heads *
    head_dim). Query head h uses key/value head h // (heads / kv_heads), as in SmolVLA. A query allowed no key
    gets zeros.
    """
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask[:, None],
        enable_gqa=q.shape[2] != k.shape[2],
    )
    return out.transpose(1, 2).flatten(2)


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`sdpa_attention` written out: softmax(q k^T / sqrt(head_dim)) in float32 over the allowed keys, times v."""
    groups = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)  # (B, M, heads, head_dim)
    upcast = torch.promote_types(q.dtype, torch.float32)  # softmax in float32 at least
    scores = torch.einsum("blhd,bmhd->bhlm", q.to(upcast), k.to(upcast)) * q.shape[-1] ** -0.5  # (B, heads, L, M)
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a query allowed no key: zeros, as SDPA gives
    return torch.einsum("bhlm,bmhd->blhd", weights.to(v.dtype), v).flatten(2)


ATTENTION_FUNCTIONS = {"sdpa": sdpa_attention, "eager": eager_attention}  # config._attn_implementation ->


def attention_function(config):
    """The joint attention of `config._attn_implementation` (transformers' `attn_implementation`)."""
    name = config._attn_implementation or "sdpa"
    if name not in ATTENTION_FUNCTIONS:
        raise ValueError(f"attn_implementation must be one of {tuple(ATTENTION_FUNCTIONS)}, got {name!r}")
    return ATTENTION_FUNCTIONS[name]


def _heads(projection: nn.Linear, x: torch.Tensor, head_dim: int) -> torch.Tensor:
    return projection(x).unflatten(-1, (-1, head_dim))  # (B, L, heads, head_dim)


def _feed_forward(layer: nn.Module, h: torch.Tensor, attention_out: torch.Tensor) -> torch.Tensor:
    """Output projection, residual, post-attention norm, MLP and residual of a Llama layer."""
    h = h + layer.self_attn.o_proj(attention_out)
    return h + layer.mlp(layer.post_attention_layernorm(h))


# ---------------------------------------------------------------------------------------------------------------
# modules
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PrefixCache:
    """Keys/values of the prefix for every expert layer, computed once per observation and never grown.

    For cross-attention layers the keys/values are already projected by the expert's own k/v projections, so the
    per-action expert step does no work on the prefix at all.
    keys, values: one (B, P, kv_heads, head_dim) per expert layer; pad_mask: (B, P); num_valid: (B,) real prefix
    tokens, the position of the first suffix token. `suffix_context` memoises, per suffix length, what depends only
    on the prefix (masks, rotary angles), so the streamed steps of a chunk compute it once.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    pad_mask: torch.Tensor
    num_valid: torch.Tensor
    suffix_context: dict = field(default_factory=dict)


class ActionExpert(nn.Module):
    """A Llama-style decoder without token embedding: SmolVLA's action expert.

    Cross-attention layers read the VLM's keys/values through their own `k_proj`/`v_proj`, whose input width is the
    VLM's key/value width rather than the expert's hidden size.
    """

    def __init__(self, config: FasVLAConfig, cross_attention_layers: list[bool]):
        super().__init__()
        self.config = config  # its attention implementation is read at every call (it may be switched)
        expert_config = copy.deepcopy(config.text_config)
        expert_config.hidden_size = config.expert_hidden_size
        expert_config.intermediate_size = config.expert_intermediate_size
        expert_config.num_hidden_layers = len(cross_attention_layers)
        self.layers = nn.ModuleList(LlamaDecoderLayer(expert_config, i) for i in range(len(cross_attention_layers)))
        self.norm = LlamaRMSNorm(expert_config.hidden_size, eps=expert_config.rms_norm_eps)
        self.cross_attention = list(cross_attention_layers)

        text = config.text_config
        kv_width = text.num_key_value_heads * text.head_dim
        for layer, is_cross in zip(self.layers, self.cross_attention):
            if is_cross:
                layer.self_attn.k_proj = nn.Linear(kv_width, kv_width, bias=text.attention_bias)
                layer.self_attn.v_proj = nn.Linear(kv_width, kv_width, bias=text.attention_bias)

    def project_prefix(self, index: int, keys: torch.Tensor, values: torch.Tensor):
        """What expert layer `index` attends to in the prefix: the VLM keys (after RoPE) and values themselves for a
        joint layer, their re-projection for a cross-attention layer. (B, P, kv_heads, head_dim) each."""
        if not self.cross_attention[index]:
            return keys, values
        attn = self.layers[index].self_attn
        return _heads(attn.k_proj, keys.flatten(2), attn.head_dim), _heads(attn.v_proj, values.flatten(2), attn.head_dim)

    def layer_forward(self, index: int, h: torch.Tensor, prefix_k, prefix_v, masks, rope) -> torch.Tensor:
        """One expert layer on suffix tokens h (B, S, E) against the cached prefix of that layer.

        masks / rope: (self, cross) pairs of the suffix mask and of the (cos, sin) of the suffix positions. In cross
        layers the suffix positions are re-based to start at 0 and the projected prefix keys carry no new rotation.
        """
        layer = self.layers[index]
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        is_cross = self.cross_attention[index]
        cos, sin = rope[is_cross]
        q = apply_rope(_heads(attn.q_proj, x, attn.head_dim), cos, sin)
        if is_cross:
            k, v = prefix_k, prefix_v
        else:
            k = torch.cat([prefix_k, apply_rope(_heads(attn.k_proj, x, attn.head_dim), cos, sin)], dim=1)
            v = torch.cat([prefix_v, _heads(attn.v_proj, x, attn.head_dim)], dim=1)
        return _feed_forward(layer, h, attention_function(self.config)(q, k, v, masks[is_cross]))


@dataclass
class FasVLAOutput(ModelOutput):
    """Training output. `losses` are the unreduced squared errors `(u_t - v_t)^2` over the padded trajectory width:
    (B, H, D) for the chunk objective, (B, Q, D) for the streaming ones."""

    loss: torch.Tensor | None = None
    action_loss: torch.Tensor | None = None
    state_loss: torch.Tensor | None = None
    losses: torch.Tensor | None = None
    v_t: torch.Tensor | None = None
    u_t: torch.Tensor | None = None


class FasVLAPreTrainedModel(PreTrainedModel):
    config: FasVLAConfig
    config_class = FasVLAConfig
    base_model_prefix = "fasvla"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    _no_split_modules = ["LlamaDecoderLayer", "SmolVLMEncoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, FasVLAForActionPrediction) and module.state_gate is not None:
            init.zeros_(module.state_gate)


class FasVLAForActionPrediction(FasVLAPreTrainedModel):
    """SmolVLM2 backbone + action expert + flow-matching head, trained with the objective of `config.objective`.

    Public API (all inputs in robot units, as returned by `FasVLAProcessor`):
    - `forward(...)`: training loss of the configured objective;
    - `predict_action_chunk(...)`: (B, H, d_a) actions of the chunk objective;
    - `stream_actions(...)`: a generator of actions for one chunk with state feedback (streaming objectives);
    - `episode_streamer(...)`: chunk after chunk over an episode, carrying the cumulative action.
    """

    def __init__(self, config: FasVLAConfig):
        super().__init__(config)
        vlm_config = copy.deepcopy(config.vlm_config)
        vlm_config.text_config.num_hidden_layers = config.num_vlm_layers  # only the first layers are kept
        self.vlm = SmolVLMModel._from_config(vlm_config)

        stride = config.expert_layer_stride
        self.expert_of_vlm_layer = [i // stride if i % stride == 0 else None for i in range(config.num_vlm_layers)]
        self._last_attended_vlm_layer = max(i for i, e in enumerate(self.expert_of_vlm_layer) if e is not None)
        cross = [config.attention_mode == "cross_attn" and (i * stride) % config.self_attn_every_n_layers != 0
                 for i in range(config.num_vlm_layers // stride)]
        self.expert = ActionExpert(config, cross)

        text_hidden, expert_hidden = config.text_config.hidden_size, config.expert_hidden_size
        self.state_proj = nn.Linear(config.max_state_dim, text_hidden)
        self.action_in_proj = nn.Linear(config.max_action_dim, expert_hidden)
        self.action_out_proj = nn.Linear(expert_hidden, config.max_action_dim)
        self.action_time_mlp_in = nn.Linear(2 * expert_hidden, expert_hidden)
        self.action_time_mlp_out = nn.Linear(expert_hidden, expert_hidden)
        # tanh(g) gates the prefix state token of the streaming objectives; g = 0 at the start, so the state first
        # enters through the suffix trajectory (as in the reference release). SmolVLA has no gate.
        gated = config.objective != "chunk" and getattr(config, "prefix_state_gate", True)
        self.state_gate = nn.Parameter(torch.zeros(1)) if gated else None

        self.normalizer = Normalizer(config)
        self._suffix_layout = chunk_suffix_layout if config.objective == "chunk" else query_suffix_layout
        self._static_step = None  # see use_static_step
        self.post_init()

    # -- prefix ---------------------------------------------------------------------------------------------------

    def embed_prefix(self, pixel_values, input_ids, attention_mask, state, image_masks=None):
        """Prefix embeddings `[image tokens per camera] + [task tokens] + [state token]`.

        pixel_values: (B, N, 3, S, S) in [-1, 1]; input_ids, attention_mask: (B, L); state: (B, max_state_dim)
        normalised and padded; image_masks: (B, N) bool or None. Returns embeddings (B, P, hidden), pad mask and
        block starts (B, P).
        """
        batch, cameras = pixel_values.shape[:2]
        dtype = self.state_proj.weight.dtype
        text_hidden = self.config.text_config.hidden_size
        vision = self.vlm.vision_model(pixel_values=pixel_values.flatten(0, 1).to(dtype)).last_hidden_state
        image_tokens = self.vlm.connector(vision)  # (B * N, T, hidden)
        image_tokens = image_tokens * torch.tensor(text_hidden**0.5, dtype=image_tokens.dtype)
        image_tokens = image_tokens.unflatten(0, (batch, cameras)).flatten(1, 2)  # (B, N * T, hidden)
        language = self.vlm.text_model.embed_tokens(input_ids) * math.sqrt(text_hidden)
        state_token = self.state_proj(state.to(dtype))[:, None]
        if self.state_gate is not None:
            state_token = state_token * torch.tanh(self.state_gate).to(dtype)

        if image_masks is None:
            image_masks = torch.ones(batch, cameras, dtype=torch.bool, device=pixel_values.device)
        tokens_per_camera = image_tokens.shape[1] // cameras
        pad_mask = torch.cat([
            image_masks.repeat_interleave(tokens_per_camera, dim=1),
            attention_mask.bool(),
            torch.ones(batch, 1, dtype=torch.bool, device=input_ids.device),
        ], dim=1)
        block_start = torch.zeros_like(pad_mask)
        block_start[:, -1] = True  # the state token opens its own block
        return torch.cat([image_tokens, language, state_token], dim=1), pad_mask, block_start

    def encode_prefix(self, pixel_values, input_ids, attention_mask, state, image_masks=None) -> PrefixCache:
        """Run the prefix through the kept VLM layers and cache what each expert layer will attend to.

        `state` is in robot units, (B, state_dim).
        """
        state = F.pad(self.normalizer.normalize_state(state), (0, self.config.max_state_dim - self.config.state_dim))
        h, pad_mask, block_start = self.embed_prefix(pixel_values, input_ids, attention_mask, state, image_masks)
        mask = prefix_attention_mask(pad_mask, block_start)
        positions = pad_mask.long().cumsum(dim=1) - 1  # padding repeats the previous position
        cos, sin = rope_angles(positions, self.config.text_config.head_dim, self.config.rope_theta)
        keys, values, attend = [], [], attention_function(self.config)
        for index in range(self._last_attended_vlm_layer + 1):
            layer, expert_index = self.vlm.text_model.layers[index], self.expert_of_vlm_layer[index]
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            k = apply_rope(_heads(attn.k_proj, x, attn.head_dim), cos, sin)
            v = _heads(attn.v_proj, x, attn.head_dim)
            if index < self._last_attended_vlm_layer:  # past the last attended layer the prefix output is unused
                q = apply_rope(_heads(attn.q_proj, x, attn.head_dim), cos, sin)
                h = _feed_forward(layer, h, attend(q, k, v, mask))
            if expert_index is not None:
                k, v = self.expert.project_prefix(expert_index, k, v)
                keys.append(k)
                values.append(v)
        return PrefixCache(keys, values, pad_mask, pad_mask.sum(dim=1))

    def set_norm_stats(self, norm_stats: dict | None, normalization: str | None = None) -> None:
        """Normalise with new statistics in robot units (e.g. those of a fine-tuning dataset); `normalization`
        defaults to the objective's ("mean_std" for chunk, "scale" for the streaming objectives)."""
        default = "mean_std" if self.config.objective == "chunk" else "scale"
        previous = (self.config.norm_stats, self.config.normalization)
        self.config.norm_stats, self.config.normalization = norm_stats, normalization or default
        try:
            self.config._validate()
        except ValueError:
            self.config.norm_stats, self.config.normalization = previous
            raise
        self.normalizer = Normalizer(self.config)

    def set_feedback_matrix(self, G, feedback_kappa: float | None = None) -> None:
        """G (action_dim x state_dim, normalised units; fasvla/state_response.py) for feedback-consistent
        stabilisation, and optionally its rate kappa_fb."""
        previous = (self.config.feedback_matrix, self.config.feedback_kappa)
        self.config.feedback_matrix = None if G is None else [[float(v) for v in row] for row in G]
        if feedback_kappa is not None:
            self.config.feedback_kappa = feedback_kappa
        try:
            self.config._validate()
        except ValueError:
            self.config.feedback_matrix, self.config.feedback_kappa = previous
            raise

    def feedback_matrix(self, device) -> torch.Tensor | None:
        """G as a (d_a, d_s) float32 tensor, None without one."""
        matrix = self.config.feedback_matrix
        return None if matrix is None else torch.tensor(matrix, dtype=torch.float32, device=device)

    def tracking_matrix(self, device) -> torch.Tensor | None:
        """kappa_t G (d_a, d_s) of tracking (`config.tracking_kappa`): 0 on the absolute action dimensions (a level
        undoes no displacement) and on the state dimensions not in `tracking_state_dims`; None without tracking."""
        config = self.config
        if not (config.uses_state_trajectory and config.tracking_kappa > 0):
            return None
        tracked = torch.ones(config.state_dim, dtype=torch.bool, device=device)
        if config.tracking_state_dims is not None:
            tracked = torch.zeros_like(tracked)
            tracked[list(config.tracking_state_dims)] = True
        mask = ~self.absolute_action_mask(device)[:, None] & tracked[None, :]
        return config.tracking_kappa * self.feedback_matrix(device) * mask

    def absolute_action_mask(self, device) -> torch.Tensor:
        """(d_a,) bool: True for the action dimensions that are levels (`config.absolute_action_dims`)."""
        mask = torch.zeros(self.config.action_dim, dtype=torch.bool, device=device)
        mask[list(self.config.absolute_action_dims)] = True
        return mask

    def unused_parameter_names(self) -> set[str]:
        """Parameters kept so that SmolVLA checkpoints round-trip but never used to compute actions: the VLM's final
        norm, and of the last VLM layer an expert attends to, everything but the key/value path. Training freezes
        them (DDP requires every trainable parameter to receive a gradient)."""
        last = self._last_attended_vlm_layer
        prefixes = ["vlm.text_model.norm."]
        prefixes += [f"vlm.text_model.layers.{last}.{part}."
                     for part in ("self_attn.q_proj", "self_attn.o_proj", "mlp", "post_attention_layernorm")]
        prefixes += [f"vlm.text_model.layers.{i}." for i in range(last + 1, self.config.num_vlm_layers)]
        return {name for name, _ in self.named_parameters() if name.startswith(tuple(prefixes))}

    # -- suffix ---------------------------------------------------------------------------------------------------

    def embed_suffix(self, x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """`mlp([action_in_proj(x_t) ; sincos(time)])`: x_t (B, S, D), time (B, S) -> (B, S, E)."""
        dtype = self.action_in_proj.weight.dtype
        action_emb = self.action_in_proj(x_t.to(dtype))
        time_emb = sinusoidal_time_embedding(
            time, action_emb.shape[-1], self.config.min_period, self.config.max_period
        ).to(dtype)
        return self.action_time_mlp_out(F.silu(self.action_time_mlp_in(torch.cat([action_emb, time_emb], dim=-1))))

    def velocity(self, cache: PrefixCache, x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """The expert's velocity `v(x_t, time)` given the cached prefix: x_t (B, S, D), time (B, S) -> (B, S, D).

        S tokens follow the objective's suffix layout (a causal chunk, or independent queries). Returned in float32
        (float64 for a float64 model): the one place where the flow state leaves the model dtype.
        """
        masks, rope = self.suffix_context(cache, x_t.shape[1])
        return self.expert_velocity(cache.keys, cache.values, masks, rope, x_t, time)

    def use_static_step(self, batch: int | None = 1, mode: str | None = None) -> None:
        """Run the one-token streamed steps of batch `batch` through a compiled step on a static prefix cache
        (static_step_fasvla.py; CUDA graphs on a GPU). `batch=None` goes back to the eager step."""
        self._static_step = None if batch is None else StaticStreamStep(self, batch, mode)

    def stream_velocity(self, cache: PrefixCache, x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """`velocity` of one streamed token (B, 1, D), through the static step when one is in use for batch B."""
        step = self._static_step
        if step is None or x_t.shape[0] != step.batch:
            return self.velocity(cache, x_t, time)
        if step.loaded is not cache:
            step.load_prefix(cache)
        return step(x_t, time)

    def expert_velocity(self, keys, values, masks, rope, x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """`velocity` from the prefix's keys/values and the suffix context: tensors only, so that a static copy of
        them can be compiled and replayed as one graph (static_step_fasvla.py)."""
        h = self.embed_suffix(x_t, time)
        for index, (k, v) in enumerate(zip(keys, values)):
            h = self.expert.layer_forward(index, h, k, v, masks, rope)
        v_t = self.action_out_proj(self.expert.norm(h))
        return v_t.to(torch.promote_types(v_t.dtype, torch.float32))

    def suffix_context(self, cache: PrefixCache, length: int):
        """(masks, rope) of `length` suffix tokens against this prefix, memoised in the cache."""
        if length not in cache.suffix_context:
            cache.suffix_context[length] = self._suffix_context(cache, length)
        return cache.suffix_context[length]

    def _suffix_context(self, cache: PrefixCache, length: int):
        """The (self, cross) attention masks and rotary angles of `length` suffix tokens against this prefix."""
        layout = self._suffix_layout(length, cache.pad_mask.device)
        batch = cache.pad_mask.shape[0]
        masks = (suffix_attention_mask(cache.pad_mask, layout.visibility),
                 cache.pad_mask[:, None, :].expand(batch, length, -1))
        head_dim, theta = self.config.text_config.head_dim, self.config.rope_theta
        self_positions = cache.num_valid[:, None] + layout.position_offsets
        cross_positions = layout.position_offsets.expand(batch, -1)  # re-based to start at 0
        return masks, (rope_angles(self_positions, head_dim, theta), rope_angles(cross_positions, head_dim, theta))

    # -- training -------------------------------------------------------------------------------------------------

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        state: torch.Tensor,
        actions: torch.Tensor,
        action_is_pad: torch.Tensor | None = None,
        future_states: torch.Tensor | None = None,
        future_state_is_pad: torch.Tensor | None = None,
        cumulative_action: torch.Tensor | None = None,
        previous_action: torch.Tensor | None = None,
        trajectory_state: torch.Tensor | None = None,
        image_masks: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
    ) -> FasVLAOutput:
        """Training loss of the configured objective, all inputs in robot units.

        Args:
            pixel_values: (B, N, 3, S, S) in [-1, 1]; input_ids, attention_mask: (B, L); state: (B, d_s), s_t.
            actions: (B, H, d_a), a_t..a_{t+H-1}; action_is_pad: (B, H) True past the episode end.
            future_states: (B, H, d_s), s_{t+1}..s_{t+H} (`stream_joint` only); future_state_is_pad: (B, H).
            cumulative_action: (B, d_a), C_t = the sum of the episode's actions before t (streaming objectives:
                required, since the trajectory starts there; zeros at an episode's first frame).
            previous_action: (B, d_a), a_{t-1} (zeros at an episode's first frame): required when
                `config.absolute_action_dims` is set, whose trajectory starts at the command in force.
            trajectory_state: (B, d_s), the state the trajectory starts from when it is not the prefix's `state`
                (training under observation delay: the prefix shows frame t - d, the trajectory starts at t).
            noise, time: fixed draws instead of random ones. Chunk: noise (B, H, D), time (B,). Streaming: noise
                (B, Q, D) = eps, time (B, Q) = tau.
        """
        self._check_observation(pixel_values, input_ids, attention_mask, state, image_masks)
        self._check_training_targets(state, actions, action_is_pad, future_states, future_state_is_pad,
                                     cumulative_action, previous_action)
        self._check_draws(state.shape[0], noise, time)
        if trajectory_state is not None:
            _check_shape("trajectory_state", trajectory_state, tuple(state.shape))
        cache = self.encode_prefix(pixel_values, input_ids, attention_mask, state, image_masks)
        objective_loss = self._chunk_loss if self.config.objective == "chunk" else self._stream_loss
        return objective_loss(
            cache, state=state if trajectory_state is None else trajectory_state, actions=actions,
            action_is_pad=action_is_pad, future_states=future_states, future_state_is_pad=future_state_is_pad,
            cumulative_action=cumulative_action, previous_action=previous_action, noise=noise, time=time,
        )

    def _chunk_loss(self, cache, *, actions, action_is_pad, noise, time, **unused) -> FasVLAOutput:
        """SmolVLA: `x_t = t * noise + (1 - t) * actions`, target `u_t = noise - actions`, over the whole chunk."""
        batch, chunk = actions.shape[:2]
        actions = self._pad_trajectory(self.normalizer.normalize_action(actions))  # (B, H, D)
        noise = torch.randn_like(actions) if noise is None else noise.to(actions)
        time = sample_chunk_time(batch, actions.device) if time is None else time.to(actions)
        x_t, u_t = chunk_flow_path(actions, noise, time[:, None, None])
        v_t = self.velocity(cache, x_t, time[:, None].expand(batch, chunk))
        losses = (u_t - v_t) ** 2
        valid = _not_pad(action_is_pad, (batch, chunk), actions.device)
        action_loss = masked_mean(losses, valid, slice(0, self.config.action_dim))
        return FasVLAOutput(loss=action_loss, action_loss=action_loss, state_loss=torch.zeros_like(action_loss),
                            losses=losses, v_t=v_t, u_t=u_t)

    def _stream_loss(self, cache, *, state, actions, action_is_pad, future_states, future_state_is_pad,
                     cumulative_action, previous_action, noise, time) -> FasVLAOutput:
        """Streaming flow along the knots `X_k = [A_k ; S_k]` (DESIGN.md sections 3, 3b), Q queries per prefix."""
        config = self.config
        batch = actions.shape[0]
        actions = self.normalizer.normalize_action(actions)  # (B, H, d_a)
        absolute = self.absolute_action_mask(actions.device)
        previous = torch.zeros_like(actions[:, 0]) if previous_action is None else \
            self.normalizer.normalize_action(previous_action)
        start = trajectory_start(self.normalizer.normalize_action(cumulative_action), previous, absolute,
                                 config.trajectory_origin)
        states = None
        if config.uses_state_trajectory:
            states = self.normalizer.normalize_state(torch.cat([state[:, None], future_states], dim=1))
        knots = trajectory_knots(start, actions, states, config.max_action_dim, absolute)  # (B, H + 1, D)

        if time is None:
            time = sample_stream_time(batch, config.num_flow_queries, config.chunk_size, actions.device)
        tau = time.to(knots)
        xi, dxi, segment = stream_reference(knots, tau)
        eps = torch.randn_like(xi) if noise is None else noise.to(xi)
        x, u = feedback_stabilize(xi, dxi, tau, eps, config.sigma0, config.kappa, config.kappa_a,
                                  config.feedback_kappa, self.feedback_matrix(xi.device), config.action_dim,
                                  config.state_dim)
        v = self.velocity(cache, x, tau)
        losses = (u - v) ** 2  # (B, Q, D)

        next_state_is_pad = future_state_is_pad if config.uses_state_trajectory else None
        valid = transition_mask(segment, action_is_pad, next_state_is_pad)
        d_a, d_s = config.action_dim, config.state_dim
        action_loss = masked_query_mean(losses, valid, slice(0, d_a))
        state_loss = masked_query_mean(losses, valid, slice(d_a, d_a + d_s)) if states is not None \
            else torch.zeros_like(action_loss)
        loss = config.action_loss_weight * action_loss + config.state_loss_weight * state_loss
        return FasVLAOutput(loss=loss, action_loss=action_loss, state_loss=state_loss, losses=losses, v_t=v, u_t=u)

    # -- inference ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_actions(self, cache: PrefixCache, noise: torch.Tensor) -> torch.Tensor:
        """Chunk objective: `num_steps` Euler steps from x_1 = noise (B, H, D) at t = 1 to normalised, padded
        actions (B, H, D) at t = 0."""
        batch, chunk = noise.shape[:2]
        return euler_denoise(lambda x_t, t: self.velocity(cache, x_t, t.expand(batch, chunk)), noise,
                             self.config.num_steps)

    @torch.no_grad()
    def predict_action_chunk(self, pixel_values, input_ids, attention_mask, state, noise=None,
                             image_masks=None) -> torch.Tensor:
        """Chunk objective: the next H actions (B, H, d_a) in robot units.

        noise: (B, H, max_action_dim), the starting point x_1 of the integration (random if None).
        """
        if self.config.objective != "chunk":
            raise ValueError(f"predict_action_chunk needs objective='chunk', this model has objective="
                             f"'{self.config.objective}': use stream_actions.")
        self._check_observation(pixel_values, input_ids, attention_mask, state, image_masks, check_finite=True)
        shape = (state.shape[0], self.config.chunk_size, self.config.max_action_dim)
        if noise is None:
            noise = torch.randn(shape, device=state.device)
        _check_shape("noise", noise, shape)
        cache = self.encode_prefix(pixel_values, input_ids, attention_mask, state, image_masks)
        x_0 = self.sample_actions(cache, noise.to(state.device, torch.float32))
        return self.normalizer.unnormalize_action(x_0[..., : self.config.action_dim])

    def stream_actions(self, pixel_values, input_ids, attention_mask, state, feedback_mode=None, feedback_gain=None,
                       cumulative_action=None, n_action_steps=None, image_masks=None,
                       previous_action=None) -> ActionStream:
        """Stream the actions of one chunk with state feedback (DESIGN.md section 5).

        Returns a generator: `next(stream)` gives step 0, `stream.send(measured_state)` (robot units, (B, d_s), the
        state measured after executing the last action, or None) gives the next step; it stops after
        `n_action_steps` steps. Each step is a `StreamStep` with `action` (B, d_a), `predicted_state` and
        `state_input` (B, d_s) in robot units, and its `index`. The prefix is computed once, here.

        Args:
            feedback_mode: "open_loop", "synchronous" or "anticipatory" (default: the config's).
            feedback_gain: beta of the anticipatory residual (default: the config's).
            cumulative_action: (B, d_a) robot units, the sum of the actions executed so far in the episode
                (default 0: the episode's first chunk).
            n_action_steps: steps of this chunk, in [1, chunk_size] (default: the config's).
            previous_action: (B, d_a) robot units, the last action executed (default 0), where the absolute action
                dimensions start.
        """
        options = stream_options(self.config, feedback_mode, feedback_gain, n_action_steps)
        self._check_streaming_observation(pixel_values, input_ids, attention_mask, state, image_masks)
        batch, width = state.shape[0], self.config.action_dim
        if cumulative_action is not None:
            cumulative_action = as_batch("cumulative_action", cumulative_action, batch, width, state.device)
        if previous_action is not None:
            previous_action = as_batch("previous_action", previous_action, batch, width, state.device)
        with torch.no_grad():
            cache = self.encode_prefix(pixel_values, input_ids, attention_mask, state, image_masks)
        return ActionStream(self, cache, state, cumulative_action, options, previous_action)

    def encode_observation(self, pixel_values, input_ids, attention_mask, state, image_masks=None) -> PrefixCache:
        """The prefix cache of a streaming observation, its inputs checked first."""
        self._check_streaming_observation(pixel_values, input_ids, attention_mask, state, image_masks)
        with torch.no_grad():
            return self.encode_prefix(pixel_values, input_ids, attention_mask, state, image_masks)

    def _check_streaming_observation(self, pixel_values, input_ids, attention_mask, state, image_masks) -> None:
        if self.config.objective == "chunk":
            raise ValueError("streaming needs a streaming objective ('stream' or 'stream_joint'); this model has "
                             "objective='chunk': use predict_action_chunk.")
        self._check_observation(pixel_values, input_ids, attention_mask, state, image_masks, check_finite=True)

    def episode_streamer(self, feedback_mode=None, feedback_gain=None, n_action_steps=None) -> EpisodeStreamer:
        """Chunk after chunk over one episode: `streamer.start_chunk(**inputs)` returns the stream of a new
        observation, continuing the cumulative action of the actions already streamed; `streamer.reset()` starts a
        new episode."""
        return EpisodeStreamer(self, feedback_mode, feedback_gain, n_action_steps)

    # -- input checks (never `assert`: these are user inputs) ------------------------------------------------------

    def _pad_trajectory(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, self.config.max_action_dim - x.shape[-1]))

    def _check_observation(self, pixel_values, input_ids, attention_mask, state, image_masks, check_finite=False):
        config = self.config
        cameras = len(config.camera_names)
        size = config.image_size
        if not torch.is_tensor(pixel_values) or pixel_values.ndim != 5 or not pixel_values.is_floating_point() \
                or pixel_values.shape[1:] != (cameras, 3, size, size):
            raise ValueError(f"pixel_values must be a float tensor (B, {cameras}, 3, {size}, {size}) for the cameras "
                             f"{config.camera_names} at image_size {size}, got {_describe(pixel_values)}; use "
                             "FasVLAProcessor.")
        batch = pixel_values.shape[0]
        for name, value in (("input_ids", input_ids), ("attention_mask", attention_mask)):
            if not torch.is_tensor(value) or value.ndim != 2 or value.shape[0] != batch or value.shape[1] < 1:
                raise ValueError(f"{name} must be a (B={batch}, L >= 1) tensor, got {_describe(value)}.")
        if input_ids.shape != attention_mask.shape:
            raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
                             "must have the same shape.")
        vocab = config.text_config.vocab_size
        low, high = int(input_ids.min()), int(input_ids.max())  # once per observation, never per streamed step
        if low < 0 or high >= vocab:
            raise ValueError(f"input_ids must lie in [0, {vocab}) (the VLM's vocabulary), got values in [{low}, {high}]"
                             ": was the task tokenized with another model's tokenizer?")
        _check_shape("state", state, (batch, config.state_dim))
        if image_masks is not None:
            _check_shape("image_masks", image_masks, (batch, cameras))
        if check_finite and not torch.isfinite(state).all():
            raise ValueError(f"state contains NaN or infinite values: {state}")

    def _check_training_targets(self, state, actions, action_is_pad, future_states, future_state_is_pad,
                                cumulative_action, previous_action):
        config, batch = self.config, state.shape[0]
        _check_shape("actions", actions, (batch, config.chunk_size, config.action_dim))
        for name, value in (("action_is_pad", action_is_pad), ("future_state_is_pad", future_state_is_pad)):
            if value is not None:
                _check_shape(name, value, (batch, config.chunk_size))
        if config.objective != "chunk" or cumulative_action is not None:
            _check_shape("cumulative_action", cumulative_action, (batch, config.action_dim))
        if config.objective != "chunk" and config.absolute_action_dims or previous_action is not None:
            _check_shape("previous_action", previous_action, (batch, config.action_dim))
        if config.uses_state_trajectory:
            _check_shape("future_states", future_states, (batch, config.chunk_size, config.state_dim))

    def _check_draws(self, batch: int, noise, time) -> None:
        """Given noise and time draws match the objective's shapes (Q: the queries of the given time, if any)."""
        config = self.config
        if config.objective == "chunk":
            shapes = {"noise": (batch, config.chunk_size, config.max_action_dim), "time": (batch,)}
        else:
            queries = time.shape[1] if torch.is_tensor(time) and time.ndim == 2 else config.num_flow_queries
            shapes = {"noise": (batch, queries, config.max_action_dim), "time": (batch, queries)}
        for name, value in (("time", time), ("noise", noise)):
            if value is not None:
                _check_shape(name, value, shapes[name])


def _not_pad(is_pad, shape, device) -> torch.Tensor:
    return torch.ones(shape, dtype=torch.bool, device=device) if is_pad is None else ~is_pad.bool()


def _describe(value) -> str:
    if torch.is_tensor(value):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__}"


def _check_shape(name, value, shape):
    if not torch.is_tensor(value) or tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} must be a tensor of shape {tuple(shape)}, got {_describe(value)}.")


FasVLAForActionPrediction.register_for_auto_class("AutoModel")

__all__ = ["FasVLAForActionPrediction", "FasVLAOutput", "FasVLAPreTrainedModel", "PrefixCache"]
