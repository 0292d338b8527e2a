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

try:
    from .reader_config_foveated import ReaderConfig, adopt_legacy_reader_knobs, reader_config_class
except ImportError:  # imported as a top-level module from a checkout of the repository
    from reader_config_foveated import ReaderConfig, adopt_legacy_reader_knobs, reader_config_class  # noqa: E402

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
TARGET_SOURCES = ("downsampled_frames", "vae")
COARSE_READINGS = ("static_query", "mean_pool")
MULTI_QUERY_OUTPUTS = ("mean", "tokens")
STUDIES_RESULTS = "studies/named_object/RESULTS.md"
"""Where the measured effect of every switch that left the Hub config is recorded."""
REMOVED_SWITCHES = {
    "separate_prediction_heads": False,
    "query_skip_to_head": False,
    "predict_delta": False,
    "contrastive_loss_weight": 0.0,
    "entropy_loss_weight": 0.0,
    "query_attention_temperature": 1.0,
    "query_attention_top_k": 0,
    "query_attention_prefix": "attend",
    "query_attention_hard": "soft",
}
"""Remedy switches of the proposal's author (seed 004) that left the Hub config after they were measured, with the
value at which each did nothing. A checkpoint that carries one at that value loads; any other value is refused
with a pointer to the results page, since today's model would silently compute something else."""
INERT_REMOVED_KNOBS = ("delta_l1_weight", "entropy_margin", "gumbel_temperature", "motion_search_radius")
"""Knobs that only acted through a removed switch (``predict_delta``, the entropy hinge, Gumbel attention, the
motion target): old checkpoints carry them, and with their switch off they never acted."""
PREDICTION_PASSES = ("both", "coarse")


class FoveatedVLMConfig(PreTrainedConfig):
    """Configuration of :class:`FoveatedVLMForConditionalGeneration`.

    Defaults give the full-size model of the proposal: DINOv3 ViT-S/16 at 256 px with 4 register tokens and
    SmolLM2-135M-Instruct. Each field below is documented by the string that follows it. A frame reader's own
    knobs live in ``reader_config`` and are validated by the reader (``reader_base_foveated.FrameReader.Settings``).

    Example:
        >>> config = FoveatedVLMConfig(frame_reader="multi_scale", reader_config={"multi_scale_factors": [1, 2]})
        >>> config.reader_settings.multi_scale_factors
        [1, 2]
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
    """How a frame is read from the LLM's plan (``readers_foveated.FRAME_READERS``). ``"query"``: the query token
    goes through every encoder layer against the frame's cached patch K/V (the proposal); ``"multi_scale"`` and
    ``"cascade"`` are the other readers a checkpoint may use; study readers register themselves on import of
    ``studies.readers``. The reader fixes the plan's width (``plan_dim``) and the visual tokens of one plan."""
    reader_config: dict | None = None
    """The reader's own knobs, by name (``{"multi_scale_factors": [1, 2]}``); every knob the reader does not get
    here takes its default. Validated by the reader: an unknown name or a bad value is a ``ValueError``."""
    query_dim: int = 384
    """Width of the query vectors the LLM predicts (and of ``q_static``/``q_init``) for readers whose plan is a
    query (``plan_dim`` is the plan width of the configured reader)."""
    coarse_reading: str = "static_query"
    """How pass 1 reads a frame: ``"static_query"`` (the learned ``q_static``) or ``"mean_pool"`` (the average of
    the final patch states: the proposal's ablation without spatial selection)."""
    query_init_std: float = 1.0
    """Std of the learned static and initial queries. Tiny queries (0.02) give identical attention maps."""
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
    """Next-frame target: ``"vae"`` (SD-VAE latent mean x scaling factor) or ``"downsampled_frames"`` (the frame
    area-downsampled by ``target_downsample``, in [-1, 1])."""
    target_channels: int = 3
    """Channels of one target (3 for downsampled RGB frames, 4 for an SD-VAE latent)."""
    target_downsample: int = 8
    """Spatial factor between a frame and its target (the SD-VAE's 8; frames are area-downsampled by it)."""
    vae_name_or_path: str | None = None
    """Hub id or path of the ``diffusers.AutoencoderKL`` that makes (and decodes) ``vae`` targets."""
    film_hidden_dim: int = 512
    """Hidden width of the MLP that maps an LLM state to FiLM scale and shift."""
    film_channels: list[int] | tuple[int, ...] = (64, 128, 256)
    """Conv widths of the prediction head's encoder (mirrored by its decoder); the last is FiLM-modulated."""
    previous_target_dropout: float = 0.0
    """Dropout probability on the previous target fed to the prediction head during training (the LLM must then
    carry where things are to predict the next frame)."""

    lambda_coarse: float = 1.0
    """Weight of the coarse pass's losses (prediction and caption) relative to the fine pass."""
    prediction_loss_weight: float = 1.0
    """Weight of the next-frame prediction losses in the total loss."""
    caption_loss_weight: float = 1.0
    """Weight of the caption cross-entropy in the total loss."""
    attention_supervision_weight: float = 0.0
    """Weight of ``-log`` (attention mass of the fine pass inside the box of the object the text is about), when
    ``attention_targets`` are given (procedural data knows every box): an upper bound of what planning can
    learn, and a warm-up for it. Uses box labels: 0 keeps a run label-free."""

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
        self.reader_config = adopt_legacy_reader_knobs(self.frame_reader, self.reader_config, kwargs)
        _refuse_removed_switches(kwargs)
        super().__post_init__(**kwargs)
        self.film_channels = list(self.film_channels)
        self._validate_knobs()

    def _validate_knobs(self) -> None:
        checks = {
            "foveation_mode": (self.foveation_mode in FOVEATION_MODES, f"one of {FOVEATION_MODES}"),
            "inference_mode": (self.inference_mode in INFERENCE_MODES, f"one of {INFERENCE_MODES}"),
            "target_source": (self.target_source in TARGET_SOURCES, f"one of {TARGET_SOURCES}"),
            "coarse_reading": (self.coarse_reading in COARSE_READINGS, f"one of {COARSE_READINGS}"),
            "query_dim": (self.query_dim > 0, "positive"),
            "query_init_std": (self.query_init_std > 0, "positive"),
            "num_queries_per_frame": (self.num_queries_per_frame >= 1, ">= 1"),
            "multi_query_output": (
                self.multi_query_output in MULTI_QUERY_OUTPUTS,
                f"one of {MULTI_QUERY_OUTPUTS}",
            ),
            "visual_token_norm": (isinstance(self.visual_token_norm, bool), "a bool (true or false)"),
            "prediction_passes": (self.prediction_passes in PREDICTION_PASSES, f"one of {PREDICTION_PASSES}"),
            "attention_supervision_weight": (self.attention_supervision_weight >= 0, ">= 0"),
            "target_channels": (self.target_channels > 0, "positive"),
            "target_downsample": (self.target_downsample > 0, "positive"),
            "film_channels": (
                len(self.film_channels) > 0 and min(self.film_channels) > 0,
                "non-empty, positive",
            ),
            "previous_target_dropout": (0.0 <= self.previous_target_dropout < 1.0, "in [0, 1)"),
            "lambda_coarse": (self.lambda_coarse >= 0, ">= 0"),
        }
        if self.target_source == "motion":
            raise ValueError(
                f"target_source='motion' (block-matched motion targets) was removed; see {STUDIES_RESULTS}"
            )
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"FoveatedVLMConfig.{name} must be {expected}, got {getattr(self, name)!r}")
        self.reader_settings.validate(self)
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

    @property
    def reader_settings(self) -> ReaderConfig:
        """The configured reader's knobs: its :class:`ReaderConfig` filled from ``reader_config``."""
        return reader_config_class(self.frame_reader).from_knobs(self.frame_reader, self.reader_config)

    @property
    def plan_dim(self) -> int:
        """Width of one plan of the configured reader (``query_dim`` for query plans)."""
        return self.reader_settings.plan_width(self)

    @property
    def tokens_per_plan(self) -> int:
        """Visual tokens the configured reader reads with one plan (1 for the query reader)."""
        return self.reader_settings.tokens_per_plan(self)

    @property
    def tokens_per_frame(self) -> int:
        """LLM tokens that stand for one frame: 1 when foveated (``num_queries_per_frame * tokens_per_plan`` with
        ``multi_query_output="tokens"``), ``dense_tokens_per_frame`` when dense."""
        if self.foveation_mode == "dense":
            return self.dense_tokens_per_frame
        if self.multi_query_output == "tokens":
            return self.num_queries_per_frame * self.tokens_per_plan
        return 1


def _refuse_removed_switches(kwargs: dict) -> None:
    """Drop the removed switches that an old checkpoint carries at their inert value (``REMOVED_SWITCHES``,
    ``INERT_REMOVED_KNOBS``); a ``ValueError`` for one set to anything else, or for the removed motion target."""
    for name, inert in REMOVED_SWITCHES.items():
        if name in kwargs and kwargs.pop(name) != inert:
            raise ValueError(
                f"FoveatedVLMConfig.{name} was removed from the model (it is {inert!r} in every released "
                f"recipe); what it gave when measured is in {STUDIES_RESULTS}. This checkpoint needs the code "
                "it was trained with."
            )
    for name in INERT_REMOVED_KNOBS:
        kwargs.pop(name, None)


__all__ = ["FoveatedVLMConfig"]
