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
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from transformers import PretrainedConfig

FFN_VARIANTS = ("glu", "mol", "rrt", "moa", "lora")
MOL_MIXING = ("output", "weight")
POOLING = ("cls", "mean")
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "relu")

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
    "tiny": dict(
        **_MODERNBERT_TOKENS,
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
    # "mini": width 384 and the BERT WordPiece vocabulary, to match the packaged all-MiniLM-L6-v2 teacher.
    "mini": dict(
        **_BERT_TOKENS,
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
    # "test": a few-hundred-thousand-parameter model for unit tests.
    "test": dict(
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


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ValueError(f"ModernAlbertConfig.{field}={value!r} is invalid: {allowed}.")


def _check_int(field: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(field, value, f"expected an integer >= {minimum}")


def _check_float(field: str, value: Any, low: float, high: float | None = None, *, open_low: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = value > low if open_low else value >= low
        ok = ok and (high is None or value <= high)
    if not ok:
        bound = f"{'>' if open_low else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        _fail(field, value, f"expected a number {bound}")


def _check_choice(field: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(field, value, f"allowed values are {list(allowed)}")


class ModernAlbertConfig(PretrainedConfig):
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
        hidden_activation: Activation of the GeGLU gate branch.
        rope_theta: RoPE base (160 000, ModernBERT's global value).
        max_position_embeddings: Longest sequence accepted.
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
        ffn_variants: One of ``"glu" | "mol" | "rrt" | "moa"`` per group; overrides ``mol_groups``.
        num_experts: E, experts per MoL / MoA group.
        num_experts_per_tok: k, experts routed per token.
        lora_rank: r, rank of every LoRA expert (and the MoA bottleneck width, our choice).
        lora_alpha: LoRA scale numerator: experts are scaled by ``lora_alpha / lora_rank``.
        mol_mixing: ``"output"`` (each expert makes its own FFN, outputs mixed: the paper's equation, default) or
            ``"weight"`` (experts mix in weight space, one nonlinearity; dense executor).
        router_jitter: Switch-style multiplicative input jitter on the router input during training (ours: 0).
        router_aux_loss_coef: Weight of the Switch load-balance loss added to the task loss (ours: 0.01).
        router_z_loss_coef: Weight of the router z-loss added to the task loss (ours: 0.001).
        router_ema_decay: Decay of the per-group moving average of routed probability mass per expert, kept
            during training and saved with the model; merging with ``weights="router"`` reads it (ours: 0.99).
        adapter_rank: Rank of the ``"lora"`` variant's adapter (set by merging).
        merge_info: How a merged model was merged (set by ``merge_experts``); ``None`` otherwise.
        sparse_prediction: MaskedLM computes logits only at labelled positions when labels are given.
        mask_token_id: Id of the mask token (used by MLM data collation).
        cls_token_id: Id of the CLS token.
        sep_token_id: Id of the SEP token.

    The attention implementation is chosen the Hugging Face way (``attn_implementation=`` on the config or on
    ``from_pretrained``): ``"sdpa"`` (default, exact reference), ``"eager"`` (returns attention probabilities)
    or ``"flash_attention_2"`` (varlen kernel on unpadded tokens; needs the ``flash-attn`` package and a GPU).

    Example:
        >>> from modernalbert import ModernAlbertConfig
        >>> config = ModernAlbertConfig.from_preset("tiny", num_experts=8)
        >>> config.num_hidden_groups, config.ffn_variants[5]
        (8, 'mol')
    """

    model_type = "modernalbert"
    keys_to_ignore_at_inference: ClassVar[list[str]] = []

    vocab_size: int = 50368
    embedding_size: int | None = 128
    hidden_size: int = 768
    num_attention_heads: int = 12
    intermediate_size: int = 1152
    num_hidden_layers: int = 16
    group_depth: int = 2
    hidden_activation: str = "gelu"
    rope_theta: float = 160_000.0
    max_position_embeddings: int = 8192
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    initializer_cutoff_factor: float = 2.0
    embedding_dropout: float = 0.0
    attention_dropout: float = 0.0
    mlp_dropout: float = 0.0
    classifier_dropout: float = 0.0
    classifier_pooling: str = "cls"
    classifier_activation: str = "gelu"
    mol_groups: list[int] | None = None
    ffn_variants: list[str] | None = None
    num_experts: int = 4
    num_experts_per_tok: int = 2
    lora_rank: int = 16
    lora_alpha: float = 32.0
    mol_mixing: str = "output"
    router_jitter: float = 0.0
    router_aux_loss_coef: float = 0.01
    router_z_loss_coef: float = 0.001
    router_ema_decay: float = 0.99
    adapter_rank: int | None = None
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
        self._resolve_ffn_variants()
        super().__post_init__(**kwargs)
        self.validate()

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

    # ----------------------------------------------------------------------------------------- validation
    def _resolve_ffn_variants(self) -> None:
        if self.num_hidden_layers and self.group_depth and self.num_hidden_layers % self.group_depth == 0:
            groups = self.num_hidden_layers // self.group_depth
        else:
            return  # validate() reports the bad depth
        if self.ffn_variants is not None:
            self.ffn_variants = list(self.ffn_variants)
            derived = [i for i, v in enumerate(self.ffn_variants) if v == "mol"]
            if self.mol_groups is not None and sorted(self.mol_groups) != derived:
                raise ValueError(
                    f"ModernAlbertConfig.mol_groups={self.mol_groups!r} contradicts ffn_variants="
                    f"{self.ffn_variants!r} (MoL at groups {derived}): pass only one of them."
                )
            self.mol_groups = derived
            return
        mol = [] if self.mol_groups is None else list(self.mol_groups)
        for g in mol:
            if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < groups:
                _fail("mol_groups", self.mol_groups, f"expected 0-based group indices in [0, {groups - 1}]")
        if len(set(mol)) != len(mol):
            _fail("mol_groups", self.mol_groups, "group indices must be unique")
        self.mol_groups = sorted(mol)
        self.ffn_variants = ["mol" if g in mol else "glu" for g in range(groups)]

    def validate(self) -> None:
        """Check every field; raise ``ValueError`` naming the field and what is allowed."""
        _check_int("vocab_size", self.vocab_size, 1)
        if self.embedding_size is not None:
            _check_int("embedding_size", self.embedding_size, 1)
        _check_int("hidden_size", self.hidden_size, 1)
        _check_int("num_attention_heads", self.num_attention_heads, 1)
        if self.hidden_size % self.num_attention_heads:
            _fail("num_attention_heads", self.num_attention_heads,
                  f"hidden_size={self.hidden_size} must be divisible by it")
        if self.head_dim % 2:
            _fail("num_attention_heads", self.num_attention_heads,
                  f"RoPE needs an even head size, got hidden_size / heads = {self.head_dim}")
        _check_int("intermediate_size", self.intermediate_size, 1)
        _check_int("num_hidden_layers", self.num_hidden_layers, 1)
        _check_int("group_depth", self.group_depth, 1)
        if self.num_hidden_layers % self.group_depth:
            _fail("group_depth", self.group_depth,
                  f"num_hidden_layers={self.num_hidden_layers} must be divisible by it")
        _check_choice("hidden_activation", self.hidden_activation, ACTIVATIONS)
        _check_choice("classifier_activation", self.classifier_activation, ACTIVATIONS)
        _check_float("rope_theta", self.rope_theta, 0.0, open_low=True)
        _check_int("max_position_embeddings", self.max_position_embeddings, 1)
        _check_float("norm_eps", self.norm_eps, 0.0, open_low=True)
        _check_float("initializer_range", self.initializer_range, 0.0, open_low=True)
        _check_float("initializer_cutoff_factor", self.initializer_cutoff_factor, 0.0, open_low=True)
        for name in ("embedding_dropout", "attention_dropout", "mlp_dropout", "classifier_dropout"):
            _check_float(name, getattr(self, name), 0.0, 1.0)
            if getattr(self, name) == 1.0:
                _fail(name, 1.0, "a dropout probability must be < 1")
        _check_choice("classifier_pooling", self.classifier_pooling, POOLING)
        if not isinstance(self.ffn_variants, list) or len(self.ffn_variants) != self.num_hidden_groups:
            _fail("ffn_variants", self.ffn_variants,
                  f"expected a list of {self.num_hidden_groups} entries (one per group) from {list(FFN_VARIANTS)}")
        for v in self.ffn_variants:
            if v not in FFN_VARIANTS:
                _fail("ffn_variants", self.ffn_variants, f"every entry must be one of {list(FFN_VARIANTS)}")
        _check_int("num_experts", self.num_experts, 1)
        _check_int("num_experts_per_tok", self.num_experts_per_tok, 1)
        if self.num_experts_per_tok > self.num_experts:
            _fail("num_experts_per_tok", self.num_experts_per_tok,
                  f"top-k cannot exceed num_experts={self.num_experts}")
        _check_int("lora_rank", self.lora_rank, 1)
        _check_float("lora_alpha", self.lora_alpha, 0.0, open_low=True)
        _check_choice("mol_mixing", self.mol_mixing, MOL_MIXING)
        _check_float("router_jitter", self.router_jitter, 0.0, 1.0)
        if self.router_jitter == 1.0:
            _fail("router_jitter", 1.0, "jitter must be < 1 (inputs are scaled by U(1 - jitter, 1 + jitter))")
        _check_float("router_aux_loss_coef", self.router_aux_loss_coef, 0.0)
        _check_float("router_z_loss_coef", self.router_z_loss_coef, 0.0)
        _check_float("router_ema_decay", self.router_ema_decay, 0.0, 1.0)
        if "lora" in self.ffn_variants or self.adapter_rank is not None:
            _check_int("adapter_rank", self.adapter_rank, 1)
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id",
                     "mask_token_id"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 0 <= value < self.vocab_size):
                _fail(name, value, f"expected None or an id in [0, vocab_size={self.vocab_size})")
        impl = getattr(self, "_attn_implementation", None)
        if impl is not None and impl not in ATTENTION_IMPLEMENTATIONS:
            _fail("attn_implementation", impl, f"allowed values are {list(ATTENTION_IMPLEMENTATIONS)}")

    # -------------------------------------------------------------------------------------------- presets
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModernAlbertConfig:
        """Build a named preset, with keyword overrides.

        Args:
            name: One of ``modernalbert.PRESETS`` (``tiny``, ``medium``, ``base``, ``large``; ``mini`` and ``test``
                are our small presets for CPU demos and tests).
            **overrides: Any config field, applied on top of the preset.

        Returns:
            The validated config.

        Raises:
            ValueError: Unknown preset name, or an invalid field.
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown ModernAlbert preset {name!r}: available presets are {sorted(PRESETS)}.")
        values = copy.deepcopy(PRESETS[name])
        if "ffn_variants" in overrides and "mol_groups" not in overrides:
            values.pop("mol_groups", None)  # the full form replaces the preset's short form
        values.update(overrides)
        return cls(**values)


__all__ = ["ATTENTION_IMPLEMENTATIONS", "FFN_VARIANTS", "MOL_MIXING", "PRESETS", "ModernAlbertConfig"]
