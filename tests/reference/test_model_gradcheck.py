"""The whole model's backward against float64 finite differences of its loss.

Config: 2 layers, 2 heads, C = 16, V = 64, n_ctx = 16 (GPT2Config.tiny()), B = 2, T = 9,
synthetic weights in float64, targets with two ignored (-1) positions, ids with repeats
(so the wte scatter-add accumulates) and T < n_ctx (so wpe rows past T must get 0).

For every parameter tensor, COORDS_PER_TENSOR coordinates are sampled at random (plus, for
wte and wpe, coordinates in rows the batch uses) and each must satisfy

    rel = |num - ana| / max(|num|, |ana|, 1e-5) <= 1e-6

with num from reference.gradcheck's 6th-order central difference (h = 1e-3), whose measured
noise on this loss is ~1e-12 absolute (reference/gradcheck.py). Both attention paths.
"""

from __future__ import annotations

import numpy as np
import pytest

from reference import forward_backward
from reference.gradcheck import numerical_gradient, relative_error
from reference.model import gpt2_backward, gpt2_forward
from weights import GPT2Config, param_shapes, synthetic

TOL = 1e-6
COORDS_PER_TENSOR = 16
CFG = GPT2Config.tiny()
B, T = 2, 9


def batch():
    rng = np.random.default_rng(11)
    idx = rng.integers(0, CFG.vocab_size, (B, T))
    idx[1, 5] = idx[0, 2] = idx[1, 1]  # one id three times
    targets = rng.integers(0, CFG.vocab_size, (B, T))
    targets[0, 4] = targets[1, 8] = -1
    return idx, targets


def sampled_coords(name, shape, rng, idx):
    coords = [tuple(int(rng.integers(0, s)) for s in shape) for _ in range(COORDS_PER_TENSOR)]
    if name == "wte.weight":  # rows the embedding reads, incl. the repeated id
        coords += [(int(idx[1, 1]), int(rng.integers(0, shape[1]))), (int(idx[0, 0]), int(rng.integers(0, shape[1])))]
    if name == "wpe.weight":  # rows inside T (the sample above mostly hits rows >= T, whose gradient is 0)
        coords += [(int(rng.integers(0, T)), int(rng.integers(0, shape[1]))) for _ in range(3)]
    return coords


# tiled with 4-key blocks: T = 9 gives blocks of 4, 4 and 1 (one full, one ragged)
@pytest.mark.parametrize("attention,block_size", [("naive", None), ("tiled", 4)])
def test_every_parameter_tensor_matches_finite_differences(attention, block_size):
    params = synthetic(CFG, seed=3, dtype=np.float64)
    idx, targets = batch()
    kw = {"attention": attention} | ({"block_size": block_size} if block_size else {})
    _, _, acts = gpt2_forward(params, CFG, idx, targets, **kw)
    grads = gpt2_backward(params, CFG, acts, **({"block_size": block_size} if block_size else {}))
    assert list(grads) == list(param_shapes(CFG))
    loss = lambda: gpt2_forward(params, CFG, idx, targets, **kw)[1]
    rng = np.random.default_rng(12)
    failures, worst = [], 0.0
    for name, shape in param_shapes(CFG).items():
        assert grads[name].shape == shape and grads[name].dtype == np.float64, name
        coords = sampled_coords(name, shape, rng, idx)
        num = numerical_gradient(loss, params[name], coords)
        ana = np.array([grads[name][c] for c in coords])
        rel = relative_error(num, ana)
        worst = max(worst, rel.max())
        for c, n, a, r in zip(coords, num, ana, rel, strict=True):
            if r > TOL:
                failures.append(f"{name}{c}: num {n!r} ana {a!r} rel {r:.2e}")
    assert not failures, "\n".join(failures)
    print(f"{attention}: worst relative error {worst:.2e} over {len(param_shapes(CFG))} tensors")


def test_unused_rows_get_exact_zero_and_tied_wte_has_both_terms():
    params = synthetic(CFG, seed=3, dtype=np.float64)
    idx, targets = batch()
    _, _, grads = forward_backward(params, CFG, idx, targets)
    assert np.all(grads["wpe.weight"][T:] == 0)
    # A row of wte that the batch never reads still gets the head's gradient (it is scored at every position).
    unused = sorted(set(range(CFG.vocab_size)) - set(idx.ravel().tolist()))[0]
    assert np.abs(grads["wte.weight"][unused]).max() > 1e-6
