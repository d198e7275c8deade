"""The variants as configuration (weights/config.py, weights/layout.py): validation, the tensors each
layout has, config.json both ways, and checkpoints of every variant through save / load."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from weights import (
    CheckpointError,
    ConfigError,
    GPT2Config,
    activation_names,
    load,
    num_params,
    param_shapes,
    save,
    synthetic,
)
from weights.config import swiglu_hidden

TINY = GPT2Config.tiny()  # C=16, 2 heads of 8, V=64, n_ctx=16

# One config per option alone, and all of them together (the tiny llama-style combination).
VARIANTS = {
    "rope": dict(position="rope"),
    "rope-theta": dict(position="rope", rope_theta=500.0),
    "rmsnorm": dict(norm="rmsnorm"),
    "swiglu": dict(mlp="swiglu"),
    "swiglu-h24": dict(mlp="swiglu", mlp_hidden=24),
    "gelu-h40": dict(mlp_hidden=40),
    "gqa": dict(n_kv_head=1),
    "nobias": dict(bias=False),
    "untied": dict(tied_head=False),
    "llama": dict(position="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1, bias=False, tied_head=False),
}


def variant(name: str) -> GPT2Config:
    return dataclasses.replace(TINY, **VARIANTS[name])


def test_defaults_are_gpt2_and_unchanged():
    c = GPT2Config.gpt2_124m()
    assert c.is_gpt2 and c.variant_options() == {}
    assert variant("gelu-h40").is_gpt2 and not variant("swiglu").is_gpt2
    assert (c.kv_heads, c.hidden, c.qkv_width, c.fc_width, c.norm_bias) == (12, 3072, 2304, 3072, True)
    assert num_params(c) == 124_439_808
    assert "model_type" in c.to_hf_dict() and c.to_hf_dict()["model_type"] == "gpt2"


def test_llama_style_preset():
    c = GPT2Config.preset("llama-124m")
    assert c == GPT2Config.llama_style_124m()
    assert c.variant_options() == {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "mlp_hidden": 2304,
                                   "n_kv_head": 4, "bias": False}  # fmt: skip
    assert num_params(c) == 121_191_936
    shapes = param_shapes(c)
    assert shapes["h.0.attn.c_attn.weight"] == (768, (12 + 2 * 4) * 64)
    assert shapes["h.0.mlp.c_fc.weight"] == (768, 2 * 2304) and shapes["h.0.mlp.c_proj.weight"] == (2304, 768)
    assert not any(n.endswith(".bias") for n in shapes) and "wpe.weight" not in shapes


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(position="alibi"), "position must be one of"),
        (dict(norm="batchnorm"), "norm must be one of"),
        (dict(mlp="relu"), "mlp must be one of"),
        (dict(n_kv_head=3), r"n_head \(2\) must be a multiple of n_kv_head \(3\)"),
        (dict(n_kv_head=0), "n_kv_head must be a positive int or None"),
        (dict(mlp_hidden=-4), "mlp_hidden must be a positive int or None"),
        (dict(rope_theta=10000), "rope_theta must be a float > 1"),
        (dict(bias=1), "bias must be True or False"),
        (dict(tied_head="no"), "tied_head must be True or False"),
        (dict(n_head=16, n_embd=16, position="rope"), r"head size \(1\) must be even"),
    ],
)
def test_bad_variant_options_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(TINY, **kwargs)


def test_defaults_spelled_out_compare_equal():
    assert dataclasses.replace(TINY, n_kv_head=2, mlp_hidden=64) == TINY
    assert dataclasses.replace(TINY, mlp="swiglu", mlp_hidden=swiglu_hidden(16)) == variant("swiglu")
    assert swiglu_hidden(768) == 2048 and swiglu_hidden(16) == 64


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_layout_of_each_variant(name):
    c = variant(name)
    s = param_shapes(c)
    C, HS = c.n_embd, c.head_size
    assert ("wpe.weight" in s) == (c.position == "learned")
    assert ("lm_head.weight" in s) == (not c.tied_head)
    assert ("h.1.ln_2.bias" in s) == (c.norm == "layernorm" and c.bias)
    assert ("h.0.mlp.c_fc.bias" in s) == c.bias and ("h.1.attn.c_proj.bias" in s) == c.bias
    assert s["h.0.attn.c_attn.weight"] == (C, (c.n_head + 2 * c.kv_heads) * HS)
    assert s["h.1.mlp.c_fc.weight"] == (C, c.hidden * (2 if c.mlp == "swiglu" else 1))
    assert s["h.1.mlp.c_proj.weight"] == (c.hidden, C)
    p = synthetic(c, seed=2)
    assert list(p) == list(s) and all(p[n].shape == s[n] for n in s)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_config_json_round_trip(name):
    c = variant(name)
    d = json.loads(json.dumps(c.to_hf_dict()))
    assert d["model_type"] == "gpt2-variant" or c.is_gpt2  # transformers must not load a variant as GPT-2
    assert GPT2Config.from_hf_dict(d) == c


def test_config_json_of_a_variant_names_file_and_field():
    d = variant("gqa").to_hf_dict()
    d["n_kv_head"] = 3
    with pytest.raises(ConfigError, match=r"my/config.json: .*n_kv_head \(3\)"):
        GPT2Config.from_hf_dict(d, source="my/config.json")
    d = GPT2Config.tiny().to_hf_dict()
    d["normalization"] = "rmsnorm"  # a variant key in a plain GPT-2 config.json
    with pytest.raises(ConfigError, match=r"my/config.json: variant key\(s\) \['normalization'\]"):
        GPT2Config.from_hf_dict(d, source="my/config.json")
    d = GPT2Config.tiny().to_hf_dict()
    d["tie_word_embeddings"] = False
    with pytest.raises(ConfigError, match="tie_word_embeddings=false needs model_type"):
        GPT2Config.from_hf_dict(d, source="my/config.json")


def test_gpt2_with_a_wider_mlp_is_gpt2_with_n_inner():
    c = variant("gelu-h40")
    d = c.to_hf_dict()
    assert d["model_type"] == "gpt2" and d["n_inner"] == 40 and d["activation_function"] == "gelu_new"
    assert GPT2Config.from_hf_dict(d) == c


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_checkpoint_of_each_variant_round_trips(tmp_path, name):
    c = variant(name)
    p = synthetic(c, seed=4)
    save(p, c, tmp_path)
    loaded, cfg = load(tmp_path)
    assert cfg == c and list(loaded) == list(p)
    for n in p:
        np.testing.assert_array_equal(loaded[n], p[n], err_msg=n)


def test_untied_head_in_the_save_pretrained_layout(tmp_path):
    from safetensors.numpy import save_file

    c = variant("untied")
    p = synthetic(c, seed=1)
    tensors = {f"transformer.{k}": v for k, v in p.items() if k != "lm_head.weight"}
    tensors["lm_head.weight"] = p["lm_head.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    loaded, _ = load(tmp_path / "model.safetensors", config=c)
    np.testing.assert_array_equal(loaded["lm_head.weight"], p["lm_head.weight"])
    with pytest.raises(CheckpointError, match="lm_head.weight differs from wte.weight"):
        load(tmp_path / "model.safetensors", config=TINY)  # the same file read as a tied GPT-2


def test_variant_checkpoint_without_config_json_is_refused(tmp_path):
    c = variant("rope")
    save(synthetic(c), c, tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="'wpe.weight' is missing .*needs its config.json"):
        load(tmp_path)


def test_activation_names_follow_the_variant():
    assert activation_names(TINY)[:4] == ["embed", "h.0.ln_1", "h.0.qkv", "h.0.attn"]
    names = activation_names(variant("llama"))
    assert names[:4] == ["embed", "h.0.ln_1", "h.0.qkv", "h.0.rope"]
    assert "h.1.swiglu" in names and "h.1.gelu" not in names and names[-2:] == ["ln_f", "logits"]
