"""GPT-2 model configuration: the five numbers that fix every tensor shape.

    n_layer   number of transformer blocks            (L)
    n_head    attention heads per block               (NH)
    n_embd    residual stream width                   (C); head size HS = C // NH
    vocab_size  number of token ids                   (V)
    n_ctx     longest sequence the position table has (maxT)

`GPT2Config.gpt2_124m()` is the released "small" GPT-2; the other presets are
scaled-down shapes for tests (same architecture, fewer numbers).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


class ConfigError(ValueError):
    """A config whose numbers cannot describe a GPT-2."""


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    vocab_size: int = 50257
    n_ctx: int = 1024
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for field in ("n_layer", "n_head", "n_embd", "vocab_size", "n_ctx"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"GPT2Config.{field} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(f"GPT2Config.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not (isinstance(self.layer_norm_eps, float) and 0.0 < self.layer_norm_eps < 1.0):
            raise ConfigError(f"GPT2Config.layer_norm_eps must be a float in (0, 1), got {self.layer_norm_eps!r}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

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
    def preset(cls, name: str) -> GPT2Config:
        presets = {"gpt2": cls.gpt2_124m, "124m": cls.gpt2_124m, "tiny": cls.tiny, "small": cls.small}
        if name not in presets:
            raise ConfigError(f"unknown config preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    # ------------------------------------------------------- config.json (HF)
    def to_hf_dict(self) -> dict:
        """The `config.json` that `transformers.GPT2LMHeadModel.from_pretrained` reads.

        Dropout is written as 0: a checkpoint of ours is compared deterministically.
        """
        return {
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

    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json") -> GPT2Config:
        """Read an HF GPT-2 `config.json`; refuses settings our three backends do not implement."""
        try:
            n_ctx = d.get("n_positions", d.get("n_ctx"))
            cfg = cls(
                n_layer=d["n_layer"],
                n_head=d["n_head"],
                n_embd=d["n_embd"],
                vocab_size=d["vocab_size"],
                n_ctx=n_ctx,
                layer_norm_eps=float(d.get("layer_norm_epsilon", 1e-5)),
            )
        except KeyError as e:
            raise ConfigError(f"{source}: missing key {e.args[0]!r}") from None
        unsupported = {
            "activation_function": ("gelu_new", d.get("activation_function", "gelu_new")),
            "n_inner": (None, d.get("n_inner")),
            "scale_attn_by_inverse_layer_idx": (False, d.get("scale_attn_by_inverse_layer_idx", False)),
            "reorder_and_upcast_attn": (False, d.get("reorder_and_upcast_attn", False)),
            "scale_attn_weights": (True, d.get("scale_attn_weights", True)),
        }
        for key, (want, got) in unsupported.items():
            if key == "n_inner" and got in (None, 4 * cfg.n_embd):
                continue
            if got != want:
                raise ConfigError(f"{source}: {key}={got!r} is not GPT-2 (expected {want!r})")
        return cfg

    def save_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n")
