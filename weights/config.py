"""GPT-2 model configuration: the five numbers that fix every tensor shape, and the variants.

    n_layer   number of transformer blocks            (L)
    n_head    attention heads per block               (NH)
    n_embd    residual stream width                   (C); head size HS = C // NH
    vocab_size  number of token ids                   (V)
    n_ctx     longest sequence the model takes        (maxT)

The variants that the models after GPT-2 use are options; every default is GPT-2's, and a config
with all defaults is exactly GPT-2 (same tensors, same math, same config.json):

    position    "learned"  a (maxT, C) table added to the token embedding (wpe)      GPT-2
                "rope"     rotary embeddings: q and k rotated by position, no table   (rope_theta)
    norm        "layernorm" (x - mean) / std * weight + bias                          GPT-2
                "rmsnorm"   x / rms(x) * weight, no mean, no bias                     (eps: layer_norm_eps)
    mlp         "gelu"     gelu(x W_fc) W_proj, hidden 4C                             GPT-2
                "swiglu"   (silu(x W_gate) * (x W_up)) W_proj, W_gate|W_up fused in c_fc
    mlp_hidden  the MLP's hidden width H (None: 4C for gelu, `swiglu_hidden(C)` for swiglu)
    n_kv_head   key/value heads (None: n_head, GPT-2); fewer = grouped-query attention, each
                group of n_head / n_kv_head query heads shares one key head and one value head
    bias        False: no bias in any linear layer and none in LayerNorm
    tied_head   False: logits = x @ lm_head.weight^T with a head of its own (V, C)

`GPT2Config.gpt2_124m()` is the released "small" GPT-2 and `llama_style_124m()` the same width
and depth with every variant switched on; the other presets are scaled-down shapes for tests.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


class ConfigError(ValueError):
    """A config whose numbers cannot describe a GPT-2."""


POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")

# The keys config.json carries for the variants (model_type "gpt2-variant"), with the field each sets.
VARIANT_KEYS = {
    "position_embedding": "position",
    "rope_theta": "rope_theta",
    "normalization": "norm",
    "mlp": "mlp",
    "n_kv_head": "n_kv_head",
    "bias": "bias",
    "tie_word_embeddings": "tied_head",
}
VARIANT_MODEL_TYPE = "gpt2-variant"


def swiglu_hidden(n_embd: int) -> int:
    """The default hidden width of a SwiGLU MLP: 2/3 of GPT-2's 4C (three matrices instead of two, so
    about the same parameters and FLOPs), rounded up to a multiple of 64."""
    return -(-(8 * n_embd) // (3 * 64)) * 64


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    vocab_size: int = 50257
    n_ctx: int = 1024
    layer_norm_eps: float = 1e-5
    # the variants (module docstring); the defaults are GPT-2
    position: str = "learned"
    rope_theta: float = 10000.0
    norm: str = "layernorm"
    mlp: str = "gelu"
    mlp_hidden: int | None = None
    n_kv_head: int | None = None
    bias: bool = True
    tied_head: bool = True

    def __post_init__(self) -> None:
        for field in ("n_layer", "n_head", "n_embd", "vocab_size", "n_ctx"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"GPT2Config.{field} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(f"GPT2Config.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not (isinstance(self.layer_norm_eps, float) and 0.0 < self.layer_norm_eps < 1.0):
            raise ConfigError(f"GPT2Config.layer_norm_eps must be a float in (0, 1), got {self.layer_norm_eps!r}")
        for field, allowed in (("position", POSITIONS), ("norm", NORMS), ("mlp", MLPS)):
            if getattr(self, field) not in allowed:
                raise ConfigError(f"GPT2Config.{field} must be one of {allowed}, got {getattr(self, field)!r}")
        if not (isinstance(self.rope_theta, float) and self.rope_theta > 1.0):
            raise ConfigError(f"GPT2Config.rope_theta must be a float > 1, got {self.rope_theta!r}")
        if self.position == "rope" and self.head_size % 2:
            raise ConfigError(
                f"GPT2Config: rope rotates pairs of channels, so the head size ({self.head_size}) must be even"
            )
        for field in ("mlp_hidden", "n_kv_head"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"GPT2Config.{field} must be a positive int or None, got {value!r}")
        if self.n_head % self.kv_heads:
            raise ConfigError(f"GPT2Config.n_head ({self.n_head}) must be a multiple of n_kv_head ({self.kv_heads})")
        for field in ("bias", "tied_head"):
            if not isinstance(getattr(self, field), bool):
                raise ConfigError(f"GPT2Config.{field} must be True or False, got {getattr(self, field)!r}")
        # One spelling per model, so that equal configs compare (and hash) equal: a value that equals
        # the default it would get from None is stored as None.
        default_hidden = 4 * self.n_embd if self.mlp == "gelu" else swiglu_hidden(self.n_embd)
        if self.mlp_hidden == default_hidden:
            object.__setattr__(self, "mlp_hidden", None)
        if self.n_kv_head == self.n_head:
            object.__setattr__(self, "n_kv_head", None)

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads (NKV): n_head for GPT-2, fewer with grouped-query attention."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def hidden(self) -> int:
        """The MLP's hidden width H (4C for GPT-2)."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return 4 * self.n_embd if self.mlp == "gelu" else swiglu_hidden(self.n_embd)

    @property
    def qkv_width(self) -> int:
        """Columns of attn.c_attn: q (NH heads), then k and v (NKV heads each), HS channels per head."""
        return (self.n_head + 2 * self.kv_heads) * self.head_size

    @property
    def fc_width(self) -> int:
        """Columns of mlp.c_fc: H for gelu; 2H for swiglu (the gate's H columns, then the up projection's H)."""
        return self.hidden if self.mlp == "gelu" else 2 * self.hidden

    @property
    def norm_bias(self) -> bool:
        """Does each norm have a bias? LayerNorm with biases on; RMSNorm never."""
        return self.norm == "layernorm" and self.bias

    @property
    def is_gpt2(self) -> bool:
        """A plain GPT-2 of any size: every variant option at GPT-2's choice, except perhaps the GELU MLP's
        hidden width (GPT-2's config.json has it: n_inner)."""
        return set(self.variant_options()) <= ({"mlp_hidden"} if self.mlp == "gelu" else set())

    def variant_options(self) -> dict:
        """The options that differ from GPT-2's, as field -> value ({} for GPT-2)."""
        base = GPT2Config(n_layer=1, n_head=1, n_embd=self.n_embd, vocab_size=1, n_ctx=1)
        out = {}
        for field in ("position", "rope_theta", "norm", "mlp", "mlp_hidden", "n_kv_head", "bias", "tied_head"):
            mine, gpt2 = getattr(self, field), getattr(base, field)
            if field == "rope_theta" and self.position != "rope":
                continue
            if field == "mlp_hidden":
                mine, gpt2 = self.hidden, 4 * self.n_embd
            if field == "n_kv_head":
                mine, gpt2 = self.kv_heads, self.n_head
            if mine != gpt2:
                out[field] = mine
        return out

    # ----------------------------------------------------------------- presets
    @classmethod
    def gpt2_124m(cls) -> GPT2Config:
        """The released GPT-2 small: 124,439,808 parameters with the tied head."""
        return cls(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_ctx=1024)

    @classmethod
    def tiny(cls) -> GPT2Config:
        """Small enough for float64 finite differences and the CUDA simulator."""
        return cls(n_layer=2, n_head=2, n_embd=16, vocab_size=64, n_ctx=16)

    @classmethod
    def small(cls) -> GPT2Config:
        """A CPU-friendly shape with the real vocabulary (so real text can be tokenised)."""
        return cls(n_layer=2, n_head=4, n_embd=64, vocab_size=50257, n_ctx=128)

    @classmethod
    def gpt2_medium(cls) -> GPT2Config:
        """The released GPT-2 medium: 24 layers, 16 heads, C = 1024; 354,823,168 parameters."""
        return cls(n_layer=24, n_head=16, n_embd=1024, vocab_size=50257, n_ctx=1024)

    @classmethod
    def gpt2_large(cls) -> GPT2Config:
        """The released GPT-2 large: 36 layers, 20 heads, C = 1280; 774,030,080 parameters."""
        return cls(n_layer=36, n_head=20, n_embd=1280, vocab_size=50257, n_ctx=1024)

    @classmethod
    def gpt2_xl(cls) -> GPT2Config:
        """The released GPT-2 XL: 48 layers, 25 heads of 64, C = 1600; 1,557,611,200 parameters."""
        return cls(n_layer=48, n_head=25, n_embd=1600, vocab_size=50257, n_ctx=1024)

    @classmethod
    def llama_style_124m(cls) -> GPT2Config:
        """GPT-2 small's width, depth, vocabulary and context with every later-model variant on: rotary
        positions, RMSNorm, a SwiGLU MLP of hidden width 3C = 2304, 4 key/value heads for 12 query
        heads, no biases; the head stays tied. 121,191,936 parameters (GPT-2 small: 124,439,808)."""
        return cls(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_ctx=1024, position="rope",
                   norm="rmsnorm", mlp="swiglu", mlp_hidden=2304, n_kv_head=4, bias=False)  # fmt: skip

    @classmethod
    def preset(cls, name: str) -> GPT2Config:
        presets = {"gpt2": cls.gpt2_124m, "124m": cls.gpt2_124m, "gpt2-medium": cls.gpt2_medium,
                   "gpt2-large": cls.gpt2_large, "gpt2-xl": cls.gpt2_xl, "tiny": cls.tiny, "small": cls.small,
                   "llama-124m": cls.llama_style_124m}  # fmt: skip
        if name not in presets:
            raise ConfigError(f"unknown config preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    # ------------------------------------------------------- config.json (HF)
    def to_hf_dict(self) -> dict:
        """The `config.json` that `transformers.GPT2LMHeadModel.from_pretrained` reads.

        Dropout is written as 0: a checkpoint of ours is compared deterministically. A config with a
        variant option is not a GPT-2 that transformers could load: it is written with model_type
        "gpt2-variant" (which transformers refuses by name instead of loading the wrong model) and the
        variant keys of `VARIANT_KEYS`.
        """
        d = {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_embd": self.n_embd,
            "vocab_size": self.vocab_size,
            "n_positions": self.n_ctx,
            "n_ctx": self.n_ctx,
            "n_inner": None,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": self.layer_norm_eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "tie_word_embeddings": True,
            "bos_token_id": 50256,
            "eos_token_id": 50256,
            "initializer_range": 0.02,
        }
        if self.hidden != 4 * self.n_embd:
            d["n_inner"] = self.hidden
        if not self.is_gpt2:
            d["architectures"] = ["GPT2VariantLMHeadModel"]
            d["model_type"] = VARIANT_MODEL_TYPE
            for key, field in VARIANT_KEYS.items():
                d[key] = self.kv_heads if field == "n_kv_head" else getattr(self, field)
            if self.mlp == "swiglu":
                d["activation_function"] = "silu"
        return d

    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json") -> GPT2Config:
        """Read an HF GPT-2 `config.json` (or ours, model_type "gpt2-variant"); refuses settings our three
        backends do not implement."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object of config fields, got a {type(d).__name__}")
        variant = d.get("model_type") == VARIANT_MODEL_TYPE
        if not variant:
            stray = sorted(k for k in VARIANT_KEYS if k in d and k != "tie_word_embeddings")
            if stray:
                raise ConfigError(f"{source}: variant key(s) {stray} need model_type {VARIANT_MODEL_TYPE!r}")
            if d.get("tie_word_embeddings", True) is not True:
                raise ConfigError(f"{source}: tie_word_embeddings=false needs model_type {VARIANT_MODEL_TYPE!r}")
        options = {field: d[key] for key, field in VARIANT_KEYS.items() if variant and key in d}
        theta = options.get("rope_theta")
        if isinstance(theta, int) and not isinstance(theta, bool):  # JSON writes 10000.0 as 10000 too
            options["rope_theta"] = float(theta)
        for key in ("n_layer", "n_head", "n_embd", "vocab_size"):
            if key not in d:
                raise ConfigError(f"{source}: missing key {key!r}")
        if "n_positions" not in d and "n_ctx" not in d:
            raise ConfigError(f"{source}: missing key 'n_positions' (or 'n_ctx'): the longest sequence")
        eps = d.get("layer_norm_epsilon", 1e-5)
        if isinstance(eps, bool) or not isinstance(eps, int | float):
            raise ConfigError(f"{source}: layer_norm_epsilon must be a number, got {eps!r}")
        try:
            cfg = cls(
                n_layer=d["n_layer"],
                n_head=d["n_head"],
                n_embd=d["n_embd"],
                vocab_size=d["vocab_size"],
                n_ctx=d.get("n_positions", d.get("n_ctx")),
                layer_norm_eps=float(eps),
                mlp_hidden=d.get("n_inner"),
                **options,
            )
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        activation = "silu" if cfg.mlp == "swiglu" else "gelu_new"
        unsupported = {
            "activation_function": (activation, d.get("activation_function", activation)),
            "scale_attn_by_inverse_layer_idx": (False, d.get("scale_attn_by_inverse_layer_idx", False)),
            "reorder_and_upcast_attn": (False, d.get("reorder_and_upcast_attn", False)),
            "scale_attn_weights": (True, d.get("scale_attn_weights", True)),
        }
        for key, (want, got) in unsupported.items():
            if got != want:
                raise ConfigError(f"{source}: {key}={got!r} is not GPT-2 (expected {want!r})")
        return cfg

    def save_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n")
