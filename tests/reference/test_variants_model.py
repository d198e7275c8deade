"""The whole model under every variant (docs/variants.md): finite differences of the loss, the named
activations, the variants against each other, and an independent oracle (transformers' Llama).

Finite differences: as in test_model_gradcheck.py (same stencil, same bound: per sampled coordinate
rel = |num - ana| / max(|num|, |ana|, 1e-5) <= 1e-6), on GPT2Config.tiny() (2 layers, C 16, V 64,
n_ctx 16) with one option switched on at a time, and on the all-options combination with 4 query
heads of size 4 sharing 2 key/value heads. B = 2, T = 9, two ignored targets, a repeated id.

Tolerances elsewhere, float64: two computations of one thing that differ only in the order of
rounding get 1e-12 of the tensor's largest value (a whole forward/backward, as test_model.py);
against transformers 1e-10 (other kernels throughout), as test_model.py for GPT-2.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from reference import activations, forward, forward_backward
from reference.gradcheck import numerical_gradient, relative_error
from reference.layers import layernorm_forward, rmsnorm_forward, silu_forward
from reference.model import gpt2_backward, gpt2_forward
from reference.rope import rope_forward
from weights import GPT2Config, activation_names, param_shapes, synthetic

TOL = 1e-6
COORDS_PER_TENSOR = 16  # as test_model_gradcheck.py
TINY = GPT2Config.tiny()
B, T = 2, 9

ALL_OPTIONS = dict(
    n_head=4, n_kv_head=2, position="rope", rope_theta=500.0, norm="rmsnorm", mlp="swiglu", mlp_hidden=24,
    bias=False, tied_head=False,
)  # fmt: skip
VARIANTS = {
    "rope": dict(position="rope"),
    "rmsnorm": dict(norm="rmsnorm"),
    "swiglu": dict(mlp="swiglu", mlp_hidden=24),
    "gqa": dict(n_kv_head=1),
    "nobias": dict(bias=False),
    "untied": dict(tied_head=False),
    "all": ALL_OPTIONS,
}


def variant(name: str) -> GPT2Config:
    return dataclasses.replace(TINY, **VARIANTS[name])


def batch(config=TINY, B=B, T=T):
    rng = np.random.default_rng(11)
    idx = rng.integers(0, config.vocab_size, (B, T))
    idx[1, 5] = idx[0, 2] = idx[1, 1]  # one id three times
    targets = rng.integers(0, config.vocab_size, (B, T))
    targets[0, 4] = targets[1, 8] = -1
    return idx, targets


def sampled_coords(name, shape, rng, idx):
    coords = [tuple(int(rng.integers(0, s)) for s in shape) for _ in range(COORDS_PER_TENSOR)]
    if name == "wte.weight":  # rows the embedding reads, incl. the repeated id
        coords += [(int(idx[1, 1]), int(rng.integers(0, shape[1]))), (int(idx[0, 0]), int(rng.integers(0, shape[1])))]
    if name == "wpe.weight":  # rows inside T
        coords += [(int(rng.integers(0, T)), int(rng.integers(0, shape[1]))) for _ in range(3)]
    return coords


# ----------------------------------------------------------------------------- finite differences
CASES = [(name, "naive", None) for name in VARIANTS] + [("gqa", "tiled", 4), ("all", "tiled", 4)]


@pytest.mark.parametrize("name,attention,block_size", CASES, ids=[f"{n}-{a}" for n, a, _ in CASES])
def test_every_parameter_tensor_matches_finite_differences(name, attention, block_size):
    cfg = variant(name)
    params = synthetic(cfg, seed=3, dtype=np.float64)
    idx, targets = batch(cfg)
    kw = {"attention": attention} | ({"block_size": block_size} if block_size else {})
    _, _, acts = gpt2_forward(params, cfg, idx, targets, **kw)
    grads = gpt2_backward(params, cfg, acts, **({"block_size": block_size} if block_size else {}))
    assert list(grads) == list(param_shapes(cfg))
    loss = lambda: gpt2_forward(params, cfg, idx, targets, **kw)[1]
    rng = np.random.default_rng(12)
    failures, worst = [], 0.0
    for tensor, shape in param_shapes(cfg).items():
        assert grads[tensor].shape == shape and grads[tensor].dtype == np.float64, tensor
        coords = sampled_coords(tensor, shape, rng, idx)
        num = numerical_gradient(loss, params[tensor], coords)
        ana = np.array([grads[tensor][c] for c in coords])
        rel = relative_error(num, ana)
        worst = max(worst, rel.max())
        for c, n, a, r in zip(coords, num, ana, rel, strict=True):
            if r > TOL:
                failures.append(f"{tensor}{c}: num {n!r} ana {a!r} rel {r:.2e}")
    assert not failures, "\n".join(failures)
    print(f"{name} {attention}: worst relative error {worst:.2e} over {len(param_shapes(cfg))} tensors")


# ----------------------------------------------------------------------------- the named activations
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_activations_are_the_contract_table(name, dtype):
    cfg = variant(name)
    params = synthetic(cfg, seed=1, dtype=dtype)
    idx, _ = batch(cfg)
    acts = activations(params, cfg, idx)
    assert list(acts) == activation_names(cfg)
    assert ("h.0.rope" in acts) == (cfg.position == "rope") and ("h.1.swiglu" in acts) == (cfg.mlp == "swiglu")
    widths = {"qkv": cfg.qkv_width, "rope": cfg.qkv_width, "fc": cfg.fc_width, "gelu": cfg.hidden,
              "swiglu": cfg.hidden, "logits": cfg.vocab_size}  # fmt: skip
    for act, a in acts.items():
        assert a.shape == (B, T, widths.get(act.split(".")[-1], cfg.n_embd)), act
        assert a.dtype == dtype, act
    np.testing.assert_array_equal(acts["logits"], forward(params, cfg, idx)[0])
    assert list(activations(params, cfg, idx, attention="tiled")) == activation_names(cfg)


def test_activations_mean_what_the_variants_say():
    """All options on: each name is its formula applied to the names before it (float64)."""
    cfg = variant("all")
    p = synthetic(cfg, seed=1, dtype=np.float64)
    idx, _ = batch(cfg)
    a = activations(p, cfg, idx)
    H, eps = cfg.hidden, cfg.layer_norm_eps
    np.testing.assert_array_equal(a["embed"], p["wte.weight"][idx])  # no wpe
    ms = (a["embed"] ** 2).mean(-1, keepdims=True)
    np.testing.assert_allclose(a["h.0.ln_1"], a["embed"] / np.sqrt(ms + eps) * p["h.0.ln_1.weight"], rtol=1e-14)
    np.testing.assert_allclose(a["h.0.qkv"], a["h.0.ln_1"] @ p["h.0.attn.c_attn.weight"], rtol=1e-13)  # no bias
    np.testing.assert_array_equal(a["h.0.rope"], rope_forward(a["h.0.qkv"], 4, 2, 500.0))  # config.rope_theta
    assert not np.allclose(a["h.0.rope"], rope_forward(a["h.0.qkv"], 4, 2, 10000.0))
    fc = a["h.1.fc"]
    np.testing.assert_allclose(a["h.1.swiglu"], silu_forward(fc[..., :H]) * fc[..., H:], rtol=1e-15)
    np.testing.assert_array_equal(a["h.1.resid_2"], a["h.1.resid_1"] + a["h.1.mlp_proj"])
    np.testing.assert_allclose(a["logits"], a["ln_f"] @ p["lm_head.weight"].T, rtol=1e-13)  # untied


# ----------------------------------------------------------------------------- the variants against each other
def test_no_bias_is_the_biased_model_with_zero_biases():
    cfg = variant("nobias")
    p = synthetic(cfg, seed=4, dtype=np.float64)
    zeros = {n: (p[n] if n in p else np.zeros(s)) for n, s in param_shapes(TINY).items()}
    idx, targets = batch()
    logits, loss, grads = forward_backward(p, cfg, idx, targets)
    logits_z, loss_z, grads_z = forward_backward(zeros, TINY, idx, targets)
    np.testing.assert_array_equal(logits, logits_z)  # x @ W and x @ W + 0: the same numbers
    assert loss == loss_z
    assert set(grads) == set(p) and not any(".bias" in n for n in grads)
    for n in grads:
        np.testing.assert_array_equal(grads[n], grads_z[n], err_msg=n)


def test_untied_head_with_a_copy_of_wte_splits_the_tied_gradient():
    """lm_head = wte: the same logits; the tied wte gradient is the untied wte's (the embedding's
    scatter-add alone) plus lm_head's (the head's term)."""
    cfg = variant("untied")
    tied = synthetic(TINY, seed=5, dtype=np.float64)
    untied = dict(tied, **{"lm_head.weight": tied["wte.weight"].copy()})
    idx, targets = batch()
    logits_t, _, g_t = forward_backward(tied, TINY, idx, targets)
    logits_u, _, g_u = forward_backward(untied, cfg, idx, targets)
    np.testing.assert_array_equal(logits_u, logits_t)
    np.testing.assert_allclose(g_u["wte.weight"] + g_u["lm_head.weight"], g_t["wte.weight"], rtol=0,
                               atol=1e-15 * np.abs(g_t["wte.weight"]).max())  # fmt: skip
    unused = sorted(set(range(TINY.vocab_size)) - set(idx.ravel().tolist()))
    assert np.all(g_u["wte.weight"][unused] == 0)  # rows the batch never reads: no head term any more
    assert np.abs(g_u["lm_head.weight"][unused]).min() > 0  # every row is scored at every position


def test_gqa_model_is_the_multi_head_model_with_repeated_kv_columns():
    """n_kv_head = 1 of 2 heads: the same model as GPT-2 whose c_attn copies kv head 0 into both heads'
    k and v columns; the GQA gradient of a kv column is the sum of the two copies' gradients."""
    cfg = variant("gqa")
    p = synthetic(cfg, seed=6, dtype=np.float64)
    C, HS = TINY.n_embd, TINY.head_size
    mha = dict(p)
    for i in range(TINY.n_layer):
        for kind in ("weight", "bias"):
            w = p[f"h.{i}.attn.c_attn.{kind}"]  # [q (2 heads) | k (1) | v (1)]
            q, k, v = w[..., :C], w[..., C : C + HS], w[..., C + HS :]
            mha[f"h.{i}.attn.c_attn.{kind}"] = np.concatenate([q, k, k, v, v], axis=-1)
    idx, targets = batch()
    logits, loss, grads = forward_backward(p, cfg, idx, targets)
    logits_m, loss_m, grads_m = forward_backward(mha, TINY, idx, targets)
    np.testing.assert_allclose(logits, logits_m, rtol=0, atol=1e-12 * np.abs(logits_m).max())
    for i in range(TINY.n_layer):
        for kind in ("weight", "bias"):
            g = grads_m[f"h.{i}.attn.c_attn.{kind}"]
            expect = np.concatenate([g[..., :C], g[..., C : C + HS] + g[..., C + HS : C + 2 * HS],
                                     g[..., 2 * C : 2 * C + HS] + g[..., 2 * C + HS :]], axis=-1)  # fmt: skip
            got = grads[f"h.{i}.attn.c_attn.{kind}"]
            np.testing.assert_allclose(got, expect, rtol=0, atol=1e-12 * np.abs(expect).max())
    for n in grads:
        if "c_attn" not in n:
            np.testing.assert_allclose(grads[n], grads_m[n], rtol=0, atol=1e-12 * np.abs(grads_m[n]).max(), err_msg=n)


def test_rope_model_has_no_position_table_and_sees_order():
    cfg = variant("rope")
    p = synthetic(cfg, seed=7, dtype=np.float64)
    assert "wpe.weight" not in p
    idx = np.array([[3, 9, 27, 5]])
    logits = forward(p, cfg, idx)[0]
    # the last token's logits change when the earlier tokens are permuted: positions are seen
    permuted = forward(p, cfg, idx[:, [1, 0, 2, 3]])[0]
    assert np.abs(logits[0, -1] - permuted[0, -1]).max() > 1e-6
    # One token repeated: rope rotates only q and k, and every v is the same, so each position's
    # attention output is that v whatever the weights, and all positions give the same logits.
    # Learned positions (GPT-2) add wpe to the residual stream, so there they differ.
    same = np.full((1, 6), 17)
    rep = forward(p, cfg, same)[0]
    np.testing.assert_allclose(rep, np.broadcast_to(rep[:, :1], rep.shape), rtol=0, atol=1e-14)
    gpt2 = forward(synthetic(TINY, seed=7, dtype=np.float64), TINY, same)[0]
    assert np.abs(gpt2[:, 1:] - gpt2[:, :1]).max() > 1e-6


def test_rmsnorm_model_uses_rmsnorm_everywhere():
    cfg = variant("rmsnorm")
    p = synthetic(cfg, seed=8, dtype=np.float64)
    assert not any(n.startswith(("ln_f.bias",)) or n.endswith(("ln_1.bias", "ln_2.bias")) for n in p)
    idx, _ = batch()
    a = activations(p, cfg, idx)
    for name, x_in in (("h.0.ln_1", "embed"), ("h.1.ln_2", "h.1.resid_1"), ("ln_f", "h.1.resid_2")):
        expect, _ = rmsnorm_forward(a[x_in], p[name + ".weight"], cfg.layer_norm_eps)
        np.testing.assert_array_equal(a[name], expect)
        other, _, _ = layernorm_forward(a[x_in], p[name + ".weight"], None, cfg.layer_norm_eps)
        assert not np.allclose(a[name], other)


# ----------------------------------------------------------------------------- oracle: transformers' Llama
def llama_oracle(cfg: GPT2Config, params: dict):
    """transformers.LlamaForCausalLM in float64 holding our tensors: Llama is the all-options model.

    Even in a float64 model, transformers computes two things in float32: the rotary tables
    (LlamaRotaryEmbedding) and RMSNorm (LlamaRMSNorm casts its input to float32). Both are replaced
    by the same formulas in float64, or the two models would differ by ~1e-7 through rounding alone
    (measured: 2.6e-8 on logits of size 0.4). Attention is SDPA, which keeps float64."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    C, NH, NKV, HS, H = cfg.n_embd, cfg.n_head, cfg.kv_heads, cfg.head_size, cfg.hidden
    lcfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=C, intermediate_size=H, num_hidden_layers=cfg.n_layer,
        num_attention_heads=NH, num_key_value_heads=NKV, head_dim=HS, max_position_embeddings=cfg.n_ctx,
        rms_norm_eps=cfg.layer_norm_eps, rope_theta=cfg.rope_theta, attention_bias=False, mlp_bias=False,
        tie_word_embeddings=cfg.tied_head, hidden_act="silu", attention_dropout=0.0, attn_implementation="sdpa",
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(lcfg).double().eval()
    assert model.config._attn_implementation == "sdpa"
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    state = {"model.embed_tokens.weight": t(params["wte.weight"]), "model.norm.weight": t(params["ln_f.weight"])}
    for i in range(cfg.n_layer):
        h, m = f"h.{i}.", f"model.layers.{i}."
        w = params[h + "attn.c_attn.weight"]  # (C, (NH + 2 NKV) HS), ours (in, out); torch's Linear is (out, in)
        state[m + "self_attn.q_proj.weight"] = t(w[:, : NH * HS].T)
        state[m + "self_attn.k_proj.weight"] = t(w[:, NH * HS : (NH + NKV) * HS].T)
        state[m + "self_attn.v_proj.weight"] = t(w[:, (NH + NKV) * HS :].T)
        state[m + "self_attn.o_proj.weight"] = t(params[h + "attn.c_proj.weight"].T)
        state[m + "mlp.gate_proj.weight"] = t(params[h + "mlp.c_fc.weight"][:, :H].T)
        state[m + "mlp.up_proj.weight"] = t(params[h + "mlp.c_fc.weight"][:, H:].T)
        state[m + "mlp.down_proj.weight"] = t(params[h + "mlp.c_proj.weight"].T)
        state[m + "input_layernorm.weight"] = t(params[h + "ln_1.weight"])
        state[m + "post_attention_layernorm.weight"] = t(params[h + "ln_2.weight"])
    if not cfg.tied_head:
        state["lm_head.weight"] = t(params["lm_head.weight"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if cfg.tied_head else set()), (missing, unexpected)

    inv_freq = torch.from_numpy(cfg.rope_theta ** (-2.0 * np.arange(HS // 2) / HS))

    def rotary_float64(x, position_ids):
        freqs = position_ids[..., None].double() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    model.model.rotary_emb.forward = rotary_float64

    def rmsnorm_float64(norm):
        def forward(x):
            return norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))

        return forward

    norms = [m for m in model.modules() if type(m).__name__ == "LlamaRMSNorm"]
    assert len(norms) == 2 * cfg.n_layer + 1
    for norm in norms:
        norm.forward = rmsnorm_float64(norm)
    return torch, model


def grads_from_llama(cfg, model):
    """The Llama gradients under our names and layout."""
    NH, NKV, HS = cfg.n_head, cfg.kv_heads, cfg.head_size
    g = {n: prm.grad.numpy() for n, prm in model.named_parameters()}
    out = {"wte.weight": g["model.embed_tokens.weight"], "ln_f.weight": g["model.norm.weight"]}
    for i in range(cfg.n_layer):
        h, m = f"h.{i}.", f"model.layers.{i}."
        out[h + "ln_1.weight"] = g[m + "input_layernorm.weight"]
        out[h + "ln_2.weight"] = g[m + "post_attention_layernorm.weight"]
        out[h + "attn.c_attn.weight"] = np.concatenate(
            [
                g[m + "self_attn.q_proj.weight"].T,
                g[m + "self_attn.k_proj.weight"].T,
                g[m + "self_attn.v_proj.weight"].T,
            ],
            axis=1,
        )
        assert out[h + "attn.c_attn.weight"].shape[1] == (NH + 2 * NKV) * HS
        out[h + "attn.c_proj.weight"] = g[m + "self_attn.o_proj.weight"].T
        out[h + "mlp.c_fc.weight"] = np.concatenate([g[m + "mlp.gate_proj.weight"].T, g[m + "mlp.up_proj.weight"].T], 1)
        out[h + "mlp.c_proj.weight"] = g[m + "mlp.down_proj.weight"].T
    if not cfg.tied_head:
        out["lm_head.weight"] = g["lm_head.weight"]
    return out


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("attention", ["naive", "tiled"])
def test_all_options_match_transformers_llama_in_float64(tied, attention):
    """The all-options config is a Llama: logits, loss and every gradient against transformers' autograd.
    1e-10 of each tensor's largest value, as for GPT-2 against GPT2LMHeadModel (test_model.py)."""
    cfg = dataclasses.replace(variant("all"), tied_head=tied)
    params = synthetic(cfg, seed=9, dtype=np.float64)
    torch, model = llama_oracle(cfg, params)
    idx, targets = batch(cfg, T=13)
    logits, loss, grads = forward_backward(params, cfg, idx, targets, attention=attention)
    model.zero_grad()
    out = model(torch.from_numpy(idx))
    hf_loss = torch.nn.functional.cross_entropy(
        out.logits.reshape(-1, cfg.vocab_size), torch.from_numpy(targets).reshape(-1), ignore_index=-1
    )
    hf_loss.backward()
    hf_logits = out.logits.detach().numpy()
    assert np.abs(logits - hf_logits).max() <= 1e-10 * np.abs(hf_logits).max()
    assert abs(loss - hf_loss.item()) <= 1e-12 * abs(loss)
    hf_grads = grads_from_llama(cfg, model)
    assert set(hf_grads) == set(grads)
    for name in grads:
        ref, got = hf_grads[name], grads[name]
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err <= 1e-10, f"{name}: gradient differs from transformers' Llama by {err:.2e} (relative to max)"
