"""NumbaGPT2 with the variants of docs/variants.md against the float64 NumPy reference, on a tiny config
(1-2 layers, C=16, 4 query heads, V=64, B=2, T=8, two ignored targets): each option alone and all of
them together (rope with theta 500, RMSNorm, SwiGLU of hidden 24, 4 query heads on 2 kv heads, no
biases, an untied head): logits, loss, every gradient and the named activations within the model
ceilings of test_model.py; for all options also the naive kernels, naive attention, two AdamW steps
(lm_head decayed, the norms' weights not), greedy generation, the 3xTF32 matmuls; bias=False against
GPT-2 with zero biases (bit for bit); a step's launches copy nothing to or from the host (what a CUDA
graph needs); and, on a GPU only, graph replays of the all-options model equal to eager steps."""

from __future__ import annotations

import numpy as np
import pytest

import reference
from numba_impl._compat import SIMULATOR, cuda
from numba_impl.model import NumbaGPT2
from tests.numba_impl.helpers import LOGITS_MAX_REL, LOSS_REL, needs_cuda, rng
from tests.numba_impl.test_graph import assert_same_steps, batches
from tests.numba_impl.test_model import assert_within_ceilings
from weights import GPT2Config, synthetic
from weights.layout import activation_names

pytestmark = needs_cuda

BASE = dict(n_layer=1, n_head=4, n_embd=16, vocab_size=64, n_ctx=8)
OPTIONS = {
    "rope": dict(position="rope", rope_theta=500.0),
    "rmsnorm": dict(norm="rmsnorm"),
    "swiglu": dict(mlp="swiglu", mlp_hidden=24),
    "gqa": dict(n_kv_head=2),
    "nobias": dict(bias=False),
    "untied": dict(tied_head=False),
}
ALL = {k: v for option in OPTIONS.values() for k, v in option.items()}
B, T = 2, 8


def config(options, n_layer=1):
    return GPT2Config(**(BASE | {"n_layer": n_layer}), **options)


def make_case(cfg, seed=3):
    params = synthetic(cfg, seed=seed)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    r = rng(12)
    idx = r.integers(0, cfg.vocab_size, (B, T))
    targets = r.integers(0, cfg.vocab_size, (B, T))
    targets[0, 2] = -1
    targets[1, 5] = -1
    return params, p64, idx, targets


def assert_activations(m, cfg, p64, idx):
    acts = m.activations(idx)
    ref = reference.activations(p64, cfg, idx)
    assert list(acts) == activation_names(cfg) == list(ref)
    for name, a in ref.items():
        assert acts[name].shape == a.shape, name
        assert np.abs(acts[name] - a).max() <= LOGITS_MAX_REL * np.abs(a).max(), name


@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_option_alone_matches_reference(name):
    cfg = config(OPTIONS[name])
    params, p64, idx, targets = make_case(cfg)
    m = NumbaGPT2(params, cfg, max_batch=B, max_seq=T)
    assert_within_ceilings(*m.forward_backward(idx, targets), reference.forward_backward(p64, cfg, idx, targets))
    assert_activations(m, cfg, p64, idx)


@pytest.mark.parametrize(
    "kernels, attention, n_layer",
    [("fast", "flash", 2), ("naive", "naive", 1), ("fast", "naive", 1)],
    ids=["fast-flash-2-layers", "naive", "fast-naive-attn"],
)
def test_all_options_together_match_reference(kernels, attention, n_layer):
    cfg = config(ALL, n_layer)
    assert cfg.variant_options().keys() >= {"position", "norm", "mlp", "n_kv_head", "bias", "tied_head"}
    params, p64, idx, targets = make_case(cfg)
    assert "wpe.weight" not in params and "lm_head.weight" in params
    m = NumbaGPT2(params, cfg, max_batch=B, max_seq=T, kernels=kernels, attention=attention)
    assert_within_ceilings(*m.forward_backward(idx, targets), reference.forward_backward(p64, cfg, idx, targets))
    if kernels == "fast" and attention == "flash":
        assert_activations(m, cfg, p64, idx)


def test_all_options_adamw_steps_decay_the_matrices_lm_head_included():
    """Two forward_backward + AdamW steps against the reference trajectory (test_model.py's bound), and
    the flat buffer's decayed range is exactly the 2-D tensors, lm_head among them."""
    cfg = config(ALL)
    params, p64, idx, targets = make_case(cfg)
    m = NumbaGPT2(params, cfg, max_batch=B, max_seq=T)
    two_d = {n for n, p in params.items() if p.ndim == 2}
    assert "lm_head.weight" in two_d
    assert m.n_decay == sum(params[n].size for n in two_d)
    assert all(m.offsets[n][0] + m.offsets[n][1] <= m.n_decay for n in two_d)
    ref_params, state = {k: v.copy() for k, v in p64.items()}, {}
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    for _ in range(2):
        _, ref_loss, ref_grads = reference.forward_backward(ref_params, cfg, idx, targets)
        loss = m.step(idx, targets, **hp)
        assert abs(loss - ref_loss) <= LOSS_REL * abs(ref_loss)
        reference.adamw_step(ref_params, ref_grads, state, **hp)
    got = m.to_params()
    assert list(got) == list(params)
    for name, p in ref_params.items():
        assert np.abs(got[name] - p).max() <= 1e-2 * hp["lr"] * 2, name


def test_all_options_greedy_generation_matches_reference():
    cfg = config(ALL)
    params, p64, idx, _ = make_case(cfg)
    m = NumbaGPT2(params, cfg, max_batch=B, max_seq=T)
    assert np.array_equal(m.generate(idx[:, :3], 3), reference.generate(p64, cfg, idx[:, :3], 3, temperature=0.0))


def test_all_options_with_3xtf32_matmuls_within_the_float32_ceilings():
    cfg = config(ALL)
    params, p64, idx, targets = make_case(cfg)
    m = NumbaGPT2(params, cfg, max_batch=B, max_seq=T, matmul="3xtf32")
    assert_within_ceilings(*m.forward_backward(idx, targets), reference.forward_backward(p64, cfg, idx, targets))


def test_no_bias_is_gpt2_with_zero_biases_bit_for_bit():
    """bias=False runs the fast kernels without their bias terms (LayerNorm built without it, matmuls
    with bias=None, no fused bias gradient); GPT-2 with every bias zero computes x + 0 = x in those
    places: the same logits, loss and gradients of every shared tensor, bit for bit. (The naive kernels'
    bias flags: test_variant_kernels.py.)"""
    cfg_nb, cfg = config({"bias": False}), config({})
    params_nb = synthetic(cfg_nb, seed=3)
    params = {n: params_nb.get(n, np.zeros(p.shape, np.float32)) for n, p in synthetic(cfg).items()}
    _, _, idx, targets = make_case(cfg)
    logits_nb, loss_nb, grads_nb = NumbaGPT2(params_nb, cfg_nb, max_batch=B, max_seq=T).forward_backward(idx, targets)
    logits, loss, grads = NumbaGPT2(params, cfg, max_batch=B, max_seq=T).forward_backward(idx, targets)
    assert np.array_equal(logits_nb, logits) and loss_nb == loss
    assert set(grads) - set(grads_nb) == {n for n in params if n.endswith(".bias")}
    for name, g in grads_nb.items():
        assert np.array_equal(g, grads[name]), name


def test_variant_params_are_validated():
    cfg = config(ALL)
    params = synthetic(cfg, seed=3)
    with pytest.raises(ValueError, match="wpe.weight"):
        NumbaGPT2(synthetic(config({}), seed=3), config({"position": "rope"}))  # GPT-2's wpe has no place here
    bad = dict(params)
    del bad["lm_head.weight"]
    with pytest.raises(ValueError, match="lm_head.weight"):
        NumbaGPT2(bad, cfg)
    bad = dict(params)
    bad["h.0.attn.c_attn.weight"] = np.zeros((16, 48), np.float32)  # GPT-2's (C, 3C), not (C, (NH + 2 NKV) HS)
    with pytest.raises(ValueError, match="c_attn"):
        NumbaGPT2(bad, cfg)


def test_all_options_step_launches_copy_nothing_to_or_from_the_host_and_allocate_nothing(monkeypatch):
    """What graph capture needs of the recorded half of a step (test_graph.py's check), with every variant:
    the rope tables live on the device, RMSNorm's and LayerNorm's partial sums in scratch buffers."""
    cfg = config(ALL)
    params = synthetic(cfg, seed=3)
    (idx, targets), (idx2, targets2) = batches(cfg, 2, B, T)
    m = NumbaGPT2(params, cfg, max_batch=B, max_seq=T)
    m.step(idx, targets)

    def refuse(what):
        def fail(*a, **k):
            raise AssertionError(f"{what} inside the launches of a step")

        return fail

    for name in ("to_device", "device_array", "device_array_like", "pinned_array", "mapped_array", "synchronize"):
        monkeypatch.setattr(cuda, name, refuse(f"cuda.{name}"), raising=False)
    array_type = type(m.d_params)
    original_copy = array_type.copy_to_device

    def device_to_device_only(self, ary, stream=0):
        assert isinstance(ary, array_type), "a host-to-device copy inside the launches of a step"
        return original_copy(self, ary, stream=stream)

    m._upload_inputs(m._check_idx(idx2), m._check_targets(targets2, idx2.shape))
    m._upload_adamw(1e-3, 0.9, 0.95, 1e-8, 0.1)
    monkeypatch.setattr(array_type, "copy_to_host", refuse("copy_to_host"))
    monkeypatch.setattr(array_type, "copy_to_device", device_to_device_only)
    m._run("step", m._launch_step)
    monkeypatch.undo()
    assert np.isfinite(m.loss())


GPU_CONFIG = GPT2Config(n_layer=2, n_head=4, n_embd=128, vocab_size=1000, n_ctx=64, position="rope", norm="rmsnorm",
                        mlp="swiglu", n_kv_head=2, bias=False, tied_head=False)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.skipif(SIMULATOR or not cuda.is_available(), reason="CUDA graphs need a real GPU (the simulator has none)")
def test_all_options_graph_replays_are_bit_identical_to_eager_steps():
    """test_graph.py's four steps (two recorded, two replayed) with every variant on."""
    params = synthetic(GPU_CONFIG, seed=0)
    Bg, Tg = 2, 64
    steps = batches(GPU_CONFIG, 3, Bg, Tg) + batches(GPU_CONFIG, 1, Bg, Tg, seed=9)
    m = NumbaGPT2(params, GPU_CONFIG, max_batch=Bg, max_seq=Tg, cuda_graphs=True)
    eager = NumbaGPT2(params, GPU_CONFIG, max_batch=Bg, max_seq=Tg)
    assert_same_steps(m, eager, steps)
    assert m.graph_note is None, m.graph_note
    stats = m.graph_stats()
    assert len(stats) == 2 and sum(s["replays"] for s in stats.values()) == 2, stats
