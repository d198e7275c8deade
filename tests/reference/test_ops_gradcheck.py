"""Every op's hand-written backward against float64 finite differences, every input, every coordinate.

Each op is turned into a scalar with a fixed random projection, f = sum(out * R), so that
d f / d out = R and the backward is called with dout = R. Every coordinate of every input
is differentiated numerically (the inputs are small) with reference.gradcheck's 6th-order
stencil, and the relative error

    rel = |num - ana| / max(|num|, |ana|, 1e-5)

must be <= 1e-6 for each coordinate (reference/gradcheck.py says why the floor is 1e-5
and why 1e-6 is reachable: the stencil's measured noise is ~1e-12 absolute).

The hand-computed checks (LayerNorm, GELU, scale, loss) compare one short formula evaluated two
ways in float64, so they allow 1e-15..1e-14 relative: a few ulps of 2.2e-16.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from reference import attention as A
from reference import layers as L
from reference.gradcheck import numerical_gradient, relative_error

TOL = 1e-6  # relative error per coordinate, the bar the reference must clear in float64

B, T, C, NH = 2, 5, 8, 2


def rand(rng, *shape, scale=1.0):
    return scale * rng.standard_normal(shape)


def assert_grad(name, f, x, ana):
    num = numerical_gradient(f, x)
    assert ana.shape == x.shape, f"{name}: gradient shape {ana.shape} != input shape {x.shape}"
    assert ana.dtype == np.float64
    rel = relative_error(num, ana)
    worst = np.unravel_index(rel.argmax(), rel.shape)
    assert rel.max() <= TOL, (
        f"{name}: worst relative error {rel.max():.2e} at {worst}: numerical {num[worst]!r}, analytic {ana[worst]!r}"
    )


def test_embedding_scatter_add_with_repeated_tokens():
    rng = np.random.default_rng(0)
    V, maxT = 7, 9
    wte, wpe = rand(rng, V, C), rand(rng, maxT, C)
    idx = np.array([[1, 3, 1, 1, 6], [3, 0, 6, 1, 1]])  # repeats: the scatter-add must accumulate
    R = rand(rng, B, T, C)
    f = lambda: float((L.embedding_forward(wte, wpe, idx) * R).sum())
    dwte, dwpe = L.embedding_backward(R, idx, V, maxT)
    assert_grad("wte", f, wte, dwte)
    assert_grad("wpe", f, wpe, dwpe)
    assert np.all(dwpe[T:] == 0) and np.all(dwte[[2, 4, 5]] == 0)  # unused rows get exactly nothing
    # the model passes the head's wte gradient in, and the scatter-add accumulates into it in place
    head = rand(rng, V, C)
    expect = head + dwte
    acc, _ = L.embedding_backward(R, idx, V, maxT, dwte=head)
    assert acc is head
    np.testing.assert_allclose(acc, expect, rtol=1e-15)


def test_embedding_offset_reads_later_positions():
    rng = np.random.default_rng(1)
    wte, wpe = rand(rng, 4, C), rand(rng, 12, C)
    idx = np.array([[0, 3]])
    out = L.embedding_forward(wte, wpe, idx, start=5)
    np.testing.assert_array_equal(out[0, 1], wte[3] + wpe[6])


def test_layernorm_all_inputs():
    rng = np.random.default_rng(2)
    x = rand(rng, B, T, C) * 3.0 + 1.0
    w, b = 1.0 + 0.3 * rand(rng, C), 0.3 * rand(rng, C)
    R = rand(rng, B, T, C)
    f = lambda: float((L.layernorm_forward(x, w, b)[0] * R).sum())
    out, mean, rstd = L.layernorm_forward(x, w, b)
    dx, dw, db = L.layernorm_backward(R, x, w, mean, rstd)
    assert_grad("x", f, x, dx)
    assert_grad("weight", f, w, dw)
    assert_grad("bias", f, b, db)


def test_layernorm_uses_biased_variance_and_eps():
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    out, _, rstd = L.layernorm_forward(x, np.ones(4), np.zeros(4), eps=1e-5)
    var = 1.25  # mean of squared deviations, divided by C (not C - 1, which would give 1.6667)
    np.testing.assert_allclose(rstd[0, 0], 1.0 / np.sqrt(var + 1e-5), rtol=1e-15)
    np.testing.assert_allclose(out, (x - 2.5) / np.sqrt(var + 1e-5), rtol=1e-15)


def test_linear_all_inputs_conv1d_layout():
    rng = np.random.default_rng(3)
    OC = 6
    x, w, b = rand(rng, B, T, C), rand(rng, C, OC), rand(rng, OC)  # weight stored (in, out)
    R = rand(rng, B, T, OC)
    f = lambda: float((L.linear_forward(x, w, b) * R).sum())
    dx, dw, db = L.linear_backward(R, x, w)
    assert_grad("x", f, x, dx)
    assert_grad("weight", f, w, dw)
    assert_grad("bias", f, b, db)


def test_gelu_is_the_tanh_form_and_its_gradient():
    rng = np.random.default_rng(4)
    x = rand(rng, B, T, C, scale=2.0)
    R = rand(rng, B, T, C)
    f = lambda: float((L.gelu_forward(x) * R).sum())
    assert_grad("x", f, x, L.gelu_backward(R, x))
    # the tanh form, written out with the math module; the erf form differs by ~1.5e-4 at x = 1
    tanh_form = 0.5 * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (1.0 + 0.044715)))
    erf_form = 0.5 * (1.0 + math.erf(1.0 / math.sqrt(2.0)))
    got = L.gelu_forward(np.array([1.0]))[0]
    assert abs(got - tanh_form) <= 1e-15 and abs(got - erf_form) > 1e-4


def test_residual_passes_gradient_to_both_inputs():
    rng = np.random.default_rng(5)
    x, y, R = rand(rng, B, T, C), rand(rng, B, T, C), rand(rng, B, T, C)
    f = lambda: float((L.residual_forward(x, y) * R).sum())
    dx, dy = L.residual_backward(R)
    assert_grad("x", f, x, dx)
    assert_grad("branch", f, y, dy)


def test_tied_lm_head_both_inputs():
    rng = np.random.default_rng(6)
    V = 11
    x, wte, R = rand(rng, B, T, C), rand(rng, V, C), rand(rng, B, T, V)
    f = lambda: float((L.lm_head_forward(x, wte) * R).sum())
    dx, dwte = L.lm_head_backward(R, x, wte)
    assert_grad("x", f, x, dx)
    assert_grad("wte", f, wte, dwte)


@pytest.mark.parametrize("ignore", [False, True])
def test_crossentropy_mean_over_counted_positions(ignore):
    rng = np.random.default_rng(7)
    V = 9
    logits = rand(rng, B, T, V, scale=3.0)
    targets = rng.integers(0, V, (B, T))
    if ignore:
        targets[0, 1] = targets[1, 4] = targets[1, 0] = -1
    f = lambda: L.crossentropy_forward(logits, targets)[0]
    loss, probs = L.crossentropy_forward(logits, targets)
    assert_grad("logits", f, logits, L.crossentropy_backward(probs, targets))
    # the loss is the plain mean of -log p(target) over counted positions
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = targets != -1
    expect = -np.mean(np.take_along_axis(logp, np.where(keep, targets, 0)[..., None], -1)[..., 0][keep])
    np.testing.assert_allclose(loss, expect, rtol=1e-14)


def test_crossentropy_survives_huge_logits():
    logits = np.array([[[1000.0, 0.0, -1000.0]]])
    loss, probs = L.crossentropy_forward(logits, np.array([[2]]))
    np.testing.assert_allclose(loss, 2000.0, rtol=1e-15)  # finite although softmax(-1000) underflows to 0
    assert np.isfinite(probs).all()


ATTENTION_PATHS = {
    "naive": lambda qkv: A.attention_forward(qkv, NH),
    "tiled-block2": lambda qkv: A.attention_forward_tiled(qkv, NH, block_size=2),
    "tiled-block3": lambda qkv: A.attention_forward_tiled(qkv, NH, block_size=3),  # T=5: a ragged last block
    "tiled-block1": lambda qkv: A.attention_forward_tiled(qkv, NH, block_size=1),
    "tiled-one-block": lambda qkv: A.attention_forward_tiled(qkv, NH, block_size=64),
}


def attention_grad(path, dout, qkv):
    out, saved = ATTENTION_PATHS[path](qkv)
    if path == "naive":
        return A.attention_backward(dout, qkv, saved, NH)
    block = {"tiled-block2": 2, "tiled-block3": 3, "tiled-block1": 1, "tiled-one-block": 64}[path]
    return A.attention_backward_tiled(dout, qkv, out, saved, NH, block_size=block)


@pytest.mark.parametrize("path", sorted(ATTENTION_PATHS))
def test_attention_qkv_gradient(path):
    rng = np.random.default_rng(8)
    qkv = rand(rng, B, T, 3 * C, scale=1.5)  # large enough that the softmax is far from uniform
    R = rand(rng, B, T, C)
    f = lambda: float((ATTENTION_PATHS[path](qkv)[0] * R).sum())
    assert_grad(f"{path} qkv", f, qkv, attention_grad(path, R, qkv))


def test_attention_is_causal():
    rng = np.random.default_rng(9)
    qkv = rand(rng, 1, T, 3 * C)
    later = qkv.copy()
    later[:, 3:] += 10.0  # change positions 3.. only
    for path, fn in ATTENTION_PATHS.items():
        a, b = fn(qkv)[0], fn(later)[0]
        np.testing.assert_array_equal(a[:, :3], b[:, :3], err_msg=f"{path}: a future position leaked into the past")
        assert not np.allclose(a[:, 3:], b[:, 3:])


def test_attention_scale_is_inverse_sqrt_head_size():
    # one head, two positions: position 1 mixes v0 and v1 with weights softmax([q1.k0, q1.k1] / sqrt(HS))
    HS = 4
    q1, k0, k1 = np.full(HS, 1.0), np.full(HS, 0.5), np.full(HS, -0.5)
    v0, v1 = np.full(HS, 2.0), np.full(HS, -3.0)
    qkv = np.zeros((1, 2, 3 * HS))
    qkv[0, 1, :HS], qkv[0, 0, HS : 2 * HS], qkv[0, 1, HS : 2 * HS] = q1, k0, k1
    qkv[0, 0, 2 * HS :], qkv[0, 1, 2 * HS :] = v0, v1
    s = np.array([q1 @ k0, q1 @ k1]) / np.sqrt(HS)
    w = np.exp(s) / np.exp(s).sum()
    for path in ("naive", "tiled-block1"):
        out = (A.attention_forward(qkv, 1) if path == "naive" else A.attention_forward_tiled(qkv, 1, 1))[0]
        np.testing.assert_allclose(out[0, 1], w[0] * v0 + w[1] * v1, rtol=1e-14, err_msg=path)
        np.testing.assert_allclose(out[0, 0], v0, rtol=1e-15, err_msg=path)  # position 0 sees only itself
