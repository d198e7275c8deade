"""CUDA: the variants on the GPU, float32 (TF32 off) against float64 on the CPU, bf16 autocast with flash
SDPA and grouped-query attention, the KV cache, and torch.compile.

Every test here is marked `gpu` and skips without a CUDA device.

Tolerances (the ceiling rule of conformance/tolerances.py: the worst measured x 5, rounded up to 1-2-5):
  float32 CUDA vs float64 CPU, lively weights (qkv x15, c_fc x10; logits up to 0.54, gradients up to 0.37):
    float32 rounding through two layers, summed in the GPU kernels' order. Measured on one H200
    (torch 2.11.0+cu130, both attentions, the four configs below): logits 1.4e-6, loss 2.1e-7,
    gradients 5.6e-6 of each tensor's largest entry (on the CPU: 1.0e-6, 7.7e-7, 3.5e-6). Bounds:
    logits 1e-5, loss 2e-6, gradients 5e-5 of each tensor's largest entry.
  bf16 autocast vs float32: 8-bit mantissa (~4e-3 relative) over O(1) logits: within 0.1; the cached bf16
    pass within 0.05 of the one-shot bf16 pass (as test_generate.py's bf16 check).
  torch.compile vs eager, float32: the same kernels up to fusion, which reorders float32 sums: 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.torch_impl.variants import lively_params, variant
from torch_impl import contract
from torch_impl.model import GPT2, KVCache

pytestmark = pytest.mark.gpu


def _batch(config, B, T, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, config.vocab_size, (B, T)), rng.integers(0, config.vocab_size, (B, T))


@pytest.mark.parametrize("attention", ["math", "sdpa"])
@pytest.mark.parametrize("name", ["all", "mqa", "untied", "rope"])
def test_float32_cuda_matches_float64_cpu(name, attention):
    config = variant(name)
    p64 = lively_params(config, seed=31)
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    idx, targets = _batch(config, 4, config.n_ctx, seed=31)
    ref_logits, ref_loss, ref_grads = contract.forward_backward(
        GPT2.from_params(p64, config, dtype=torch.float64), idx, targets
    )
    model = GPT2.from_params(p32, config, device="cuda", attention=attention, padded_vocab_size=128)
    logits, loss, grads = contract.forward_backward(model, idx, targets)
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=1e-5)
    assert loss == pytest.approx(ref_loss, abs=2e-6)
    for n, g in ref_grads.items():
        np.testing.assert_allclose(grads[n], g, rtol=0, atol=5e-5 * np.abs(g).max(), err_msg=n)


def test_bf16_flash_gqa_cache_and_generation_on_cuda():
    """bf16 autocast, SDPA (flash kernels take enable_gqa), the cache of NKV bf16 heads; float32 greedy
    generation on CUDA with and without the cache gives the same tokens, all below vocab_size."""
    config = variant("all")
    params = lively_params(config, seed=7, dtype=np.float32)
    model = GPT2.from_params(params, config, device="cuda", padded_vocab_size=128)
    idx = torch.from_numpy(_batch(config, 2, 16, seed=7)[0]).cuda()
    with torch.no_grad(), contract.tf32_disabled():
        ref, _ = model(idx)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            full, _ = model(idx)
            cache = KVCache(config.n_layer, max_len=16)
            pieces = [model.forward_step(idx[:, :9], cache)] + [
                model.forward_step(idx[:, t : t + 1], cache) for t in range(9, 16)
            ]
        assert cache.k[1].dtype == torch.bfloat16 and cache.k[1].shape == (2, config.kv_heads, 16, config.head_size)
        torch.testing.assert_close(torch.cat(pieces, dim=1).float(), full.float(), rtol=0, atol=0.05)
        torch.testing.assert_close(full.float(), ref, rtol=0, atol=0.1)
        out = model.generate(idx[:, :4], 12, use_cache=True)
        assert torch.equal(out, model.generate(idx[:, :4], 12, use_cache=False))
        assert int(out.max()) < config.vocab_size


def test_compiled_variant_equals_eager_on_cuda():
    """torch.compile (fullgraph) of the all-options model: the rotary tables, the GQA SDPA and the untied
    padded head compile, and forward and backward equal the eager ones."""
    config = variant("all")
    params = lively_params(config, seed=8, dtype=np.float32)
    model = GPT2.from_params(params, config, device="cuda", padded_vocab_size=128)
    idx, targets = (torch.from_numpy(a).cuda() for a in _batch(config, 4, config.n_ctx, seed=8))
    compiled = torch.compile(model, fullgraph=True)
    with contract.tf32_disabled():
        results = []
        for m in (model, compiled):
            _, loss = m(idx, targets)
            results.append((loss.detach(), torch.autograd.grad(loss, list(model.parameters()))))
    (l1, g1), (l2, g2) = results
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())
