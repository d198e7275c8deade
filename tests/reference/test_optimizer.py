"""AdamW: the contract formula, checked against torch.optim.AdamW and by hand; it trains."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from reference import adamw_init, adamw_step, forward_backward
from weights import GPT2Config, synthetic

CFG = GPT2Config.tiny()
HYPER = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1}


def test_matches_torch_adamw_over_five_steps():
    """torch.optim.AdamW with weight decay on the 2-D tensors only (two param groups), float64.

    Same formula, rounding in a different order (torch divides sqrt(v) by sqrt(1 - beta2^t)
    instead of v by (1 - beta2^t)): after 5 steps they agree to 1e-13 relative to each
    tensor's step size, nothing like the 1e-3..1 a missed bias correction or decay term costs.
    """
    torch = pytest.importorskip("torch")
    params = synthetic(CFG, seed=4, dtype=np.float64)
    start = {k: v.copy() for k, v in params.items()}
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    decay = [p for p in tparams.values() if p.ndim == 2]
    no_decay = [p for p in tparams.values() if p.ndim != 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": HYPER["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=HYPER["lr"], betas=(HYPER["beta1"], HYPER["beta2"]), eps=HYPER["eps"],
    )  # fmt: skip
    state = {}
    rng = np.random.default_rng(0)
    for _ in range(5):
        grads = {k: rng.standard_normal(v.shape) * rng.choice([1e-4, 1.0]) for k, v in params.items()}
        adamw_step(params, grads, state, **HYPER)
        for k, p in tparams.items():
            p.grad = torch.from_numpy(grads[k])
        opt.step()
    assert state["t"] == 5
    for k, p in tparams.items():
        moved = np.abs(p.detach().numpy() - start[k]).max()
        err = np.abs(params[k] - p.detach().numpy()).max()
        assert err <= 1e-13 * moved, f"{k}: {err:.2e} vs a total move of {moved:.2e}"


def test_first_step_by_hand_and_decay_only_on_matrices():
    """One step written out by hand; the same few float64 operations, so 1e-15 (a few ulps)."""
    params = {"w": np.full((2, 2), 2.0), "b": np.full(3, 2.0)}
    grads = {"w": np.full((2, 2), 0.5), "b": np.full(3, -0.25)}
    state = adamw_init(params)
    adamw_step(params, grads, state, lr=0.1, weight_decay=0.5)
    # step 1: m_hat = g, v_hat = g^2, so the Adam step is lr * g / (|g| + eps) = lr * sign(g) (eps aside)
    w_expect = 2.0 * (1 - 0.1 * 0.5) - 0.1 * 0.5 / (0.5 + 1e-8)
    b_expect = 2.0 + 0.1 * 0.25 / (0.25 + 1e-8)  # 1-D: no decay
    np.testing.assert_allclose(params["w"], w_expect, rtol=1e-15)
    np.testing.assert_allclose(params["b"], b_expect, rtol=1e-15)
    np.testing.assert_allclose(state["m"]["w"], 0.1 * 0.5, rtol=1e-15)
    np.testing.assert_allclose(state["v"]["b"], 0.05 * 0.0625, rtol=1e-15)


def test_float32_state_stays_float32_and_bad_grads_are_refused():
    params = synthetic(CFG, seed=1)
    grads = {k: np.ones_like(v) for k, v in params.items()}
    state = {}
    adamw_step(params, grads, state, lr=1e-3)
    assert all(p.dtype == np.float32 for p in params.values())
    assert all(m.dtype == np.float32 for m in state["m"].values())
    with pytest.raises(ValueError, match="missing"):
        adamw_step(params, {k: v for k, v in grads.items() if k != "wte.weight"}, state, lr=1e-3)
    with pytest.raises(ValueError, match="'ln_f.bias' has shape"):
        adamw_step(params, dict(grads, **{"ln_f.bias": np.ones(3, np.float32)}), state, lr=1e-3)


def test_training_on_one_batch_drives_the_loss_down():
    """Overfitting one batch is the end-to-end check of forward, backward and optimizer together:
    30 steps at lr 1e-2 take the tiny model from ~log(64) = 4.16 to below half of that."""
    params = synthetic(CFG, seed=0, dtype=np.float64)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, CFG.vocab_size, (2, 12))
    targets = np.roll(idx, -1, axis=1)
    targets[:, -1] = -1
    state = {}
    losses = []
    for _ in range(30):
        _, loss, grads = forward_backward(params, CFG, idx, targets)
        adamw_step(params, grads, state, lr=1e-2)
        losses.append(loss)
    assert losses[0] > 4.0 and losses[-1] < 0.5 * losses[0], losses


# Every variant option on (docs/variants.md): an untied lm_head (V, C), RMSNorm weights without biases,
# a fused SwiGLU c_fc (C, 2H), a GQA c_attn (C, (NH + 2 NKV) HS).
LLAMA = dataclasses.replace(
    CFG, position="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1, bias=False, tied_head=False
)  # fmt: skip


def test_variant_tensors_decay_by_rank():
    """With zero gradients the Adam step is 0 / (0 + eps) = 0, so one step is the decay alone: every 2-D
    tensor (lm_head included) shrinks by exactly (1 - lr * wd), every 1-D one (the norms' weights) stays."""
    params = synthetic(LLAMA, seed=4, dtype=np.float64)
    assert params["lm_head.weight"].ndim == 2 and "h.0.ln_1.bias" not in params
    before = {k: v.copy() for k, v in params.items()}
    adamw_step(params, {k: np.zeros_like(v) for k, v in params.items()}, {}, lr=0.1, weight_decay=0.5)
    for k, p in params.items():
        expect = before[k] * (1.0 - 0.1 * 0.5) if p.ndim == 2 else before[k]
        np.testing.assert_array_equal(p, expect, err_msg=k)


def test_training_a_variant_on_one_batch_drives_the_loss_down():
    """The same end-to-end check as for GPT-2 above, with every variant option on."""
    params = synthetic(LLAMA, seed=0, dtype=np.float64)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, LLAMA.vocab_size, (2, 12))
    targets = np.roll(idx, -1, axis=1)
    targets[:, -1] = -1
    state = {}
    losses = []
    for _ in range(30):
        _, loss, grads = forward_backward(params, LLAMA, idx, targets)
        adamw_step(params, grads, state, lr=1e-2)
        losses.append(loss)
    assert losses[0] > 4.0 and losses[-1] < 0.5 * losses[0], losses
