"""Configuration of FAS-VLA, the Feedback-Aware Streaming VLA (a SmolVLA-based robot policy)."""

import math

from transformers import PreTrainedConfig, SmolVLMConfig
from transformers.configuration_utils import SubConfigSpec

OBJECTIVES = ("chunk", "stream", "stream_joint")
FEEDBACK_MODES = ("open_loop", "synchronous", "anticipatory")
ATTENTION_MODES = ("cross_attn", "self_attn")
NORMALIZATIONS = ("mean_std", "scale")
NORM_STAT_NAMES = ("mean", "std", "q01", "q99")
TRAJECTORY_ORIGINS = ("episode", "chunk")

# HuggingFaceTB/SmolVLM2-500M-Video-Instruct, written out so the full-size model builds offline.
SMOLVLM2_500M = {
    "image_token_id": 49190,
    "scale_factor": 4,
    "tie_word_embeddings": False,
    "text_config": {
        "model_type": "llama",
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "head_dim": 64,
        "vocab_size": 49280,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
        "hidden_act": "silu",
        "pad_token_id": 2,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "model_type": "smolvlm_vision",
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 512,
        "patch_size": 16,
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu_pytorch_tanh",
    },
}


class FasVLAConfig(PreTrainedConfig):
    r"""
    Configuration of [`FasVLAForActionPrediction`]. Defaults reproduce SmolVLA 0.45B (a SmolVLM2-500M backbone
    cut to 16 layers, an action expert of width 720) trained with the joint state-action streaming objective.

    Architecture (SmolVLA, DESIGN.md section 2):
        vlm_config (`SmolVLMConfig` or `dict`):
            The backbone. Only its first `num_vlm_layers` text layers are built. Defaults to SmolVLM2-500M.
        num_vlm_layers (`int`, defaults to 16):
            Text decoder layers of the VLM that are kept, in [1, `vlm_config.text_config.num_hidden_layers`].
        num_expert_layers (`int`, defaults to -1):
            Action expert layers. `<= 0` means one per kept VLM layer; otherwise `num_vlm_layers` must be a multiple
            of it and only every `num_vlm_layers // num_expert_layers`-th VLM layer has an expert partner.
        expert_width_multiplier (`float`, defaults to 0.75):
            Expert hidden size as a fraction of the VLM hidden size, in (0, 1]. Heads and head dim are the VLM's.
        self_attn_every_n_layers (`int`, defaults to 2):
            With `attention_mode="cross_attn"`, layers `i % n == 0` attend jointly over prefix and suffix and the
            other layers cross-attend from the suffix to the prefix. >= 1.
        attention_mode (`str`, defaults to `"cross_attn"`):
            `"cross_attn"` (interleaved, SmolVLA's default) or `"self_attn"` (every layer joint).
        rope_theta (`float`, defaults to 10000.0):
            RoPE base of the joint attention. SmolVLA uses 10000 whatever the VLM's own `rope_theta` says.
        camera_names (`list[str]`, defaults to the two LIBERO cameras):
            Camera order of `pixel_values[:, i]`. The processor expects one image entry per camera in this order.
        image_size (`int`, defaults to 512):
            Images are resized with padding to `image_size x image_size`; a multiple of the vision patch size.
        tokenizer_max_length (`int`, defaults to 48):
            Maximum number of task tokens.
        max_state_dim (`int`, defaults to 32) / max_action_dim (`int`, defaults to 32):
            Widths that states and trajectory vectors are zero-padded to before the projections.
        min_period (`float`, defaults to 4e-3) / max_period (`float`, defaults to 4.0):
            Periods of the sinusoidal flow-time embedding, 0 < min_period < max_period.

    Objective and sampling (DESIGN.md sections 3-5):
        objective (`str`, defaults to `"stream_joint"`):
            `"chunk"` (SmolVLA flow matching over a whole action chunk), `"stream"` (streaming flow over the
            accumulated action, StreamingVLA) or `"stream_joint"` (streaming flow over the joint state-action
            trajectory, FAS-VLA).
        state_dim (`int`, defaults to 8) / action_dim (`int`, defaults to 7):
            Robot state and action sizes. `stream_joint` needs `action_dim + state_dim <= max_action_dim`.
        chunk_size (`int`, defaults to 50):
            H, the number of actions one prefix (one observation) plans for.
        n_action_steps (`int`, defaults to 50):
            Actions executed per chunk before re-observing, in [1, `chunk_size`].
        num_steps (`int`, defaults to 10):
            Euler denoising steps of the `chunk` objective.
        sigma0 (`float`, defaults to 0.16) / kappa (`float`, defaults to 4.0):
            Stabilising noise of the streaming objectives, `n = sigma0 * exp(-kappa * tau) * eps`, both >= 0.
        action_loss_weight (`float`, defaults to 1.0) / state_loss_weight (`float`, defaults to 1.0):
            Weights of the action and state terms of the streaming loss, >= 0.
        num_flow_queries (`int`, defaults to 8):
            Flow-time queries per sample in training; they share one prefix pass.
        feedback_mode (`str`, defaults to `"anticipatory"`):
            Default state feedback of `stream_actions`: `"open_loop"`, `"synchronous"` or `"anticipatory"`.
        feedback_gain (`float`, defaults to 1.0):
            beta, the weight of the anticipatory residual, >= 0.

    The streaming trajectory, revision 2 (DESIGN.md section 3b; every default is the first version's behaviour, so
    that a config.json written without these fields means what it meant):
        absolute_action_dims (`list[int]`, defaults to `[]`):
            Action dimensions that are levels, not increments (LIBERO's gripper: `[6]`). Their trajectory coordinate
            is the last command itself, `A_{k+1} = a_{t+k}` from `A_0 = a_{t-1}` (0 at an episode's first frame),
            instead of the running sum; the stream emits `A_k + delta` for them.
        trajectory_origin (`str`, defaults to `"episode"`):
            Where the integrated action coordinates start at a chunk: `"episode"` (`A_0 = C_t`, the sum of the
            episode's actions so far: StreamingVLA's convention and the reference release's) or `"chunk"` (`A_0 = 0`
            at every chunk: nothing drifts across chunks, the state says where the robot is).
        center_state (`bool`, defaults to `False`):
            With `normalization="scale"`, normalise states as `(s - mean) / std` rather than `s / std` (a LIBERO
            axis-angle dimension with mean 3.13 and std 0.013 otherwise enters the network at about 238).
        feedback_kappa (`float`, defaults to 0.0):
            kappa_fb of feedback-consistent stabilisation, >= 0: the action target carries the correction that
            removes the stabilising state noise, `u_A = dxi_A - kappa_a n_A - kappa_fb G n_S`. 0 is the first
            version (SFP's independent stabilisation), bit for bit. Needs `feedback_matrix`.
        kappa_a (`float`, *optional*):
            The decay rate of the action noise in the action target; defaults to `kappa`.
        tracking_kappa (`float`, defaults to 0.0):
            Inference only, >= 0: the stream adds the correction of feedback-consistent stabilisation itself instead
            of learning it, `v_A += tracking_kappa G (s_plan - S_in)`, with `s_plan` the state the stream predicted
            (its own increments from `S_in_0`) and `S_in` the state it is fed. Open loop is unchanged (`S_in` is the
            plan); fed a measured state, the actions bring it back to the plan at that rate. 0: no correction
            beyond what the network learnt. Needs `feedback_matrix` (streaming_fasvla.py).
        tracking_state_dims (`list[int]`, *optional*):
            The state dimensions whose displacement tracking corrects (default: all). LIBERO: `[0, 1, 2]`, the
            position; an axis-angle rotation is no vector space (near pi its coordinates jump), and a linear fit of
            its response to the actions holds only near the demonstrations' orientation.
        feedback_matrix (`list[list[float]]`, *optional*):
            G (action_dim x state_dim, normalised units): the action increments that remove a state displacement, the
            ridge pseudo-inverse of the state's response to the actions fitted on the training data
            (fasvla/state_response.py; `train_accelerate.py` fits it).
        prefix_state_gate (`bool`, defaults to `True`):
            Streaming objectives: the prefix's state token is multiplied by `tanh(g)`, `g` learned from 0 (the
            reference release). `False`: the token enters as in SmolVLA, ungated, so the expert can compare the
            state it is fed with the state of the observation from the first step on.
        max_observation_delay (`int`, defaults to 0):
            Training under inference delay (DESIGN.md section 5, revision 2): each sample's prefix (images and state
            token) is from frame `t - d`, `d` uniform in {0..max_observation_delay} (within the episode), while its
            trajectory starts at frame t. Recorded here as how the model was trained; inference takes any delay.

    Normalisation (inputs and outputs are in robot units; the model works in normalised units):
        norm_stats (`dict`, *optional*):
            `{"state": {...}, "action": {...}}`, each with per-dimension lists `mean`, `std` and, for the streaming
            objectives, `q01` and `q99`. `None` means identity normalisation.
        normalization (`str`, *optional*):
            `"mean_std"`: `(x - mean) / (std + norm_eps)` in, `y * std + mean` out (SmolVLA); or `"scale"`:
            actions divided by `max(|q01|, |q99|) + 1e-6` and states by `std + norm_eps`, no offset, so that
            normalisation commutes with the cumulative sum. Defaults to `"mean_std"` for `chunk` and `"scale"`
            for the streaming objectives, which need an action normalisation without offset (`"scale"`, or
            `"mean_std"` with zero action means, as in checkpoints converted from LeRobot).
        norm_eps (`float`, defaults to 1e-8):
            Added to standard deviations before dividing.
    """

    model_type = "fasvla"
    sub_configs_defaults = {"vlm_config": SubConfigSpec(config_class=SmolVLMConfig, init_kwargs=SMOLVLM2_500M)}

    vlm_config: dict | PreTrainedConfig | None = None
    num_vlm_layers: int = 16
    num_expert_layers: int = -1
    expert_width_multiplier: float = 0.75
    self_attn_every_n_layers: int = 2
    attention_mode: str = "cross_attn"
    rope_theta: float = 10000.0
    camera_names: list[str] | None = None
    image_size: int = 512
    tokenizer_max_length: int = 48
    max_state_dim: int = 32
    max_action_dim: int = 32
    min_period: float = 4e-3
    max_period: float = 4.0

    objective: str = "stream_joint"
    state_dim: int = 8
    action_dim: int = 7
    chunk_size: int = 50
    n_action_steps: int = 50
    num_steps: int = 10
    sigma0: float = 0.16
    kappa: float = 4.0
    action_loss_weight: float = 1.0
    state_loss_weight: float = 1.0
    num_flow_queries: int = 8
    feedback_mode: str = "anticipatory"
    feedback_gain: float = 1.0

    absolute_action_dims: list[int] | None = None
    trajectory_origin: str = "episode"
    center_state: bool = False
    feedback_kappa: float = 0.0
    kappa_a: float | None = None
    tracking_kappa: float = 0.0
    tracking_state_dims: list[int] | None = None
    feedback_matrix: list[list[float]] | None = None
    max_observation_delay: int = 0
    prefix_state_gate: bool = True

    norm_stats: dict | None = None
    normalization: str | None = None
    norm_eps: float = 1e-8

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.camera_names is None:
            self.camera_names = ["observation.images.image", "observation.images.image2"]
        if self.normalization is None:
            self.normalization = "mean_std" if self.objective == "chunk" else "scale"
        if self.absolute_action_dims is None:
            self.absolute_action_dims = []
        if self.kappa_a is None:
            self.kappa_a = self.kappa
        self._validate()

    @property
    def text_config(self):
        return self.vlm_config.text_config

    @property
    def expert_hidden_size(self) -> int:
        return int(self.text_config.hidden_size * self.expert_width_multiplier)

    @property
    def expert_intermediate_size(self) -> int:
        # SmolVLA's rule: two thirds of 4x hidden, rounded up to a multiple of 256.
        return 256 * -(-4 * int(2 * self.expert_hidden_size / 3) // 256)

    @property
    def expert_layer_stride(self) -> int:
        """Every `stride`-th VLM layer has an expert partner."""
        return 1 if self.num_expert_layers <= 0 else self.num_vlm_layers // self.num_expert_layers

    @property
    def uses_state_trajectory(self) -> bool:
        return self.objective == "stream_joint"

    def _validate(self):
        _check_choice("objective", self.objective, OBJECTIVES)
        _check_choice("feedback_mode", self.feedback_mode, FEEDBACK_MODES)
        _check_choice("attention_mode", self.attention_mode, ATTENTION_MODES)
        _check_choice("normalization", self.normalization, NORMALIZATIONS)
        for name in ("num_vlm_layers", "self_attn_every_n_layers", "image_size", "tokenizer_max_length",
                     "max_state_dim", "max_action_dim", "state_dim", "action_dim", "chunk_size",
                     "n_action_steps", "num_steps", "num_flow_queries"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("max_observation_delay", self.max_observation_delay, minimum=0)
        _check_int("num_expert_layers", self.num_expert_layers, minimum=None)
        for name in ("sigma0", "kappa", "action_loss_weight", "state_loss_weight", "feedback_gain", "norm_eps",
                     "feedback_kappa", "kappa_a", "tracking_kappa"):
            _check_number(name, getattr(self, name), minimum=0.0)
        for name in ("expert_width_multiplier", "rope_theta", "min_period", "max_period"):
            _check_number(name, getattr(self, name), minimum=0.0, strict=True)
        self._validate_relations()
        self._validate_cameras()
        self._validate_norm_stats()
        self._validate_trajectory()

    def _validate_trajectory(self):
        _check_choice("trajectory_origin", self.trajectory_origin, TRAJECTORY_ORIGINS)
        for name in ("center_state", "prefix_state_gate"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, "a bool", getattr(self, name))
        if not _distinct_indices(self.absolute_action_dims, self.action_dim):
            _fail("absolute_action_dims", f"distinct action indices in [0, {self.action_dim})",
                  self.absolute_action_dims)
        for name in ("feedback_kappa", "tracking_kappa"):
            if getattr(self, name) > 0 and not self.uses_state_trajectory:
                _fail(name, f"0 for objective '{self.objective}' (no state in its trajectory)", getattr(self, name))
            if getattr(self, name) > 0 and self.feedback_matrix is None:
                _fail("feedback_matrix", f"G, an action_dim x state_dim matrix, when {name} > 0", None)
        tracked = self.tracking_state_dims
        if tracked is not None and not (tracked and _distinct_indices(tracked, self.state_dim)):
            _fail("tracking_state_dims", f"None or distinct state indices in [0, {self.state_dim})", tracked)
        matrix = self.feedback_matrix
        if matrix is not None and (not isinstance(matrix, (list, tuple)) or len(matrix) != self.action_dim or any(
                not isinstance(row, (list, tuple)) or len(row) != self.state_dim or
                not all(isinstance(v, (int, float)) and math.isfinite(v) for v in row) for row in matrix)):
            _fail("feedback_matrix", f"a {self.action_dim} x {self.state_dim} list of finite numbers", matrix)

    def _validate_relations(self):
        text_layers = self.text_config.num_hidden_layers
        if self.num_vlm_layers > text_layers:
            _fail("num_vlm_layers", f"at most the VLM's {text_layers} text layers", self.num_vlm_layers)
        if self.num_expert_layers > 0 and self.num_vlm_layers % self.num_expert_layers:
            _fail("num_expert_layers", f"a divisor of num_vlm_layers={self.num_vlm_layers}", self.num_expert_layers)
        if self.expert_width_multiplier > 1:
            _fail("expert_width_multiplier", "a value in (0, 1]", self.expert_width_multiplier)
        if self.expert_hidden_size < 1:
            _fail("expert_width_multiplier", "a value giving an expert hidden size >= 1", self.expert_width_multiplier)
        if self.n_action_steps > self.chunk_size:
            _fail("n_action_steps", f"at most chunk_size={self.chunk_size}", self.n_action_steps)
        if self.min_period >= self.max_period:
            _fail("min_period", f"smaller than max_period={self.max_period}", self.min_period)
        if self.state_dim > self.max_state_dim:
            _fail("state_dim", f"at most max_state_dim={self.max_state_dim}", self.state_dim)
        trajectory_width = self.action_dim + (self.state_dim if self.uses_state_trajectory else 0)
        if trajectory_width > self.max_action_dim:
            _fail("max_action_dim", f">= {trajectory_width} (the trajectory width of '{self.objective}')",
                  self.max_action_dim)
        if self.objective != "chunk" and self.normalization == "mean_std" and self.norm_stats is not None:
            means = (self.norm_stats.get("action") or {}).get("mean") if isinstance(self.norm_stats, dict) else None
            if means is None or any(m != 0 for m in means):
                _fail("normalization", f"'scale', or 'mean_std' with zero action means, for objective "
                      f"'{self.objective}' (the cumulative sum needs a normalisation without offset)",
                      self.normalization)

    def _validate_cameras(self):
        names = self.camera_names
        if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names):
            _fail("camera_names", "a non-empty list of non-empty strings", names)
        if len(set(names)) != len(names):
            _fail("camera_names", "unique names", names)
        patch = self.vlm_config.vision_config.patch_size
        patches_per_side = self.image_size // patch
        if self.image_size % patch or patches_per_side % self.vlm_config.scale_factor:
            _fail("image_size", f"a multiple of patch_size * scale_factor = {patch * self.vlm_config.scale_factor}",
                  self.image_size)

    def _validate_norm_stats(self):
        if self.norm_stats is None:
            return
        required = ("mean", "std") if self.normalization == "mean_std" else ("std",)
        for key, dim in (("state", self.state_dim), ("action", self.action_dim)):
            stats = self.norm_stats.get(key) if isinstance(self.norm_stats, dict) else None
            if not isinstance(stats, dict):
                _fail("norm_stats", f"a dict with a '{key}' entry of per-dimension statistics", self.norm_stats)
            needed = required + (("q01", "q99") if key == "action" and self.normalization == "scale" else ())
            for name in needed:
                values = stats.get(name)
                if not isinstance(values, (list, tuple)) or len(values) != dim:
                    _fail(f"norm_stats['{key}']['{name}']", f"a list of {dim} numbers", values)


def _distinct_indices(dims, size: int) -> bool:
    """A list of distinct integer indices in [0, size)."""
    return isinstance(dims, (list, tuple)) and len(set(dims)) == len(dims) and all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < size for d in dims)


def _fail(field, expected, received):
    raise ValueError(f"FasVLAConfig.{field} must be {expected}, got {received!r}.")


def _check_choice(field, value, choices):
    if value not in choices:
        _fail(field, f"one of {choices}", value)


def _check_int(field, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(field, "an integer", value)
    if minimum is not None and value < minimum:
        _fail(field, f">= {minimum}", value)


def _check_number(field, value, minimum, strict=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(field, "a finite number", value)
    if value < minimum or (strict and value == minimum):
        _fail(field, f"{'>' if strict else '>='} {minimum}", value)


FasVLAConfig.register_for_auto_class()

__all__ = ["FasVLAConfig"]
