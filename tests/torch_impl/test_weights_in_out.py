"""Weights in and out: from_params / to_params are exact, the Conv1D transposes are value-checked,
padding adds rows nobody sees, and a model built from a config starts from GPT-2's init."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torch_impl.model import CONV1D_WEIGHTS, GPT2
from weights import GPT2Config, num_params, param_shapes, tensor_kind


@pytest.mark.parametrize("padded", [None, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip_is_bit_exact(cfg, params, dtype, padded):
    model = GPT2.from_params(params, cfg, dtype=dtype, padded_vocab_size=padded)
    out = model.to_params()
    assert list(out) == list(param_shapes(cfg))
    for name, value in out.items():
        assert value.shape == params[name].shape and value.dtype == np.dtype(str(dtype).split(".")[1]), name
        assert value.flags.c_contiguous, name
        # float32 -> float64 -> float32 is exact, so both dtypes must give back the very same values.
        np.testing.assert_array_equal(value.astype(np.float32), params[name], err_msg=name)


def test_every_projection_computes_x_at_w_plus_b_with_the_stored_layout(cfg, params):
    """The transposes, checked by value: each nn.Linear computes x @ W + b with W as stored (in, out).

    attn.c_proj is square, so only values (not shapes) reveal a missed transpose.
    """
    model = GPT2.from_params(params, cfg, dtype=torch.float64)
    rng = np.random.default_rng(0)
    for i, block in enumerate(model.h):
        for layer, module in [
            ("attn.c_attn", block.attn.c_attn),
            ("attn.c_proj", block.attn.c_proj),
            ("mlp.c_fc", block.mlp.c_fc),
            ("mlp.c_proj", block.mlp.c_proj),
        ]:
            W, b = params[f"h.{i}.{layer}.weight"].astype(np.float64), params[f"h.{i}.{layer}.bias"]
            x = rng.standard_normal((5, W.shape[0]))
            with torch.no_grad():
                y = module(torch.from_numpy(x)).numpy()
            # float64 matmul of 32..128-term sums: rounding ~1e-16; 1e-12 is a safe bound.
            np.testing.assert_allclose(y, x @ W + b, rtol=0, atol=1e-12, err_msg=f"h.{i}.{layer}")
            if W.shape[0] == W.shape[1]:  # square: the check itself can tell the two layouts apart
                assert not np.allclose(x @ W, x @ W.T, atol=1e-3)


def test_state_dict_names_are_the_canonical_names(cfg):
    model = GPT2(cfg)
    assert [n for n, _ in model.named_parameters()] == list(param_shapes(cfg))
    assert {tensor_kind(n) for n in param_shapes(cfg)} >= set(CONV1D_WEIGHTS)


def test_padding_adds_zero_rows_that_change_nothing(cfg, params, ids):
    plain = GPT2.from_params(params, cfg)
    padded = GPT2.from_params(params, cfg, padded_vocab_size=128)
    assert padded.wte.weight.shape == (128, cfg.n_embd)
    assert torch.count_nonzero(padded.wte.weight[cfg.vocab_size :]) == 0
    idx, targets = ids(seed=5)
    idx, targets = torch.from_numpy(idx), torch.from_numpy(targets)
    with torch.no_grad():
        (l1, loss1), (l2, loss2) = plain(idx, targets), padded(idx, targets)
    assert l2.shape == (2, cfg.n_ctx, cfg.vocab_size)  # exactly V wide, never Vp
    # Same math on the same rows; only the matmul's output width differs, which may reorder nothing
    # but the BLAS blocking: allow float32 rounding (~1e-7 relative).
    torch.testing.assert_close(l2, l1, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss2, loss1, rtol=1e-6, atol=1e-6)
    assert plain.num_params() == padded.num_params() == num_params(cfg)


def test_num_params_of_124m_is_exact_with_and_without_padding():
    with torch.device("meta"):  # shapes only: no memory, no time
        plain = GPT2(GPT2Config.gpt2_124m())
        padded = GPT2(GPT2Config.gpt2_124m(), padded_vocab_size=50304)
    assert plain.num_params() == padded.num_params() == 124_439_808


def test_from_config_uses_gpt2_init(cfg):
    config = GPT2Config(n_layer=4, n_head=4, n_embd=128, vocab_size=2000, n_ctx=256)
    torch.manual_seed(0)
    model = GPT2(config, padded_vocab_size=2048)
    p = dict(model.named_parameters())
    proj_std = 0.02 / math.sqrt(2 * config.n_layer)
    # Sample std of n >= 16k normal draws: relative error 1/sqrt(2n) ~ 0.55%, so 3% is > 5 sigma.
    # Sample mean: standard error 0.02/sqrt(n) <= 1.6e-4, so 1e-3 is > 6 sigma.
    for name in ["wte.weight", "wpe.weight", "h.1.attn.c_attn.weight", "h.2.mlp.c_fc.weight"]:
        value = p[name][: config.vocab_size] if name == "wte.weight" else p[name]
        assert abs(value.std().item() - 0.02) < 0.03 * 0.02, name
        assert abs(value.mean().item()) < 1e-3, name
    for name in ["h.0.attn.c_proj.weight", "h.3.mlp.c_proj.weight"]:
        assert abs(p[name].std().item() - proj_std) < 0.03 * proj_std, name
    for name, value in p.items():
        kind = tensor_kind(name)
        if kind in ("ln_1.weight", "ln_2.weight", "ln_f.weight"):
            assert torch.all(value == 1), name
        elif kind.endswith(".bias"):
            assert torch.all(value == 0), name
    assert torch.count_nonzero(p["wte.weight"][config.vocab_size :]) == 0
    torch.manual_seed(0)
    again = GPT2(config, padded_vocab_size=2048)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True))


def test_from_params_rejects_bad_params(cfg, params):
    broken = dict(params)
    broken["h.0.attn.c_proj.weight"] = params["h.0.attn.c_proj.weight"][:, :-1]
    with pytest.raises(ValueError, match=r"h\.0\.attn\.c_proj\.weight.*shape"):
        GPT2.from_params(broken, cfg)
    missing = {k: v for k, v in params.items() if k != "ln_f.bias"}
    with pytest.raises(ValueError, match="missing.*ln_f.bias"):
        GPT2.from_params(missing, cfg)
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
        GPT2.from_params(params, cfg, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="padded_vocab_size must be an int >= vocab_size"):
        GPT2.from_params(params, cfg, padded_vocab_size=cfg.vocab_size - 1)
    with pytest.raises(ValueError, match="attention must be one of"):
        GPT2.from_params(params, cfg, attention="flash")
