"""The whole model (NumbaGPT2) against the float64 NumPy reference on a tiny config: logits, loss,
every gradient, named activations, AdamW steps, generation, and the input checks.
Tolerances: the project's float32 ceilings (helpers.py, docs/numba_impl.md)."""

from __future__ import annotations

import numpy as np
import pytest

import reference
from numba_impl.model import NumbaGPT2
from tests.numba_impl.helpers import (
    GRAD_L2_REL,
    GRAD_MAX_REL,
    LOGITS_MAX_REL,
    LOSS_REL,
    l2_rel,
    max_rel,
    needs_cuda,
    rng,
)
from weights import GPT2Config, synthetic

pytestmark = needs_cuda

# One block keeps the simulator fast; the main test also runs two blocks (block-to-block gradients).
CONFIG = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_ctx=8)
CONFIG_2L = GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=64, n_ctx=8)
B, T = 2, 8


def make_case(config):
    params = synthetic(config, seed=3)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    r = rng(12)
    idx = r.integers(0, CONFIG.vocab_size, (B, T))
    targets = r.integers(0, CONFIG.vocab_size, (B, T))
    targets[0, 2] = -1
    targets[1, 5] = -1
    return params, p64, idx, targets


@pytest.fixture(scope="module")
def case():
    return make_case(CONFIG)


def assert_within_ceilings(logits, loss, grads, ref):
    ref_logits, ref_loss, ref_grads = ref
    assert logits.shape == ref_logits.shape and logits.dtype == np.float32
    assert max_rel(logits, ref_logits) <= LOGITS_MAX_REL
    assert abs(loss - ref_loss) <= LOSS_REL * abs(ref_loss)
    assert set(grads) == set(ref_grads)
    for name, g in ref_grads.items():
        assert grads[name].shape == g.shape, name
        assert l2_rel(grads[name], g) <= GRAD_L2_REL, name
        assert max_rel(grads[name], g) <= GRAD_MAX_REL, name


@pytest.mark.parametrize(
    "kernels, attention, config",
    [("fast", "flash", CONFIG_2L), ("naive", "naive", CONFIG), ("fast", "naive", CONFIG)],
    ids=["fast-flash-2-layers", "naive", "fast-naive-attn"],
)
def test_forward_backward_matches_reference(kernels, attention, config):
    params, p64, idx, targets = make_case(config)
    ref = reference.forward_backward(p64, config, idx, targets)
    m = NumbaGPT2(params, config, max_batch=B, max_seq=T, kernels=kernels, attention=attention)
    assert_within_ceilings(*m.forward_backward(idx, targets), ref)


def test_forward_without_targets_and_a_shorter_batch_in_big_buffers(case):
    params, p64, idx, targets = case
    m = NumbaGPT2(params, CONFIG, max_batch=B, max_seq=T)
    short = idx[:1, :5]  # (1, 5) inside buffers sized (2, 8)
    logits, loss = m.forward(short)
    assert loss is None
    ref_logits, _ = reference.forward(p64, CONFIG, short)
    assert max_rel(logits, ref_logits) <= LOGITS_MAX_REL
    # then a full-size backward from the same model: nothing of the short call leaks in
    ref = reference.forward_backward(p64, CONFIG, idx, targets)
    assert_within_ceilings(*m.forward_backward(idx, targets), ref)


def test_activations_match_reference(case):
    params, p64, idx, _ = case
    acts = NumbaGPT2(params, CONFIG, max_batch=B, max_seq=T).activations(idx)
    ref = reference.activations(p64, CONFIG, idx)
    assert list(acts) == list(ref)
    for name, a in ref.items():
        assert acts[name].shape == a.shape, name
        assert max_rel(acts[name], a) <= LOGITS_MAX_REL, name


def test_adamw_steps_follow_reference_trajectory(case):
    """Two steps of forward_backward + AdamW (contract defaults, wd=0.1): the loss of each step at the
    loss ceiling, and every parameter within 1e-2 * lr * steps of the float64 trajectory. Why that
    number: an AdamW update moves an element by at most ~lr, and m/sqrt(v) is a ratio of the
    gradient to itself, so where a gradient element is as small as its own float32 noise (the
    gradient ceiling allows ~1e-4 of max|g| there) the update of that element is off by that noise's
    share of it; 1% of an update per step bounds what float32 gradients can do to the trajectory."""
    params, p64, idx, targets = case
    m = NumbaGPT2(params, CONFIG, max_batch=B, max_seq=T)
    ref_params = {k: v.copy() for k, v in p64.items()}
    state = {}
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    steps = 2
    for _ in range(steps):
        _, ref_loss, ref_grads = reference.forward_backward(ref_params, CONFIG, idx, targets)
        loss = m.step(idx, targets, **hp)
        assert abs(loss - ref_loss) <= LOSS_REL * abs(ref_loss)
        reference.adamw_step(ref_params, ref_grads, state, **hp)
    got = m.to_params()
    assert m.step_count == steps
    for name, p in ref_params.items():
        assert np.abs(got[name] - p).max() <= 1e-2 * hp["lr"] * steps, name
        assert not np.array_equal(got[name], params[name]), f"{name} did not move"


def test_to_params_round_trips(case):
    params = case[0]
    out = NumbaGPT2(params, CONFIG, max_batch=1, max_seq=4).to_params()
    assert list(out) == list(params)
    for name, p in params.items():
        assert out[name].dtype == np.float32 and np.array_equal(out[name], p), name


def test_greedy_generation_matches_reference(case):
    params, p64, idx, _ = case
    prompt = idx[:, :3]
    m = NumbaGPT2(params, CONFIG, max_batch=B, max_seq=T)
    got = m.generate(prompt, 3)
    ref = reference.generate(p64, CONFIG, prompt, 3, temperature=0.0)
    assert np.array_equal(got, ref)


def test_bad_inputs_raise_clear_errors(case):
    params, _, idx, targets = case
    m = NumbaGPT2(params, CONFIG, max_batch=B, max_seq=T)
    with pytest.raises(ValueError, match="token id 64 at idx"):
        m.forward(np.full((1, 2), 64))
    with pytest.raises(ValueError, match="token id -3"):
        m.forward(np.full((1, 2), -3))
    with pytest.raises(ValueError, match="T=9"):
        m.forward(np.zeros((1, 9), dtype=np.int64))
    with pytest.raises(ValueError, match="B=3"):
        m.forward(np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        m.forward(np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="integers"):
        m.forward(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="targets has shape"):
        m.forward_backward(idx, targets[:, :3])
    with pytest.raises(ValueError, match="target 64 at targets"):
        m.forward_backward(idx, np.full_like(targets, 64))
    with pytest.raises(ValueError, match="every target is -1"):
        m.forward_backward(idx, np.full_like(targets, -1))
    with pytest.raises(ValueError, match="max_seq"):
        NumbaGPT2(params, CONFIG, max_seq=CONFIG.n_ctx + 1)
    with pytest.raises(ValueError, match="attention"):
        NumbaGPT2(params, CONFIG, attention="sparse")
    bad = dict(params)
    bad["wpe.weight"] = bad["wpe.weight"][:4]
    with pytest.raises(ValueError, match="wpe.weight"):
        NumbaGPT2(bad, CONFIG)
