"""Our parameters as Hugging Face's `LlamaForCausalLM`: the one name mapping, for an independent oracle.

A config maps onto Llama when it has Llama's three ingredients, position "rope", norm "rmsnorm" and
mlp "swiglu"; n_kv_head (grouped-query attention), mlp_hidden, rope_theta, bias and tied_head may be
anything (weights/config.py). Learned positions, LayerNorm or a GELU MLP are refused by name.

    ours (weights/layout.py, Conv1D (in, out))         transformers' Llama (nn.Linear (out, in))
    wte.weight (V, C)                                  model.embed_tokens.weight
    h.{i}.ln_1.weight                                  model.layers.{i}.input_layernorm.weight
    h.{i}.attn.c_attn.weight[:, q].T                   model.layers.{i}.self_attn.q_proj.weight  (NH HS, C)
    h.{i}.attn.c_attn.weight[:, k].T                   model.layers.{i}.self_attn.k_proj.weight  (NKV HS, C)
    h.{i}.attn.c_attn.weight[:, v].T                   model.layers.{i}.self_attn.v_proj.weight  (NKV HS, C)
    h.{i}.attn.c_proj.weight.T                         model.layers.{i}.self_attn.o_proj.weight
    h.{i}.ln_2.weight                                  model.layers.{i}.post_attention_layernorm.weight
    h.{i}.mlp.c_fc.weight[:, :H].T                     model.layers.{i}.mlp.gate_proj.weight     (H, C)
    h.{i}.mlp.c_fc.weight[:, H:].T                     model.layers.{i}.mlp.up_proj.weight       (H, C)
    h.{i}.mlp.c_proj.weight.T                          model.layers.{i}.mlp.down_proj.weight     (C, H)
    ln_f.weight                                        model.norm.weight
    lm_head.weight (V, C), untied                      lm_head.weight; tied: tie_word_embeddings=True

with the column slices q = [0, NH HS), k = [NH HS, (NH + NKV) HS), v = [(NH + NKV) HS, (NH + 2 NKV) HS).
With bias=True the biases follow their weights (the same slices of c_attn.bias; c_fc.bias halves to
gate_proj.bias / up_proj.bias) and the config says attention_bias=True, mlp_bias=True.

No permutation of q and k is needed: our rotary embedding already uses the "rotate half" pairing
(i, i + HS/2) of transformers' `apply_rotary_pos_emb` (docs/variants.md). Query head h reads key/value
head h // (NH / NKV) in both (transformers' `repeat_kv`). Llama's attention scale is head_dim^-0.5,
its RMSNorm eps `rms_norm_eps` = our layer_norm_eps.

Only this module knows the Llama names; it imports transformers (and torch) only in the functions
that build transformers objects, so the mapping itself is plain NumPy and usable by any backend's tests.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from weights import GPT2Config, param_shapes, validate_params


def check_llama_shaped(config: GPT2Config) -> None:
    """Raise ValueError unless `config` is a Llama: rotary positions, RMSNorm, SwiGLU."""
    wrong = [
        f"{field}={getattr(config, field)!r} (Llama: {want!r})"
        for field, want in (("position", "rope"), ("norm", "rmsnorm"), ("mlp", "swiglu"))
        if getattr(config, field) != want
    ]
    if wrong:
        raise ValueError(f"config is not Llama-shaped: {', '.join(wrong)}")


def llama_config_kwargs(config: GPT2Config) -> dict:
    """The keyword arguments of `transformers.LlamaConfig` for `config` (dropout 0, eager-safe ids)."""
    check_llama_shaped(config)
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": config.n_ctx,
        "rms_norm_eps": config.layer_norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},  # transformers >= 5
        "rope_theta": config.rope_theta,  # transformers 4 (5 reads it too)
        "attention_bias": config.bias,
        "mlp_bias": config.bias,
        "attention_dropout": 0.0,
        "tie_word_embeddings": config.tied_head,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": None,
    }


def llama_config(config: GPT2Config, attn_implementation: str = "eager"):
    """A `transformers.LlamaConfig` describing the same model as `config`."""
    import transformers

    return transformers.LlamaConfig(**llama_config_kwargs(config), attn_implementation=attn_implementation)


def _qkv_slices(config: GPT2Config) -> dict[str, slice]:
    q, kv = config.n_head * config.head_size, config.kv_heads * config.head_size
    return {"q_proj": slice(0, q), "k_proj": slice(q, q + kv), "v_proj": slice(q + kv, q + 2 * kv)}


def _pairs(config: GPT2Config):
    """(our name, column slice or None, transpose?, Llama name) for every tensor of the mapping.

    The slice cuts the columns of our (in, out) weight (or the entries of a bias) before the transpose.
    """
    H = config.hidden
    out = [("wte.weight", None, False, "model.embed_tokens.weight")]
    for i in range(config.n_layer):
        ours, hf = f"h.{i}.", f"model.layers.{i}."
        out.append((ours + "ln_1.weight", None, False, hf + "input_layernorm.weight"))
        for proj, cols in _qkv_slices(config).items():
            out.append((ours + "attn.c_attn.weight", cols, True, hf + f"self_attn.{proj}.weight"))
            if config.bias:
                out.append((ours + "attn.c_attn.bias", cols, False, hf + f"self_attn.{proj}.bias"))
        out.append((ours + "attn.c_proj.weight", None, True, hf + "self_attn.o_proj.weight"))
        if config.bias:
            out.append((ours + "attn.c_proj.bias", None, False, hf + "self_attn.o_proj.bias"))
        out.append((ours + "ln_2.weight", None, False, hf + "post_attention_layernorm.weight"))
        for proj, cols in (("gate_proj", slice(0, H)), ("up_proj", slice(H, 2 * H))):
            out.append((ours + "mlp.c_fc.weight", cols, True, hf + f"mlp.{proj}.weight"))
            if config.bias:
                out.append((ours + "mlp.c_fc.bias", cols, False, hf + f"mlp.{proj}.bias"))
        out.append((ours + "mlp.c_proj.weight", None, True, hf + "mlp.down_proj.weight"))
        if config.bias:
            out.append((ours + "mlp.c_proj.bias", None, False, hf + "mlp.down_proj.bias"))
    out.append(("ln_f.weight", None, False, "model.norm.weight"))
    if not config.tied_head:
        out.append(("lm_head.weight", None, False, "lm_head.weight"))
    return out


def llama_to_ours(config: GPT2Config) -> dict[str, str]:
    """Llama's tensor name -> the canonical name of the tensor it is, or is a slice of (q/k/v of c_attn)."""
    return {hf: ours for ours, _, _, hf in _pairs(config)}


def to_llama_state_dict(params: Mapping[str, np.ndarray], config: GPT2Config) -> dict[str, np.ndarray]:
    """Our canonical params (or gradients) -> Llama's tensors by name (contiguous copies, same dtype).

    A tied head has no lm_head.weight here: transformers ties it to model.embed_tokens.weight.
    """
    check_llama_shaped(config)
    validate_params(params, config, what="to_llama_state_dict")
    out = {}
    for ours, cols, transpose, hf in _pairs(config):
        value = np.asarray(params[ours])
        if cols is not None:
            value = value[..., cols]  # columns of a weight (in, out), entries of a bias
        out[hf] = np.ascontiguousarray(value.T if transpose else value)
    return out


def from_llama_state_dict(tensors: Mapping[str, np.ndarray], config: GPT2Config) -> dict[str, np.ndarray]:
    """The inverse: Llama's tensors (parameters or their gradients) by name -> our canonical dict.

    With a tied head, transformers' gradient of model.embed_tokens.weight already holds the head's term.
    """
    check_llama_shaped(config)
    shapes = param_shapes(config)
    out = {
        name: np.zeros(shape, dtype=np.asarray(tensors["model.embed_tokens.weight"]).dtype)
        for name, shape in shapes.items()
    }
    for ours, cols, transpose, hf in _pairs(config):
        value = np.asarray(tensors[hf])
        value = value.T if transpose else value
        if cols is None:
            out[ours][...] = value
        else:
            out[ours][..., cols] = value
    return out


def llama_model(params: Mapping[str, np.ndarray], config: GPT2Config, dtype=None, attn_implementation: str = "eager"):
    """transformers' `LlamaForCausalLM` holding exactly `params` (eval mode, dtype default float64).

    Every parameter of the Llama model is set from `params` (the load is checked for missing and
    unexpected names); a tied head is checked to share the embedding's storage.
    """
    import torch
    import transformers

    dtype = torch.float64 if dtype is None else dtype
    model = transformers.LlamaForCausalLM(llama_config(config, attn_implementation)).to(dtype).eval()
    state = {k: torch.from_numpy(v).to(dtype) for k, v in to_llama_state_dict(params, config).items()}
    result = model.load_state_dict(state, strict=False)
    missing = set(result.missing_keys) - ({"lm_head.weight"} if config.tied_head else set())
    if missing or result.unexpected_keys:
        raise ValueError(f"llama_model: missing {sorted(missing)}, unexpected {sorted(result.unexpected_keys)}")
    if config.tied_head:
        model.tie_weights()
        if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
            raise ValueError("llama_model: the tied head does not share the embedding's storage")
    return model
