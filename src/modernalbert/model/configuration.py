"""Configuration of ModernALBERT: a recursive (parameter-shared) encoder with a Mixture of LoRAs (MoL).

Recursion vocabulary
--------------------
``num_hidden_layers`` (L) is the *effective* depth: how many times a transformer block is applied.
``group_depth`` (G) consecutive layers share one block, so there are K = L / G unique blocks ("groups"), and
effective layer ``i`` runs block ``i // G``. Worked example: L = 12, G = 3 gives K = 4 groups; layers 0-2 run
group 0, layers 3-5 group 1, 6-8 group 2 and 9-11 group 3. G = 1 is a fully parameterised encoder (no sharing),
G = L is ALBERT's single shared block.

In ALBERT's vocabulary, K is ``num_hidden_groups`` (exposed here as a read-only property) and ALBERT's
``inner_group_num`` is always 1: a group is one block, repeated G times.

Attention pattern
-----------------
As in ModernBERT, every *effective* layer attends either globally (``"full_attention"``) or through a sliding window
(``"sliding_attention"``): ``layer_types`` holds one type per effective layer (transformers' 5.x form), by default
ModernBERT's pattern, global at every ``global_attn_every_n_layers``-th layer (3) counting from layer 0 and local
elsewhere. A local layer lets each token attend to the tokens at most ``local_attention // 2`` positions away on either
side (``local_attention = 128``: 64 each way, the token itself included, so 129 keys at most; ModernBERT's
``sliding_window`` property is that half-width). Each type has its own RoPE in ``rope_parameters``, keyed by layer
type: base 160,000 for global layers and 10,000 for local ones (ModernBERT's defaults).

The pattern follows effective layers, not blocks, so one shared block attends globally at one recursion position and
locally at another (attention has no parameter that depends on its type). Worked example: L = 12, G = 3,
``global_attn_every_n_layers=3`` gives global layers 0, 3, 6 and 9: each of the K = 4 blocks attends globally at its
first recursion position and locally at its other two. With L = 16, G = 2 (the ``tiny`` preset) the global layers are
0, 3, 6, 9, 12 and 15: block 0 runs global then local, block 1 local then global, block 2 local twice.

FFN variants
------------
Every group owns one GeGLU FFN. ``ffn_variants`` (one entry per group) says what modulates it:

* ``"glu"``: the plain GeGLU FFN.
* ``"mol"``: Mixture of LoRAs: E routed LoRA experts on both FFN matrices, top-k per token (the paper).
* ``"rrt"``: Relaxed Recursive Transformer baseline: one fixed, non-routed LoRA per recursion position.
* ``"moa"``: Mixture-of-Adapters baseline: E routed bottleneck adapters applied after the FFN.
* ``"lora"``: one fixed low-rank adapter (rank ``adapter_rank``) on both FFN matrices: what merging the experts
  of a MoL group produces (``modernalbert.merge_experts``).

``mol_groups`` is the short form: the listed groups get ``"mol"``, the others ``"glu"``.

Strictness
----------
The config is a typed ``@strict`` dataclass like transformers' own (``ModernBertConfig``): every field is checked for
its type and range on construction and on assignment, and the rules that tie fields together run as ``validate_*``
validators after construction and before saving; failures are ``ValueError`` naming the field and value. Unknown
keyword arguments are refused with the nearest valid name (a typo must never silently fall back to a default); the
keys transformers itself passes or sets on a config (``num_labels``, ``attn_implementation``, ``torch_dtype``,
``use_cache``, ...) are accepted. A ``config.json`` written by ``save_pretrained`` must hold every field that shapes
the model's outputs: a missing one is refused, naming the file.
"""

import copy
import difflib
import functools
import os
from collections.abc import Iterable
from dataclasses import fields
from typing import Any, ClassVar, Literal

from huggingface_hub.dataclasses import strict, validated_field
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.utils import logging

FFN_VARIANTS = ("glu", "mol", "rrt", "moa", "lora")
# ModernBERT's layer types (transformers' names) and the RoPE base of each (ModernBertConfig.default_theta).
LAYER_TYPES = ("full_attention", "sliding_attention")
DEFAULT_ROPE_THETA = {"full_attention": 160_000.0, "sliding_attention": 10_000.0}
# ModernBERT's default pattern: global attention every third effective layer, a window of 128 tokens elsewhere.
DEFAULT_GLOBAL_ATTN_EVERY_N_LAYERS = 3
# ModernBERT's pattern, written out in the presets whose teacher is ModernBERT.
_MODERNBERT_ATTENTION = dict(global_attn_every_n_layers=3, local_attention=128)
MOL_MIXING = ("output", "weight")
POOLING = ("cls", "mean")

# ModernBERT tokenizer ids (answerdotai/ModernBERT-base); the defaults of every 50368-vocabulary preset.
_MODERNBERT_TOKENS = dict(
    vocab_size=50368,
    pad_token_id=50283,
    bos_token_id=50281,
    eos_token_id=50282,
    cls_token_id=50281,
    sep_token_id=50282,
    mask_token_id=50284,
)
# bert-base-uncased WordPiece ids (the packaged all-MiniLM-L6-v2 teacher's tokenizer).
_BERT_TOKENS = dict(
    vocab_size=30522,
    pad_token_id=0,
    bos_token_id=101,
    eos_token_id=102,
    cls_token_id=101,
    sep_token_id=102,
    mask_token_id=103,
)

PRESETS: dict[str, dict[str, Any]] = {
    # --- The paper's family. Widths, heads, E, k, r, alpha and MoL placement are reconstructed from the
    # authors' published configs and secondary sources, NOT confirmed by the paper's text. medium and base
    # follow the DESIGN table (L, G). tiny and large are tuned (our choice) so that the MaskedLM checkpoint
    # lands in the paper's 50M-120M range: tiny L = 16 instead of 14 (no G divides 14 into a 45-55M model),
    # large G = 6 instead of 8 (K = 8 groups; G = 8 gives 85M). See README "Presets".
    # Attention (our choice, the paper does not say): ModernBERT's pattern over the effective layers (global every
    # third layer, a 128-token window elsewhere, RoPE bases 160,000 / 10,000), since the teacher is ModernBERT.
    "tiny": dict(
        **_MODERNBERT_TOKENS,
        **_MODERNBERT_ATTENTION,
        hidden_size=768,
        num_attention_heads=12,
        intermediate_size=1152,
        embedding_size=128,
        num_hidden_layers=16,
        group_depth=2,
        mol_groups=[5, 6],
        num_experts=4,
        num_experts_per_tok=2,
        lora_rank=16,
        lora_alpha=32.0,
    ),
    "medium": dict(
        **_MODERNBERT_TOKENS,
        **_MODERNBERT_ATTENTION,
        hidden_size=1024,
        num_attention_heads=16,
        intermediate_size=2624,
        embedding_size=128,
        num_hidden_layers=12,
        group_depth=3,
        mol_groups=[2, 3],
        num_experts=8,
        num_experts_per_tok=2,
        lora_rank=16,
        lora_alpha=32.0,
    ),
    "base": dict(
        **_MODERNBERT_TOKENS,
        **_MODERNBERT_ATTENTION,
        hidden_size=1024,
        num_attention_heads=16,
        intermediate_size=2624,
        embedding_size=128,
        num_hidden_layers=24,
        group_depth=6,
        mol_groups=[2, 3],
        num_experts=8,
        num_experts_per_tok=2,
        lora_rank=16,
        lora_alpha=32.0,
    ),
    "large": dict(
        **_MODERNBERT_TOKENS,
        **_MODERNBERT_ATTENTION,
        hidden_size=1024,
        num_attention_heads=16,
        intermediate_size=2624,
        embedding_size=128,
        num_hidden_layers=48,
        group_depth=6,
        mol_groups=[2, 3, 4, 5],
        num_experts=8,
        num_experts_per_tok=2,
        lora_rank=16,
        lora_alpha=32.0,
    ),
    # --- Our small presets for CPU demos and tests (not the paper's).
    # "mini": width 384 and the BERT WordPiece vocabulary, to match the packaged all-MiniLM-L6-v2 teacher; global
    # attention in every layer, as that teacher (a BERT) attends, over its 512-token context.
    "mini": dict(
        **_BERT_TOKENS,
        global_attn_every_n_layers=1,
        hidden_size=384,
        num_attention_heads=6,
        intermediate_size=768,
        embedding_size=128,
        num_hidden_layers=6,
        group_depth=2,
        mol_groups=[1, 2],
        num_experts=4,
        num_experts_per_tok=2,
        lora_rank=8,
        lora_alpha=16.0,
        max_position_embeddings=512,
    ),
    # "test": a few-hundred-thousand-parameter model for unit tests. ModernBERT's pattern (layers 0 and 3 global,
    # 1 and 2 local: each of its two blocks runs both types) with an 8-token window (4 each way), so that the short
    # sequences of the tests reach past the window and every test exercises mixed layer types.
    "test": dict(
        global_attn_every_n_layers=3,
        local_attention=8,
        vocab_size=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
        mask_token_id=3,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=96,
        embedding_size=32,
        num_hidden_layers=4,
        group_depth=2,
        mol_groups=[1],
        num_experts=4,
        num_experts_per_tok=2,
        lora_rank=4,
        lora_alpha=8.0,
        max_position_embeddings=256,
    ),
}


# Keyword arguments that are not fields but that transformers passes to, or sets on, every config (PreTrainedConfig's
# own keys, what from_pretrained / Trainer / pipelines / PEFT add, and the legacy ``rope_theta`` of configs saved
# before ``rope_parameters``): accepted, and handled by PreTrainedConfig.
STANDARD_KWARGS = frozenset({
    "num_labels", "torch_dtype", "name_or_path", "_name_or_path", "_commit_hash", "model_type", "output_attentions",
    "attn_implementation", "experts_implementation", "_attn_implementation_internal",
    "_experts_implementation_internal", "per_layer_config", "tie_last_hidden_states", "rope_scaling", "rope_theta",
    "auto_map", "custom_pipelines", "quantization_config", "fusion_config", "use_cache", "gradient_checkpointing",
    "finetuning_task", "tokenizer_class",
    # ModernBERT's keyword for its attention pattern: it seeds ``layer_types`` and is not stored.
    "global_attn_every_n_layers",
})
# Fields a saved config.json may lack, because no output depends on them (``output_router_logits``) or because they
# may come under their legacy name (``rope_parameters`` as ``rope_theta``).
OPTIONAL_WHEN_LOADING = frozenset({"output_router_logits", "rope_parameters"})
# Fields that configs saved before the attention pattern existed lack: such a config loads with global attention in
# every layer, what its model computed (``local_attention`` is then unused). A config that has ``layer_types`` must
# have ``local_attention`` too.
ATTENTION_FIELDS = ("layer_types", "local_attention")
logger = logging.get_logger(__name__)


def _at_least(minimum: float, *, strict_bound: bool = False, optional: bool = False):
    """Field validator: a number >= ``minimum`` (> when ``strict_bound``); ``None`` allowed when ``optional``."""

    def check(value: Any) -> None:
        if value is None and optional:
            return
        if value < minimum or (strict_bound and value == minimum):
            raise ValueError(f"expected a number {'>' if strict_bound else '>='} {minimum}, got {value!r}")

    return check


def _unit_interval(value: Any) -> None:
    """Field validator: a number in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected a number in [0, 1], got {value!r}")


def _probability(value: Any) -> None:
    """Field validator: a dropout-like probability in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"expected a probability in [0, 1), got {value!r}")


def _activation(value: Any) -> None:
    if value not in ACT2FN:
        raise ValueError(f"unknown activation {value!r}: use a name from transformers.activations.ACT2FN, e.g. "
                         "'gelu', 'gelu_pytorch_tanh', 'silu'")


def _field(validator, default: Any) -> Any:
    return validated_field(validator, default=default)


@strict
class ModernAlbertConfig(PreTrainedConfig):
    r"""Configuration of a ModernALBERT encoder (see the module docstring for the recursion vocabulary).

    Args:
        vocab_size: Vocabulary size (50368 for the ModernBERT tokenizer).
        embedding_size: Width of the factorised token embedding (ALBERT), projected to ``hidden_size`` by a
            bias-free linear map. ``None`` disables the factorisation (embedding width = ``hidden_size``).
        hidden_size: Model width d.
        num_attention_heads: Attention heads h; ``hidden_size`` must be divisible by it.
        intermediate_size: GeGLU width f (``Wi`` maps d to 2f).
        num_hidden_layers: Effective depth L.
        group_depth: Layers per shared block G; L must be divisible by G.
        hidden_activation: Activation of the GeGLU gate branch (a ``transformers.activations.ACT2FN`` name).
        layer_types: ``"full_attention"`` (global) or ``"sliding_attention"`` (local) for each of the L *effective*
            layers (see the module docstring: a shared block takes the type of each position it runs at). Default:
            ModernBERT's pattern from ``global_attn_every_n_layers``.
        global_attn_every_n_layers: ModernBERT's keyword (not stored): effective layer i attends globally when
            ``i % n == 0`` and locally otherwise; 3 by default (ModernBERT-base and -large), 1 for global attention
            everywhere. Only used to build ``layer_types`` when that is not given; both together must agree.
        local_attention: Window of the local layers in tokens (ModernBERT's field and default, 128): a token
            attends to the tokens at most ``local_attention // 2`` positions away (``config.sliding_window``), on
            either side, in its row of the batch (transformers' bidirectional sliding-window mask).
        rope_parameters: RoPE per layer type, transformers' 5.x form as in ``ModernBertConfig``:
            ``{"full_attention": {"rope_type": ..., "rope_theta": ...}, "sliding_attention": {...}}``; default
            bases 160,000 (global) and 10,000 (local), ModernBERT's. Any transformers RoPE type (``linear``,
            ``dynamic``, ``yarn``, ...) applies per layer type. A flat dict (the form saved before layer types, or
            the legacy ``rope_theta``) is the RoPE of every layer type (transformers' backward-compatible reading).
        max_position_embeddings: The pretraining context length (scaled RoPE types extrapolate beyond it).
        norm_eps: LayerNorm epsilon (all norms are bias-free).
        initializer_range: Std of the truncated-normal init; output projections use
            ``initializer_range / sqrt(2 * num_hidden_layers)`` with the *effective* depth.
        initializer_cutoff_factor: Truncation of the normal init, in stds.
        embedding_dropout: Dropout after the embedding norm.
        attention_dropout: Dropout on attention probabilities and the attention output.
        mlp_dropout: Dropout inside the FFN.
        classifier_dropout: Dropout before classifier layers.
        classifier_pooling: ``"cls"`` (first real token) or ``"mean"`` (mean over real tokens).
        classifier_activation: Activation of the prediction heads.
        mol_groups: 0-based groups whose FFN gets a Mixture of LoRAs (short form of ``ffn_variants``).
        ffn_variants: One of ``"glu" | "mol" | "rrt" | "moa" | "lora"`` per group; overrides ``mol_groups``.
        num_experts: E, experts per MoL / MoA group.
        num_experts_per_tok: k, experts routed per token.
        lora_rank: r, rank of every LoRA expert (and the MoA bottleneck width, our choice).
        lora_alpha: LoRA scale numerator: experts are scaled by ``lora_alpha / lora_rank``.
        mol_mixing: ``"output"`` (each expert makes its own FFN, outputs mixed: the paper's equation, default) or
            ``"weight"`` (experts mix in weight space, one nonlinearity; dense executor).
        router_jitter: Switch-style multiplicative input jitter on the router input during training (ours: 0).
        router_aux_loss_coef: Weight of the Switch load-balance loss added to the loss whenever labels are given
            (ours: 0.01).
        router_z_loss_coef: Weight of the router z-loss added to the loss whenever labels are given (ours: 0.001).
        router_ema_decay: Decay of the per-group moving average of routed probability mass per expert, kept
            during training and saved with the model; merging with ``weights="router"`` reads it (ours: 0.99).
        output_router_logits: Return the router outputs (``router_logits``, the router losses, expert usage) with
            every forward, as transformers' MoE models (Mixtral, Switch) do; off by default so that the outputs are
            what any encoder returns. The router losses enter the loss whenever labels are given, either way.
        adapter_rank: Rank of the ``"lora"`` variant's adapter (set by merging).
        merge_info: How a merged model was merged (set by ``merge_experts``); ``None`` otherwise.
        sparse_prediction: MaskedLM computes logits only at labelled positions when labels are given.
        mask_token_id: Id of the mask token (used by MLM data collation).
        cls_token_id: Id of the CLS token.
        sep_token_id: Id of the SEP token.

    Special-token ids outside the vocabulary are accepted with transformers' warning, as ``ModernBertConfig``
    accepts them (a small test vocabulary keeps the ModernBERT defaults).

    The attention implementation is chosen the Hugging Face way (``attn_implementation=`` on the config or on
    ``from_pretrained``, or ``model.set_attn_implementation``): ``"sdpa"`` (default, exact reference),
    ``"eager"`` (returns attention probabilities), ``"flash_attention_2"`` (varlen kernel on unpadded tokens; needs
    the ``flash-attn`` package and a GPU), or any implementation registered in transformers' ``AttentionInterface``.

    Raises:
        ValueError: Naming the field and value: an unknown keyword (with the nearest valid one), a field of the wrong
            type or out of range (also on assignment), or fields that do not fit together (e.g. a depth that the
            group depth does not divide, contradictory ``mol_groups`` / ``ffn_variants``).

    Example:
        >>> from modernalbert import ModernAlbertConfig
        >>> config = ModernAlbertConfig.from_preset("tiny", num_experts=8)
        >>> config.num_hidden_groups, config.ffn_variants[5]
        (8, 'mol')
    """

    model_type = "modernalbert"
    default_theta = DEFAULT_ROPE_THETA["full_attention"]
    # transformers reads RoPE parameters nested under these keys (both, whatever layer_types holds).
    _rope_type_labels = LAYER_TYPES
    # What Trainer's evaluation leaves out of the logits it hands to compute_metrics.
    keys_to_ignore_at_inference: ClassVar[list[str]] = [
        "router_logits", "router_aux_loss", "router_z_loss", "expert_usage", "router_probs",
    ]

    vocab_size: int = _field(_at_least(1), 50368)
    embedding_size: int | None = _field(_at_least(1, optional=True), 128)
    hidden_size: int = _field(_at_least(1), 768)
    num_attention_heads: int = _field(_at_least(1), 12)
    intermediate_size: int = _field(_at_least(1), 1152)
    num_hidden_layers: int = _field(_at_least(1), 16)
    group_depth: int = _field(_at_least(1), 2)
    hidden_activation: str = _field(_activation, "gelu")
    layer_types: list[Literal["full_attention", "sliding_attention"]] | None = None
    local_attention: int = _field(_at_least(1), 128)
    rope_parameters: dict | None = None
    max_position_embeddings: int = _field(_at_least(1), 8192)
    norm_eps: float = _field(_at_least(0.0, strict_bound=True), 1e-5)
    initializer_range: float = _field(_at_least(0.0, strict_bound=True), 0.02)
    initializer_cutoff_factor: float | int = _field(_at_least(0.0, strict_bound=True), 2.0)
    embedding_dropout: float | int = _field(_probability, 0.0)
    attention_dropout: float | int = _field(_probability, 0.0)
    mlp_dropout: float | int = _field(_probability, 0.0)
    classifier_dropout: float | int = _field(_probability, 0.0)
    classifier_pooling: Literal["cls", "mean"] = "cls"
    classifier_activation: str = _field(_activation, "gelu")
    mol_groups: list[int] | None = None
    ffn_variants: list[Literal["glu", "mol", "rrt", "moa", "lora"]] | None = None
    num_experts: int = _field(_at_least(1), 4)
    num_experts_per_tok: int = _field(_at_least(1), 2)
    lora_rank: int = _field(_at_least(1), 16)
    lora_alpha: float | int = _field(_at_least(0.0, strict_bound=True), 32.0)
    mol_mixing: Literal["output", "weight"] = "output"
    router_jitter: float | int = _field(_probability, 0.0)
    router_aux_loss_coef: float | int = _field(_at_least(0.0), 0.01)
    router_z_loss_coef: float | int = _field(_at_least(0.0), 0.001)
    router_ema_decay: float | int = _field(_unit_interval, 0.99)
    output_router_logits: bool = False
    adapter_rank: int | None = _field(_at_least(1, optional=True), None)
    merge_info: dict | None = None
    sparse_prediction: bool = False
    pad_token_id: int | None = 50283
    bos_token_id: int | None = 50281
    eos_token_id: int | None = 50282
    cls_token_id: int | None = 50281
    sep_token_id: int | None = 50282
    mask_token_id: int | None = 50284
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        self.check_keys(kwargs, where="ModernAlbertConfig")
        self._resolve_ffn_variants()
        self._resolve_layer_types(kwargs.pop("global_attn_every_n_layers", None))
        super().__post_init__(**kwargs)

    def convert_rope_params_to_dict(self, **kwargs: Any) -> dict[str, Any]:
        """``rope_parameters`` in the nested per-layer-type form (see the class docstring); the legacy ``rope_theta``
        and ``rope_scaling`` keywords, when given without ``rope_parameters``, form the flat dict of every type."""
        rope_scaling, rope_theta = kwargs.pop("rope_scaling", None), kwargs.pop("rope_theta", None)
        params = self.rope_parameters
        if params is None and (rope_scaling is not None or rope_theta is not None):
            params = {**(rope_scaling or {}), **({} if rope_theta is None else {"rope_theta": rope_theta})}
        self.rope_parameters = nested_rope_parameters(params)
        self.standardize_rope_params()
        return kwargs

    # ------------------------------------------------------------------------------------------------ derived
    @property
    def num_hidden_groups(self) -> int:
        """K, the number of unique blocks (ALBERT's ``num_hidden_groups``)."""
        return self.num_hidden_layers // self.group_depth

    @property
    def head_dim(self) -> int:
        """dh = d / h."""
        return self.hidden_size // self.num_attention_heads

    @property
    def lora_scale(self) -> float:
        """s = alpha / r, the LoRA scale."""
        return self.lora_alpha / self.lora_rank

    def group_of_layer(self, layer: int) -> int:
        """The group (unique block) that effective layer ``layer`` runs."""
        return layer // self.group_depth

    @property
    def sliding_window(self) -> int:
        """Half-width of the local layers' window, ``local_attention // 2`` (ModernBERT's property, read by
        transformers' sliding-window masks): a token attends to those at most this many positions away."""
        return self.local_attention // 2

    @sliding_window.setter
    def sliding_window(self, value: int) -> None:
        self.local_attention = 2 * value

    def set_attention_pattern(self, layer_types: list[str], local_attention: int,
                              rope_parameters: dict[str, Any] | None) -> None:
        """Set the attention pattern (layer types, window, RoPE per type) in place and validate it.

        Raises:
            ValueError: Naming the field: a wrong number of layer types, an unknown type, a bad window or RoPE.
        """
        self.layer_types = list(layer_types)
        self.local_attention = local_attention
        self.rope_parameters = nested_rope_parameters(copy.deepcopy(rope_parameters))
        self.standardize_rope_params()
        self.validate()

    # -------------------------------------------------------------------------------------------- keys
    @classmethod
    def valid_keys(cls) -> set[str]:
        """Every keyword the config accepts: its fields and transformers' standard keys (``STANDARD_KWARGS``)."""
        return {f.name for f in fields(cls)} | STANDARD_KWARGS

    @classmethod
    def check_keys(cls, keys: Iterable[str], where: str) -> None:
        """Refuse keys that are neither fields nor transformers' standard keys, naming the nearest valid one.

        Args:
            keys: The keys to check (e.g. a recipe's ``model.overrides``).
            where: What holds them, for the message (``"ModernAlbertConfig"``, ``"recipe model.overrides"``).

        Raises:
            ValueError: An unknown key, e.g. ``lora_rnak`` (did you mean ``lora_rank``?).
        """
        valid = cls.valid_keys()
        unknown = sorted(k for k in keys if k not in valid)
        if unknown:
            hints = []
            for key in unknown:
                near = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
                hints.append(f"{key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
            raise ValueError(f"{where}: unknown key(s) {', '.join(hints)}. Valid keys are the ModernAlbertConfig "
                             "fields (see its docstring) and transformers' standard config keys.")

    @staticmethod
    def _is_saved(config_dict: dict[str, Any]) -> bool:
        """Whether a dict was written by ``save_pretrained`` (which always writes ``transformers_version``)."""
        return config_dict.get("model_type") == ModernAlbertConfig.model_type and "transformers_version" in config_dict

    @classmethod
    def check_saved_keys(cls, config_dict: dict[str, Any], source: str = "config.json") -> None:
        """Refuse a config written by ``save_pretrained`` that lacks a field: its default would silently change the
        model's outputs. Dicts not written by ``save_pretrained`` (no ``transformers_version``) are not checked.

        Raises:
            ValueError: Naming ``source`` and the missing keys.
        """
        if not cls._is_saved(config_dict):
            return
        own = {f.name for f in fields(cls)} - {f.name for f in fields(PreTrainedConfig)}
        optional = OPTIONAL_WHEN_LOADING | (set() if "layer_types" in config_dict else set(ATTENTION_FIELDS))
        missing = sorted(k for k in own - optional if k not in config_dict)
        if "rope_parameters" not in config_dict and "rope_theta" not in config_dict:
            missing.append("rope_parameters")
        if missing:
            raise ValueError(
                f"{source} lacks {missing}: a saved ModernAlbert config holds every field, and a default in place of "
                "the trained value would change the model's outputs. Restore the key(s) from the training run's "
                "config (save_pretrained writes them all)."
            )

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict[str, Any]:
        config_dict = super()._dict_from_json_file(json_file)
        cls.check_saved_keys(config_dict, source=str(json_file))
        return config_dict

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        """transformers' ``from_dict``, refusing an incomplete saved config (see :meth:`check_saved_keys`).

        Keys of a *saved* config that are not ours are kept as attributes, with a warning rather than an error:
        transformers' own tools set attributes on the configs they save (e.g. Trainer's ``use_cache``), and the
        saved fields, all present, still determine the model. Constructor keywords are refused instead.
        """
        extra = {}
        if cls._is_saved(config_dict):
            cls.check_saved_keys(config_dict)
            if "layer_types" not in config_dict:
                # Saved before the attention pattern existed: its model attended globally in every layer.
                config_dict = {**config_dict, "layer_types": ["full_attention"] * config_dict["num_hidden_layers"]}
            valid = cls.valid_keys()
            extra = {k: v for k, v in config_dict.items() if k not in valid}
            if extra:
                logger.warning(f"The saved ModernAlbert config holds keys that are not config fields, kept as "
                               f"attributes the model does not read: {sorted(extra)}.")
                config_dict = {k: v for k, v in config_dict.items() if k not in extra}
        result = super().from_dict(config_dict, **kwargs)
        config = result[0] if isinstance(result, tuple) else result
        for key, value in extra.items():
            setattr(config, key, value)
        return result

    # ----------------------------------------------------------------------------------------- validation
    def _resolve_ffn_variants(self) -> None:
        if self.num_hidden_layers % self.group_depth:
            return  # validate_recursion reports the bad depth
        groups = self.num_hidden_layers // self.group_depth
        if self.ffn_variants is not None:
            derived = [i for i, v in enumerate(self.ffn_variants) if v == "mol"]
            if self.mol_groups is not None and sorted(self.mol_groups) != derived:
                raise ValueError(
                    f"ModernAlbertConfig.mol_groups={self.mol_groups!r} contradicts ffn_variants="
                    f"{self.ffn_variants!r} (MoL at groups {derived}): pass only one of them."
                )
            self.mol_groups = derived
            return
        mol = [] if self.mol_groups is None else list(self.mol_groups)
        if any(not 0 <= g < groups for g in mol) or len(set(mol)) != len(mol):
            raise ValueError(f"ModernAlbertConfig.mol_groups={self.mol_groups!r} is invalid: expected unique 0-based "
                             f"group indices in [0, {groups - 1}].")
        self.mol_groups = sorted(mol)
        self.ffn_variants = ["mol" if g in mol else "glu" for g in range(groups)]

    def validate_architecture(self) -> None:
        """Heads divide the width, and RoPE needs an even head size (runs before transformers' RoPE check)."""
        super().validate_architecture()
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads}: hidden_size={self.hidden_size} must "
                             "be divisible by it.")
        if self.head_dim % 2:
            raise ValueError(f"num_attention_heads={self.num_attention_heads}: RoPE needs an even head size, got "
                             f"hidden_size / heads = {self.head_dim}.")
        for layer_type in LAYER_TYPES:
            theta = (self.rope_parameters or {}).get(layer_type, {}).get("rope_theta")
            if not isinstance(theta, (int, float)) or isinstance(theta, bool) or not theta > 0:
                raise ValueError(f"rope_parameters={self.rope_parameters!r}: rope_theta of {layer_type!r} must be a "
                                 "number > 0.")

    def validate_attention_pattern(self) -> None:
        """One layer type per effective layer."""
        if self.layer_types is None or len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types={self.layer_types!r}: expected {self.num_hidden_layers} entries (one per "
                             f"effective layer) from {list(LAYER_TYPES)}.")

    def _resolve_layer_types(self, every_n: Any) -> None:
        """``layer_types`` from ModernBERT's ``global_attn_every_n_layers`` (default 3) when not given."""
        if every_n is None and self.layer_types is not None:
            return
        n = DEFAULT_GLOBAL_ATTN_EVERY_N_LAYERS if every_n is None else every_n
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"ModernAlbertConfig.global_attn_every_n_layers={every_n!r} is invalid: expected an "
                             "integer >= 1 (1 = global attention in every layer).")
        pattern = modernbert_layer_types(self.num_hidden_layers, n)
        if self.layer_types is not None and list(self.layer_types) != pattern:
            raise ValueError(f"ModernAlbertConfig.layer_types={self.layer_types!r} contradicts "
                             f"global_attn_every_n_layers={n} ({pattern}): pass only one of them.")
        self.layer_types = pattern

    def validate_recursion(self) -> None:
        """The group depth divides the depth, and there is one FFN variant per group."""
        if self.num_hidden_layers % self.group_depth:
            raise ValueError(f"group_depth={self.group_depth}: num_hidden_layers={self.num_hidden_layers} must be "
                             "divisible by it.")
        if self.ffn_variants is None or len(self.ffn_variants) != self.num_hidden_groups:
            raise ValueError(f"ffn_variants={self.ffn_variants!r}: expected {self.num_hidden_groups} entries (one "
                             f"per group) from {list(FFN_VARIANTS)}.")

    def validate_experts(self) -> None:
        """Top-k within the experts, and a rank for the merged ``"lora"`` variant."""
        if self.num_experts_per_tok > self.num_experts:
            raise ValueError(f"num_experts_per_tok={self.num_experts_per_tok}: top-k cannot exceed "
                             f"num_experts={self.num_experts}.")
        if "lora" in (self.ffn_variants or []) and self.adapter_rank is None:
            raise ValueError("adapter_rank=None: the 'lora' FFN variant needs its adapter rank.")

    # -------------------------------------------------------------------------------------------- presets
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ModernAlbertConfig":
        """Build a named preset, with keyword overrides.

        Args:
            name: One of ``modernalbert.PRESETS`` (``tiny``, ``medium``, ``base``, ``large``; ``mini`` and ``test``
                are our small presets for CPU demos and tests).
            **overrides: Any config field, applied on top of the preset.

        Returns:
            The validated config.

        Raises:
            ValueError: Unknown preset name, unknown override key or invalid value.
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown ModernAlbert preset {name!r}: available presets are {sorted(PRESETS)}.")
        values = copy.deepcopy(PRESETS[name])
        if "ffn_variants" in overrides and "mol_groups" not in overrides:
            values.pop("mol_groups", None)  # the full form replaces the preset's short form
        if "layer_types" in overrides and "global_attn_every_n_layers" not in overrides:
            values.pop("global_attn_every_n_layers", None)  # likewise for the attention pattern
        values.update(overrides)
        return cls(**values)


def modernbert_layer_types(num_layers: int, global_attn_every_n_layers: int) -> list[str]:
    """ModernBERT's pattern: layer i is global when ``i % n == 0``, local otherwise (``ModernBertConfig``)."""
    return ["sliding_attention" if i % global_attn_every_n_layers else "full_attention" for i in range(num_layers)]


def nested_rope_parameters(params: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """RoPE parameters keyed by layer type, each with its ``rope_type`` and ``rope_theta`` (defaults: ``"default"``
    and :data:`DEFAULT_ROPE_THETA`). ``None`` gives the defaults; a flat dict (no layer-type key) is copied to every
    type; a nested dict gets its missing types' defaults.

    Raises:
        ValueError: A dict that mixes layer-type keys with other keys.
    """
    params = {} if params is None else dict(params)
    nested = [k for k in params if k in LAYER_TYPES]
    if nested and len(nested) != len(params):
        raise ValueError(f"rope_parameters={params!r} mixes layer-type keys {nested} with other keys: key every "
                         f"entry by layer type ({list(LAYER_TYPES)}), or pass one flat dict for every type.")
    out = {}
    for layer_type in LAYER_TYPES:
        entry = dict(params.get(layer_type) or {}) if nested else dict(params)
        entry.setdefault("rope_type", entry.pop("type", "default"))
        entry.setdefault("rope_theta", DEFAULT_ROPE_THETA[layer_type])
        out[layer_type] = entry
    return out


def _value_errors(cls: type) -> type:
    """Report the strict dataclass's failures as ``ValueError`` naming the field and value (as every other config of
    this project does, so that the command line shows one line): a field's type or range on construction and on
    assignment, and the ``validate_*`` rules. (This file is also the Hub remote code: it imports nothing of ours.)"""
    strict_setattr, strict_init, strict_validate = cls.__setattr__, cls.__init__, cls.validate

    def checked_setattr(self: Any, key: str, value: Any) -> None:
        try:
            strict_setattr(self, key, value)
        except StrictDataclassFieldValidationError as err:
            raise ValueError(f"ModernAlbertConfig.{key}={value!r} is invalid: {err.__cause__}") from None

    def rule_errors(method: Any) -> Any:
        @functools.wraps(method)
        def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except StrictDataclassClassValidationError as err:  # a validate_* rule's own ValueError
                raise err.__cause__ from None

        return checked

    cls.__setattr__, cls.__init__ = checked_setattr, rule_errors(strict_init)
    cls.validate = rule_errors(strict_validate)
    return cls


_value_errors(ModernAlbertConfig)
ModernAlbertConfig.register_for_auto_class()  # save_pretrained copies this file next to the weights (remote code)

__all__ = ["DEFAULT_ROPE_THETA", "FFN_VARIANTS", "LAYER_TYPES", "MOL_MIXING", "PRESETS", "STANDARD_KWARGS",
           "ModernAlbertConfig", "modernbert_layer_types", "nested_rope_parameters"]
