"""The assembled model: an independent oracle (transformers), the named activations, dtypes, bad input.

Tolerances, float64 unless stated: the same math in a different order of summation differs by
rounding only, ~1e-16 per operation; 1e-14 (a few dozen ulps) for short chains such as one
attention layer, 1e-12 of a tensor's scale for a whole forward/backward, 1e-10 against another
library (different kernels throughout). A real bug costs 1e-5 or more at these sizes.
"""

from __future__ import annotations

import numpy as np
import pytest

from reference import activations, forward, forward_backward
from reference.model import activation_names
from weights import GPT2Config, param_shapes, save, synthetic

CFG = GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=80, n_ctx=24)


def batch(B=2, T=11, seed=0, ignore=True):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, CFG.vocab_size, (B, T))
    targets = rng.integers(0, CFG.vocab_size, (B, T))
    if ignore:
        targets[0, 0] = targets[1, -1] = -1
    return idx, targets


# ----------------------------------------------------------------------------- oracle: transformers
@pytest.fixture(scope="module")
def hf_float64(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    params = synthetic(CFG, seed=5)
    folder = tmp_path_factory.mktemp("hf")
    save(params, CFG, folder)
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).double().eval()
    return torch, model, {k: v.astype(np.float64) for k, v in params.items()}


@pytest.mark.parametrize("attention", ["naive", "tiled"])
def test_logits_loss_grads_match_transformers_in_float64(hf_float64, attention):
    """transformers' GPT2LMHeadModel (torch autograd, float64) is an independent implementation.

    Tolerance: both compute in float64 with different summation orders; 1e-10 relative to
    each tensor's largest value is ~1e6 ulps of headroom yet far below any real bug (a wrong
    eps, GELU form or missed transpose shows at 1e-5 or more).
    """
    torch, model, params = hf_float64
    idx, targets = batch()
    logits, loss, grads = forward_backward(params, CFG, idx, targets, attention=attention)
    model.zero_grad()
    out = model(torch.from_numpy(idx))
    hf_loss = torch.nn.functional.cross_entropy(
        out.logits.reshape(-1, CFG.vocab_size), torch.from_numpy(targets).reshape(-1), ignore_index=-1
    )
    hf_loss.backward()
    hf_logits = out.logits.detach().numpy()
    assert np.abs(logits - hf_logits).max() <= 1e-10 * np.abs(hf_logits).max()
    assert abs(loss - hf_loss.item()) <= 1e-12 * abs(loss)
    hf_grads = {n: p.grad.numpy() for n, p in model.transformer.named_parameters()}
    for name in param_shapes(CFG):
        ref, got = hf_grads[name], grads[name]
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err <= 1e-10, f"{name}: gradient differs from transformers by {err:.2e} (relative to max)"


def test_block_outputs_match_transformers_hidden_states(hf_float64):
    torch, model, params = hf_float64
    idx, _ = batch()
    acts = activations(params, CFG, idx)
    with torch.no_grad():
        hidden = model(torch.from_numpy(idx), output_hidden_states=True).hidden_states
    # hidden_states: embeddings, each block's output except the last, then ln_f of the last block.
    # Forward only (no head, no backward), so 1e-12 of the scale rather than the 1e-10 above.
    expect = {"embed": hidden[0], "h.0.resid_2": hidden[1], "ln_f": hidden[2]}
    for name, h in expect.items():
        np.testing.assert_allclose(acts[name], h.numpy(), rtol=0, atol=1e-12 * np.abs(h.numpy()).max(), err_msg=name)


# ----------------------------------------------------------------------------- activations
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_are_the_contract_table(dtype):
    params = synthetic(CFG, seed=1, dtype=dtype)
    idx, _ = batch()
    B, T = idx.shape
    C, V = CFG.n_embd, CFG.vocab_size
    acts = activations(params, CFG, idx)
    assert list(acts) == activation_names(CFG)
    widths = {"qkv": 3 * C, "fc": 4 * C, "gelu": 4 * C}
    for name, a in acts.items():
        last = V if name == "logits" else widths.get(name.split(".")[-1], C)
        assert a.shape == (B, T, last), name
        assert a.dtype == dtype, name
    # the names mean what the table says
    p = params
    np.testing.assert_array_equal(acts["embed"], p["wte.weight"][idx] + p["wpe.weight"][:T])
    np.testing.assert_array_equal(acts["h.1.resid_1"], acts["h.0.resid_2"] + acts["h.1.attn_proj"])
    np.testing.assert_array_equal(acts["h.0.resid_2"], acts["h.0.resid_1"] + acts["h.0.mlp_proj"])
    np.testing.assert_allclose(
        acts["h.0.qkv"], acts["h.0.ln_1"] @ p["h.0.attn.c_attn.weight"] + p["h.0.attn.c_attn.bias"], rtol=1e-5
    )  # rtol 1e-5: in float32 the matmul may round differently from the model's (6e-8 per op, 32 terms)
    np.testing.assert_array_equal(acts["logits"], forward(params, CFG, idx)[0])


def test_attention_probabilities_on_request():
    params = synthetic(CFG, seed=1, dtype=np.float64)
    idx, _ = batch(T=7)
    acts = activations(params, CFG, idx, with_attention_probs=True)
    att = acts["h.1.att"]
    assert att.shape == (2, CFG.n_head, 7, 7)
    np.testing.assert_allclose(att.sum(-1), 1.0, rtol=1e-14)
    tiled = activations(params, CFG, idx, attention="tiled")
    np.testing.assert_allclose(tiled["h.1.attn"], acts["h.1.attn"], rtol=0, atol=1e-14)  # O(1) values, 7 keys
    with pytest.raises(ValueError, match="naive"):
        activations(params, CFG, idx, attention="tiled", with_attention_probs=True)


# ----------------------------------------------------------------------------- dtype
def test_float32_end_to_end_and_close_to_float64():
    """float32 rounding (6e-8 per op) through 2 layers leaves logits within ~1e-5 of float64;
    2e-4 relative to the largest value of each tensor leaves a margin for the gradients' longer sums."""
    p32 = synthetic(CFG, seed=2, dtype=np.float32)
    p64 = {k: v.astype(np.float64) for k, v in p32.items()}
    idx, targets = batch()
    l32, loss32, g32 = forward_backward(p32, CFG, idx, targets)
    l64, loss64, g64 = forward_backward(p64, CFG, idx, targets)
    assert l32.dtype == np.float32 and all(g.dtype == np.float32 for g in g32.values())
    assert np.abs(l32 - l64).max() <= 2e-4 * np.abs(l64).max()
    assert abs(loss32 - loss64) <= 1e-5 * loss64
    for name in g64:
        assert np.abs(g32[name] - g64[name]).max() <= 2e-4 * np.abs(g64[name]).max(), name


def test_no_targets_gives_no_loss():
    params = synthetic(CFG, seed=1)
    idx, _ = batch()
    logits, loss = forward(params, CFG, idx)
    assert loss is None and logits.shape == (2, 11, CFG.vocab_size)
    with pytest.raises(ValueError, match="targets"):
        forward_backward(params, CFG, idx, None)


def test_ignored_positions_do_not_change_loss_or_grads():
    params = synthetic(CFG, seed=1, dtype=np.float64)
    idx, targets = batch(ignore=False)
    masked = targets.copy()
    masked[:, 5:] = -1
    _, loss_a, grads_a = forward_backward(params, CFG, idx, masked)
    _, loss_b, grads_b = forward_backward(params, CFG, idx[:, :5], targets[:, :5])
    # masking the tail = training on the prefix only (causality: the tail cannot affect the prefix);
    # the two runs differ only in matmul sizes, i.e. in rounding
    assert abs(loss_a - loss_b) <= 1e-14 * loss_b
    for name in grads_a:
        if name == "wpe.weight":
            np.testing.assert_allclose(grads_a[name], grads_b[name], rtol=0, atol=1e-15)
        else:
            assert np.abs(grads_a[name] - grads_b[name]).max() <= 1e-12 * np.abs(grads_b[name]).max(), name


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "idx,message",
    [
        (np.array([[1, 2, CFG.vocab_size]]), r"token id 80 at \[0, 2\] is outside \[0, vocab_size=80\)"),
        (np.array([[1, -3, 2]]), r"token id -3 at \[0, 1\]"),
        (np.zeros((1, CFG.n_ctx + 1), dtype=np.int64), r"T=25 exceeds n_ctx=24"),
        (np.zeros((1, 4), dtype=np.float32), r"integer array, got dtype float32"),
        (np.zeros(4, dtype=np.int64), r"expected shape \(B, T\), got \(4,\)"),
        (np.zeros((1, 0), dtype=np.int64), r"empty"),
    ],
)
def test_bad_idx_is_refused_by_name(idx, message):
    params = synthetic(CFG, seed=1)
    with pytest.raises(ValueError, match=message):
        forward(params, CFG, idx)


@pytest.mark.parametrize(
    "targets,message",
    [
        (np.array([[1, 2, -2]]), r"targets: id -2 at \[0, 2\]"),
        (np.array([[1, 80, 2]]), r"targets: id 80 at \[0, 1\]"),
        (np.array([[1, 2]]), r"targets: shape \(1, 2\) does not match idx shape \(1, 3\)"),
        (np.array([[1.0, 2.0, 3.0]]), r"targets: must be an integer array"),
        (np.array([[-1, -1, -1]]), r"every position is -1"),
    ],
)
def test_bad_targets_are_refused_by_name(targets, message):
    params = synthetic(CFG, seed=1)
    with pytest.raises(ValueError, match=message):
        forward_backward(params, CFG, np.array([[1, 2, 3]]), targets)


def test_bad_params_and_options_are_refused_by_name():
    params = synthetic(CFG, seed=1)
    idx = np.array([[1, 2, 3]])
    mixed = dict(params, **{"ln_f.bias": params["ln_f.bias"].astype(np.float64)})
    with pytest.raises(ValueError, match="mixed dtypes"):
        forward(mixed, CFG, idx)
    half = dict(params, **{"ln_f.bias": params["ln_f.bias"].astype(np.float16)})
    with pytest.raises(ValueError, match="'ln_f.bias' has dtype float16"):
        forward(half, CFG, idx)
    transposed = dict(params, **{"h.0.mlp.c_fc.weight": params["h.0.mlp.c_fc.weight"].T})
    with pytest.raises(ValueError, match="'h.0.mlp.c_fc.weight' has shape"):
        forward(transposed, CFG, idx)
    missing = {k: v for k, v in params.items() if k != "h.1.ln_2.weight"}
    with pytest.raises(ValueError, match="h.1.ln_2.weight"):
        forward(missing, CFG, idx)
    with pytest.raises(ValueError, match="attention must be one of"):
        forward(params, CFG, idx, attention="flash")
    with pytest.raises(TypeError, match="GPT2Config"):
        forward(params, {"n_layer": 2}, idx)


def test_inputs_are_not_modified_and_any_integer_dtype_is_accepted():
    params = synthetic(CFG, seed=1)
    before = {k: v.copy() for k, v in params.items()}
    idx, targets = batch()
    idx_copy, targets_copy = idx.copy(), targets.copy()
    _, loss64, grads = forward_backward(params, CFG, idx, targets)
    _, loss32, _ = forward_backward(params, CFG, idx.astype(np.int32), targets.astype(np.int16))
    _, loss_u8, _ = forward_backward(params, CFG, idx.astype(np.uint8), targets)
    assert loss64 == loss32 == loss_u8
    for name in params:
        np.testing.assert_array_equal(params[name], before[name], err_msg=f"{name} was modified")
        assert grads[name] is not params[name]
    np.testing.assert_array_equal(idx, idx_copy)
    np.testing.assert_array_equal(targets, targets_copy)
