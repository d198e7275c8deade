"""Our GPT2 against transformers' GPT2LMHeadModel on the same weights: logits, loss, gradients, activations.

transformers is an independent GPT-2 (Conv1D layers that take the canonical (in, out) weights
as stored, its own attention, its own tied head), so agreement checks our transposes, GELU form,
LayerNorm eps, masking and weight tying all at once.

Tolerances:
  float64 vs float64: the two compute the same math in a different order, so they differ by
    rounding only (~1e-15 relative). 1e-10 leaves five orders of margin, while the smallest real
    mistake (erf instead of tanh GELU, ~5e-4; eps 1e-6 instead of 1e-5, ~1e-6 here) is far above it.
  float32 vs the float64 oracle: float32 rounding (2^-24 ~ 6e-8) grows through 3 layers and a
    32-wide dot product to ~1e-6 on O(1) logits; 2e-5 is an order above that and still catches all
    of the above except a wrong eps, which the float64 comparison covers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torch_impl import contract
from torch_impl.model import GPT2

F64_RTOL, F64_ATOL = 1e-10, 1e-10
F32_ATOL = 2e-5


def _hf_logits_loss_grads(hf, idx, targets):
    hf.zero_grad(set_to_none=True)
    logits = hf(torch.from_numpy(idx)).logits
    V = logits.size(-1)
    # HF's own loss shifts the labels; ours takes targets aligned with idx, so compute it directly.
    loss = F.cross_entropy(logits.reshape(-1, V), torch.from_numpy(targets).reshape(-1), ignore_index=-1)
    loss.backward()
    grads = {n: p.grad.numpy() for n, p in hf.transformer.named_parameters()}
    return logits.detach().numpy(), loss.item(), grads


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_float64_logits_loss_and_every_gradient_match(cfg, params64, oracle, ids, attention):
    idx, targets = ids(B=2, T=cfg.n_ctx, seed=1)
    ref_logits, ref_loss, ref_grads = _hf_logits_loss_grads(oracle(params64, cfg), idx, targets)
    model = GPT2.from_params(params64, cfg, dtype=torch.float64, attention=attention)
    logits, loss, grads = contract.forward_backward(model, idx, targets)
    assert logits.dtype == np.float64 and logits.shape == (2, cfg.n_ctx, cfg.vocab_size)
    np.testing.assert_allclose(logits, ref_logits, rtol=F64_RTOL, atol=F64_ATOL)
    assert loss == pytest.approx(ref_loss, rel=F64_RTOL)
    assert list(grads) == list(params64)  # canonical names, canonical order
    for name, g in grads.items():
        # HF's wte.weight gradient holds the head and the embedding terms (its head is tied), like ours.
        np.testing.assert_allclose(g, ref_grads[name], rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_float32_logits_match_float64_oracle(cfg, params, params64, oracle, ids, attention):
    idx, targets = ids(B=3, T=17, seed=2)
    ref_logits, ref_loss, _ = _hf_logits_loss_grads(oracle(params64, cfg), idx, targets)
    model = GPT2.from_params(params, cfg, attention=attention)
    logits, loss = contract.forward(model, idx, targets)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=F32_ATOL)
    assert loss == pytest.approx(ref_loss, abs=F32_ATOL)


def _hf_activations(hf, idx, n_layer):
    """Every named activation of docs/contract.md, captured from HF's modules by hooks."""
    acts: dict[str, torch.Tensor] = {}
    t = hf.transformer
    handles = []

    def out_hook(name):
        return lambda mod, inp, out: acts.__setitem__(name, out)

    def in_hook(name):
        return lambda mod, inp: acts.__setitem__(name, inp[0])

    handles.append(t.h[0].ln_1.register_forward_pre_hook(in_hook("embed")))
    for i, block in enumerate(t.h):
        p = f"h.{i}."
        handles.append(block.ln_1.register_forward_hook(out_hook(p + "ln_1")))
        handles.append(block.attn.c_attn.register_forward_hook(out_hook(p + "qkv")))
        handles.append(block.attn.c_proj.register_forward_pre_hook(in_hook(p + "attn")))
        handles.append(block.attn.c_proj.register_forward_hook(out_hook(p + "attn_proj")))
        handles.append(block.ln_2.register_forward_pre_hook(in_hook(p + "resid_1")))
        handles.append(block.ln_2.register_forward_hook(out_hook(p + "ln_2")))
        handles.append(block.mlp.c_fc.register_forward_hook(out_hook(p + "fc")))
        handles.append(block.mlp.act.register_forward_hook(out_hook(p + "gelu")))
        handles.append(block.mlp.c_proj.register_forward_hook(out_hook(p + "mlp_proj")))
        nxt = t.h[i + 1].ln_1 if i + 1 < n_layer else t.ln_f
        handles.append(nxt.register_forward_pre_hook(in_hook(p + "resid_2")))
    handles.append(t.ln_f.register_forward_hook(out_hook("ln_f")))
    with torch.no_grad():
        acts["logits"] = hf(torch.from_numpy(idx)).logits
    for h in handles:
        h.remove()
    return {k: v.numpy() for k, v in acts.items()}


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_every_named_activation_matches(cfg, params64, oracle, ids, attention):
    idx, _ = ids(B=2, T=11, seed=3)
    ref = _hf_activations(oracle(params64, cfg), idx, cfg.n_layer)
    model = GPT2.from_params(params64, cfg, dtype=torch.float64, attention=attention)
    acts = contract.activations(model, idx)
    per_block = ["ln_1", "qkv", "attn", "attn_proj", "resid_1", "ln_2", "fc", "gelu", "mlp_proj", "resid_2"]
    expected_names = ["embed"] + [f"h.{i}.{n}" for i in range(cfg.n_layer) for n in per_block] + ["ln_f", "logits"]
    assert sorted(acts) == sorted(expected_names) == sorted(ref)
    C, V = cfg.n_embd, cfg.vocab_size
    widths = {"qkv": 3 * C, "fc": 4 * C, "gelu": 4 * C, "logits": V}
    for name in expected_names:
        assert acts[name].shape == (2, 11, widths.get(name.rsplit(".", 1)[-1], C)), name
        np.testing.assert_allclose(acts[name], ref[name], rtol=F64_RTOL, atol=F64_ATOL, err_msg=name)


def test_greedy_generation_matches_argmax_of_the_oracle(cfg, params64, oracle, ids):
    """Cached greedy generation picks, at every step, the argmax of the oracle's last-position logits."""
    idx, _ = ids(B=2, T=5, seed=4)
    model = GPT2.from_params(params64, cfg, dtype=torch.float64)
    out = model.generate(torch.from_numpy(idx), max_new_tokens=10)
    hf = oracle(params64, cfg)
    seq = torch.from_numpy(idx)
    with torch.no_grad():
        for _ in range(10):
            nxt = hf(seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out, seq)
