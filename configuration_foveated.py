"""Configuration of the foveated video-language model (one visual token per frame).

The model pairs a DINOv3 ViT (``vision_config``) that is read through a single query token per frame with a
SmolLM2 language model (``text_config``) that predicts the query for the next frame. Every knob of the design
lives here, each documented where it is declared.
"""

from __future__ import annotations

import transformers
from packaging.version import Version

# The KV cache is passed and returned as ``cache`` (transformers 5.24 renamed ``past_key_values``): an older
# LlamaModel would swallow the keyword and run without its cache, so refuse to load rather than decode wrongly.
MIN_TRANSFORMERS_VERSION = "5.24.0"
if Version(transformers.__version__) < Version(MIN_TRANSFORMERS_VERSION):
    raise ImportError(
        f"foveated-vlm needs transformers >= {MIN_TRANSFORMERS_VERSION}, found {transformers.__version__}: "
        f"pip install -U 'transformers>={MIN_TRANSFORMERS_VERSION}'"
    )

from transformers import AutoConfig, PreTrainedConfig  # noqa: E402
from transformers.configuration_utils import SubConfigSpec  # noqa: E402

# Shapes of the public DINOv3 ViT-S/16 checkpoint, read at 256 px (16 x 16 = 256 patches).
DINOV3_VITS16_SHAPES = {
    "hidden_size": 384,
    "intermediate_size": 1536,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "patch_size": 16,
    "image_size": 256,
    "num_register_tokens": 4,
    "layerscale_value": 1.0e-5,
}

# Shapes of SmolLM2-135M-Instruct; the vocabulary holds the three added video tokens, padded to a multiple of 64.
SMOLLM2_135M_SHAPES = {
    "vocab_size": 49216,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1.0e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
    "hidden_act": "silu",
    "initializer_range": 0.041666666666666664,
}

FOVEATION_MODES = ("foveated", "dense")
INFERENCE_MODES = ("two_pass", "coarse")
TARGET_SOURCES = ("downsampled_frames", "vae", "motion")
MOTION_TARGET_CHANNELS = 2
COARSE_READINGS = ("static_query", "mean_pool")
HARD_ATTENTION = ("soft", "straight_through", "gumbel")
PREFIX_ATTENTION = ("attend", "ignore")
MULTI_QUERY_OUTPUTS = ("mean", "tokens")
PREDICTION_PASSES = ("both", "coarse")


class FoveatedVLMConfig(PreTrainedConfig):
    """Configuration of :class:`FoveatedVLMForConditionalGeneration`.

    Defaults give the full-size model of the proposal: DINOv3 ViT-S/16 at 256 px with 4 register tokens and
    SmolLM2-135M-Instruct. Each field below is documented by the string that follows it.

    Example:
        >>> config = FoveatedVLMConfig(lambda_coarse=0.5, query_attention_temperature=0.5)
        >>> config.target_shape
        (3, 32, 32)
    """

    model_type = "foveated_vlm"

    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig, model_type="dinov3_vit", init_kwargs=DINOV3_VITS16_SHAPES
        ),
        "text_config": SubConfigSpec(
            config_class=AutoConfig, model_type="llama", init_kwargs=SMOLLM2_135M_SHAPES
        ),
    }

    vision_config: dict | PreTrainedConfig | None = None
    """DINOv3 ViT config of the frame encoder (default: ViT-S/16 at 256 px, 4 register tokens)."""
    text_config: dict | PreTrainedConfig | None = None
    """Llama config of the language model (default: SmolLM2-135M-Instruct with the video tokens added)."""

    foveation_mode: str = "foveated"
    """``"foveated"``: one query token per frame read through cached patch K/V (the proposal).
    ``"dense"``: the baseline that feeds ``dense_tokens_per_frame`` pooled patch tokens per frame to the LLM."""
    dense_tokens_per_frame: int = 64
    """Visual tokens per frame in ``dense`` mode; the patch grid is pixel-unshuffled down to this many tokens."""

    frame_reader: str = "query"
    """How a frame is read from the LLM's plan (``readers_foveated.FRAME_READERS``; each reader's knobs follow its
    name below). ``"query"``: the query token goes through every encoder layer against the frame's cached patch
    K/V (the proposal). The reader fixes the plan's width (``plan_dim``) and the visual tokens of one plan."""
    reader_loss_weight: float = 1.0
    """Weight of a reader's own auxiliary loss term (``loss_reader``, e.g. the REINFORCE term of hard glimpses);
    readers without one ignore it."""
    multi_scale_factors: list[int] | tuple[int, ...] = (1, 2, 4)
    """``frame_reader="multi_scale"``: average-pooling factors of the patch grid (each divides it); the query's
    attention-weighted pool at each scale, mixed by learned scale weights, is the token."""
    cascade_steps: int = 2
    """``frame_reader="cascade"``: glimpses per frame (>= 2); each refines the query (a residual MLP of its output)
    and centres the next glimpse's Gaussian bias where it looked; the last glimpse is the token."""
    cascade_sigma: float = 0.5
    """``frame_reader="cascade"``: std of the Gaussian patch bias around the previous glimpse, in the -1..1 frame
    coordinates of ``glimpse_location`` (smaller narrows more)."""
    cascade_hidden_dim: int = 256
    """``frame_reader="cascade"``: hidden width of the residual MLP that refines the query between glimpses."""
    log_polar_rings: int = 4
    """``frame_reader="log_polar"`` / ``"hybrid"``: rings of the log-polar sampling grid around the fixation."""
    log_polar_wedges: int = 8
    """``frame_reader="log_polar"`` / ``"hybrid"``: sample points per ring (averaged: one feature per ring)."""
    log_polar_min_radius: float = 0.1
    """``frame_reader="log_polar"`` / ``"hybrid"``: radius of the innermost ring in -1..1 frame units (the radii
    grow geometrically from it to ``log_polar_max_radius``)."""
    log_polar_max_radius: float = 1.0
    """``frame_reader="log_polar"`` / ``"hybrid"``: radius of the outermost ring in -1..1 frame units."""
    top_k_patches: int = 4
    """``frame_reader="top_k"`` / ``"hybrid"``: patches the query keeps (the K best scores)."""
    top_k_output: str = "weighted_sum"
    """``frame_reader="top_k"`` / ``"hybrid"``: ``"weighted_sum"``: one token, the kept patches weighted by the
    softmax of their scores; ``"tokens"``: the K patches as K tokens (with ``multi_query_output="tokens"`` the
    LLM sees them; ``"mean"`` averages them)."""
    fixation_crop_size: int = 64
    """Fixation readers (``frame_reader`` ``"dual_stream"``, ``"multi_fixation"``, ``"glimpse_rl"``,
    ``"adaptive_fixation"``): side in pixels of the crop around a fixation that the ViT reads in its own patch pass
    (a multiple of ``patch_size``; 64 px at 16 px patches is 16 patches, 1/16 of a 256 px frame's pass)."""
    fixation_token: str = "cls"
    """Fixation readers: the foveal token of a crop, its ViT output at ``"cls"`` or the ``"mean"`` of its patch
    states (both normed)."""
    fixation_min_scale: float = 0.125
    """Fixation readers with a continuous plan: smallest crop window side, a fraction of the frame side (the plan's
    scale goes through a sigmoid between ``fixation_min_scale`` and ``fixation_max_scale``)."""
    fixation_max_scale: float = 0.5
    """Fixation readers with a continuous plan: largest crop window side, a fraction of the frame side (<= 1)."""
    fixation_centre_range: float = 1.0
    """Fixation readers with a continuous plan: the window centre is ``fixation_centre_range * tanh(plan)`` per
    axis, in -1..1 frame coordinates (1: up to the frame's edge; the part of a window outside the frame is blank)."""
    fixation_periphery: str = "token"
    """Fixation readers: ``"token"`` adds a periphery token (the mean of the frame's final patch states) after the
    foveal ones; ``"fused"`` fuses the foveal tokens and the periphery into one token (a learned linear map);
    ``"none"``: foveal tokens only (not for ``dual_stream``, which is fovea + periphery)."""
    fixation_periphery_grid: int = 1
    """Fixation readers: the periphery pools the frame's final patch states over a ``fixation_periphery_grid`` squared
    grid of cells (over the patches a probe keeps) and maps the cells' means, flattened, to one token (a learned
    linear map): a low-resolution view of the frame that keeps where things are, which the planner needs to place
    the next fixation. 1: the plain mean of the patch states (no map)."""
    fixation_box_loss: str = "gaussian"
    """Fixation readers with attention supervision: ``"gaussian"`` scores each foveal window by ``-log`` of the mass
    a Gaussian footprint of it (centred on the window, std ``fixation_box_sigma`` times its half-width) puts in the
    named object's box, computed in log space so a window far from the box is still pulled towards it (for
    ``glimpse_rl``: ``-log`` of the policy's probability of a cell in the box); ``"coverage"``: ``-log`` mass in the
    box of the window's exact coverage, which has no gradient while the window misses the box."""
    fixation_box_sigma: float = 1.0
    """Fixation readers, ``fixation_box_loss="gaussian"``: std of the footprint, in window half-widths."""
    num_fixations: int = 2
    """``frame_reader="multi_fixation"``: fixations a plan holds (``3 * num_fixations`` plan numbers: x, y, scale
    each), each read as a foveal crop: that many tokens (plus the periphery)."""
    glimpse_grid: int = 4
    """``frame_reader="glimpse_rl"``: the plan is logits over a ``glimpse_grid x glimpse_grid`` grid of glimpse
    locations; one cell is sampled while training (argmax in eval) and read as a foveal crop at its centre."""
    glimpse_window: float = 1.0
    """``frame_reader="glimpse_rl"``: side of the crop window around the chosen cell's centre, in grid cells."""
    glimpse_entropy_weight: float = 0.0
    """``frame_reader="glimpse_rl"``: weight of the policy's entropy bonus in its REINFORCE loss (``loss_reader``)."""
    glimpse_baseline_hidden_dim: int = 64
    """``frame_reader="glimpse_rl"``: hidden width of the learned REINFORCE baseline (an MLP of the detached plan
    logits, i.e. of the LLM state as the plan head projects it)."""
    glimpse_budget_levels: list[int] | tuple[int, ...] = (1, 2, 4)
    """``frame_reader="adaptive_fixation"``: the glimpse counts a frame may choose from (increasing); a frame has
    as many token slots as the largest, and unused slots hold a learned "no glimpse" embedding."""
    glimpse_budget_temperature: float = 1.0
    """``frame_reader="adaptive_fixation"``: temperature of the straight-through Gumbel-softmax over the budget
    levels while training (the argmax in eval)."""
    glimpse_cost: float = 0.01
    """``frame_reader="adaptive_fixation"``: penalty per glimpse a frame reads (``loss_reader`` is this times the
    mean glimpses per frame)."""
    query_dim: int = 384
    """Width of the query vectors the LLM predicts (and of ``q_static``/``q_init``) for readers whose plan is a
    query (``plan_dim`` is the plan width of the configured reader)."""
    coarse_reading: str = "static_query"
    """How pass 1 reads a frame: ``"static_query"`` (the learned ``q_static``) or ``"mean_pool"`` (the average of
    the final patch states: the proposal's ablation without spatial selection)."""
    query_init_std: float = 1.0
    """Std of the learned static and initial queries. Tiny queries (0.02) give identical attention maps."""
    query_attention_temperature: float = 1.0
    """Softmax temperature of the query token's attention in every encoder layer (< 1 sharpens it)."""
    query_attention_top_k: int = 0
    """If > 0, the query token attends only to its top-k patch keys per head (hard attention); 0 is soft. The
    prefix keys (CLS, registers) and the query's own key are governed by ``query_attention_prefix``, never by
    the top-k."""
    query_attention_prefix: str = "attend"
    """``"attend"``: the query also sees CLS, the registers and its own key (as in the ViT). ``"ignore"``: it sees
    the patches only, so all of its attention mass lands on patches (with top-k: exactly on k patches)."""
    query_attention_hard: str = "soft"
    """``"soft"``: softmax attention. ``"straight_through"``: each head of the query attends one key (the argmax)
    in the forward, with the softmax's gradient. ``"gumbel"``: the same with Gumbel noise on the scores during
    training (``gumbel_temperature``); the argmax without noise at inference."""
    gumbel_temperature: float = 1.0
    """Temperature of the Gumbel-softmax relaxation behind ``query_attention_hard="gumbel"``."""
    num_queries_per_frame: int = 1
    """Multi-query reading: k queries read each frame through the same cached K/V in one pass (the LLM predicts
    all k; ``q_static``/``q_init`` hold k vectors)."""
    multi_query_output: str = "mean"
    """With k > 1 queries: ``"mean"`` averages their outputs into one visual token per frame, ``"tokens"`` gives
    the LLM k tokens per frame."""
    plan_first_query: bool = False
    """Plan the first frame's query too: from the LLM state at ``<video_start>`` (which has read the prompt), like
    every later query, instead of the learned prompt-blind ``q_init`` of the proposal."""
    glimpse_location: bool = False
    """Add *where* each query looked (the mean and spread of its attention over the patch grid, 4 numbers) to its
    visual token through a learned projection, as RAM's glimpse network combines what and where."""
    attention_map_layer: int | None = -1
    """Encoder layer whose query attention (mean over heads) is returned, visualised and supervised; None averages
    every layer's (where the query looked on its way through the encoder)."""
    visual_token_scale: float = 1.0
    """Factor applied to projected visual tokens before they enter the LLM (after ``visual_token_norm``)."""
    visual_token_norm: bool = False
    """RMS-normalise each projected visual token (location included) to the RMS of the LLM's input embeddings,
    read from the embedding table at every forward (no gradient): a visual token then weighs as much as a word.
    Without it a random-init projection gives tokens ~30x the text's norm, which drowns the prompt in the planner's
    state (the prompt's colour word moved the planned query by a cosine of 2e-5); ``visual_token_scale=0.03`` was
    the hand-tuned stand-in (studies/label_free/RESULTS.md)."""
    prediction_passes: str = "both"
    """Passes whose next-frame loss trains the model. ``"both"``: the proposal (fine and coarse, the coarse one
    weighted by ``lambda_coarse``). ``"coarse"``: only the static-query pass; the fine pass's prediction is still
    computed and reported (``loss_fine``) but its whole-frame target never reaches the planner
    (``fovea_query_head``), which ``"both"`` pulls towards a global summary (studies/label_free/RESULTS.md)."""

    frame_token_id: int = 49152
    """Placeholder token of one frame in ``input_ids``; replaced by the frame's visual token."""
    video_start_token_id: int = 49153
    """Token that opens the video; replaced by the learned coarse or fine mode embedding of the pass."""
    video_end_token_id: int = 49154
    """Token that closes the video; replaced by a learned embedding. Captions follow it."""

    target_source: str = "downsampled_frames"
    """Next-frame target: ``"vae"`` (SD-VAE latent mean x scaling factor), ``"downsampled_frames"`` or ``"motion"``
    (optical flow from the previous frame at the target resolution, 2 channels: the author's idea 11, a target
    that only the place where something moves can predict)."""
    target_channels: int = 3
    """Channels of one target (3 for downsampled RGB frames, 4 for an SD-VAE latent, 2 for motion)."""
    target_downsample: int = 8
    """Spatial factor between a frame and its target (the SD-VAE's 8; frames are area-downsampled by it)."""
    motion_search_radius: int = 8
    """Largest displacement (pixels per axis, at ``image_size``) that ``"motion"`` targets search for."""
    vae_name_or_path: str | None = None
    """Hub id or path of the ``diffusers.AutoencoderKL`` that makes (and decodes) ``vae`` targets."""

    film_hidden_dim: int = 512
    """Hidden width of the MLP that maps an LLM state to FiLM scale and shift."""
    film_channels: list[int] | tuple[int, ...] = (64, 128, 256)
    """Conv widths of the prediction head's encoder (mirrored by its decoder); the last is FiLM-modulated."""
    separate_prediction_heads: bool = False
    """Remedy: give the coarse pass its own prediction head instead of sharing the fine one."""
    query_skip_to_head: bool = False
    """Remedy: add the query that read the frame to the prediction head's features (where it looked)."""
    predict_delta: bool = False
    """Remedy: predict the change from the previous target instead of the full next target."""
    delta_l1_weight: float = 0.01
    """L1 penalty on predicted deltas when ``predict_delta`` (keeps them from collapsing to noise)."""
    previous_target_dropout: float = 0.0
    """Remedy: dropout probability on the previous target fed to the prediction head during training."""

    lambda_coarse: float = 1.0
    """Weight of the coarse pass's losses (prediction and caption) relative to the fine pass."""
    prediction_loss_weight: float = 1.0
    """Weight of the next-frame prediction losses in the total loss."""
    caption_loss_weight: float = 1.0
    """Weight of the caption cross-entropy in the total loss."""
    contrastive_loss_weight: float = 0.0
    """Remedy: weight of the cosine similarity between fine and coarse visual tokens (pushes them apart)."""
    entropy_loss_weight: float = 0.0
    """Remedy: weight of the hinge that asks fine attention to be ``entropy_margin`` nats sharper than coarse."""
    entropy_margin: float = 0.5
    """Margin (nats) of the entropy hinge. Entropies are taken over the full attention distribution (patches,
    prefix keys and the query's own key), so the hinge cannot be met by moving mass onto CLS."""
    attention_supervision_weight: float = 0.0
    """Weight of ``-log`` (attention mass of the fine pass inside the box of the object the text is about), when
    ``attention_targets`` are given (procedural data knows every box): an upper bound of what planning can
    learn, and a warm-up for it."""

    inference_mode: str = "two_pass"
    """Default reading at inference: ``"two_pass"`` (coarse plans, fine reads) or ``"coarse"`` (static query)."""
    tie_word_embeddings: bool = True
    """Tie the LLM's input and output embeddings (SmolLM2 does)."""

    def __post_init__(self, **kwargs):
        # A partial dict overrides the default shapes instead of replacing them (transformers would start from
        # the sub-model's own defaults, e.g. a ViT without register tokens).
        for name, defaults in (("vision_config", DINOV3_VITS16_SHAPES), ("text_config", SMOLLM2_135M_SHAPES)):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, {**defaults, **value})
        super().__post_init__(**kwargs)
        self.film_channels = list(self.film_channels)
        self.multi_scale_factors = list(self.multi_scale_factors)
        self.glimpse_budget_levels = list(self.glimpse_budget_levels)
        self._validate_knobs()

    def _validate_knobs(self) -> None:
        checks = {
            "foveation_mode": (self.foveation_mode in FOVEATION_MODES, f"one of {FOVEATION_MODES}"),
            "inference_mode": (self.inference_mode in INFERENCE_MODES, f"one of {INFERENCE_MODES}"),
            "target_source": (self.target_source in TARGET_SOURCES, f"one of {TARGET_SOURCES}"),
            "coarse_reading": (self.coarse_reading in COARSE_READINGS, f"one of {COARSE_READINGS}"),
            "query_dim": (self.query_dim > 0, "positive"),
            "query_init_std": (self.query_init_std > 0, "positive"),
            "query_attention_temperature": (self.query_attention_temperature > 0, "positive"),
            "query_attention_top_k": (self.query_attention_top_k >= 0, ">= 0"),
            "query_attention_prefix": (
                self.query_attention_prefix in PREFIX_ATTENTION,
                f"one of {PREFIX_ATTENTION}",
            ),
            "query_attention_hard": (self.query_attention_hard in HARD_ATTENTION, f"one of {HARD_ATTENTION}"),
            "gumbel_temperature": (self.gumbel_temperature > 0, "positive"),
            "num_queries_per_frame": (self.num_queries_per_frame >= 1, ">= 1"),
            "multi_query_output": (
                self.multi_query_output in MULTI_QUERY_OUTPUTS,
                f"one of {MULTI_QUERY_OUTPUTS}",
            ),
            "visual_token_norm": (isinstance(self.visual_token_norm, bool), "a bool (true or false)"),
            "prediction_passes": (self.prediction_passes in PREDICTION_PASSES, f"one of {PREDICTION_PASSES}"),
            "attention_supervision_weight": (self.attention_supervision_weight >= 0, ">= 0"),
            "reader_loss_weight": (self.reader_loss_weight >= 0, ">= 0"),
            "target_channels for target_source='motion'": (
                self.target_source != "motion" or self.target_channels == MOTION_TARGET_CHANNELS,
                f"{MOTION_TARGET_CHANNELS} (flow has two components)",
            ),
            "target_channels": (self.target_channels > 0, "positive"),
            "target_downsample": (self.target_downsample > 0, "positive"),
            "motion_search_radius": (self.motion_search_radius >= 1, ">= 1"),
            "film_channels": (
                len(self.film_channels) > 0 and min(self.film_channels) > 0,
                "non-empty, positive",
            ),
            "previous_target_dropout": (0.0 <= self.previous_target_dropout < 1.0, "in [0, 1)"),
            "lambda_coarse": (self.lambda_coarse >= 0, ">= 0"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                field = name.split()[0]
                raise ValueError(f"FoveatedVLMConfig.{name} must be {expected}, got {getattr(self, field)!r}")
        self._reader().validate(self)
        image_size = self.vision_config.image_size
        if image_size % self.target_downsample:
            raise ValueError(
                f"vision_config.image_size ({image_size}) must be divisible by target_downsample "
                f"({self.target_downsample})"
            )
        if self.foveation_mode == "dense":
            grid = image_size // self.vision_config.patch_size
            factor = round((grid * grid / self.dense_tokens_per_frame) ** 0.5)
            if factor < 1 or (grid % factor) or (grid // factor) ** 2 != self.dense_tokens_per_frame:
                raise ValueError(
                    f"dense_tokens_per_frame ({self.dense_tokens_per_frame}) must be a square that divides the "
                    f"{grid}x{grid} patch grid"
                )

    @property
    def target_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, h, w)`` of one frame's prediction target."""
        side = self.vision_config.image_size // self.target_downsample
        return (self.target_channels, side, side)

    @property
    def num_patches(self) -> int:
        """Patch tokens per frame."""
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    def _reader(self):
        """The configured reader class (``frame_reader``); a ``ValueError`` naming the readers otherwise."""
        try:
            from .readers_foveated import reader_class
        except ImportError:  # imported as a top-level module from a checkout of the repository
            from readers_foveated import reader_class
        return reader_class(self.frame_reader)

    @property
    def plan_dim(self) -> int:
        """Width of one plan of the configured reader (``query_dim`` for query plans)."""
        return self._reader().plan_width(self)

    @property
    def tokens_per_plan(self) -> int:
        """Visual tokens the configured reader reads with one plan (1 for the query reader)."""
        return self._reader().tokens_per_plan(self)

    @property
    def tokens_per_frame(self) -> int:
        """LLM tokens that stand for one frame: 1 when foveated (``num_queries_per_frame * tokens_per_plan`` with
        ``multi_query_output="tokens"``), ``dense_tokens_per_frame`` when dense."""
        if self.foveation_mode == "dense":
            return self.dense_tokens_per_frame
        if self.multi_query_output == "tokens":
            return self.num_queries_per_frame * self.tokens_per_plan
        return 1


__all__ = ["FoveatedVLMConfig"]
