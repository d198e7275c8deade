"""CUDA graphs of the Numba model (numba_impl/graph.py, NumbaGPT2(cuda_graphs=True)).

On the CPU (the CUDA simulator, which has no graphs):
- asking for graphs falls back to eager, says so, and computes what the eager model computes;
- a training step's launches copy nothing between host and device and allocate nothing once the
  model has run a step (what graph capture requires), checked by making those calls raise;
- the device-side token grouping of the embedding backward (chained) is bit-identical to the
  host-side one (sorted), which it replaces in the model.
On a GPU: graph replays of the training step give bit-identical results to eager steps.
"""

from __future__ import annotations

import numpy as np
import pytest

from numba_impl._compat import SIMULATOR, cuda
from numba_impl.graph import graphs_unavailable
from numba_impl.kernels import encoder
from numba_impl.kernels.adamw import adamw_hyperparameters
from numba_impl.model import NumbaGPT2
from tests.numba_impl.helpers import KERNEL_REL, dev, max_rel, needs_cuda, rng
from weights import GPT2Config, synthetic

pytestmark = needs_cuda

CONFIG = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_ctx=8)
B, T = 2, 8
ON_GPU = not SIMULATOR and cuda.is_available()


def batches(config, n, B, T, seed=5):
    r = rng(seed)
    out = []
    for i in range(n):
        idx = r.integers(0, config.vocab_size, (B, T))
        idx[1, :3] = idx[0, :3]  # repeated tokens: the embedding backward adds their rows
        targets = r.integers(0, config.vocab_size, (B, T))
        if i == n - 1:
            targets[0, 1] = -1  # another count of kept targets: another graph
        out.append((idx, targets))
    return out


def state(m: NumbaGPT2) -> dict[str, np.ndarray]:
    """Everything a step leaves behind: loss, logits, gradients, parameters, AdamW moments."""
    B_, T_ = m._shape
    out = {"loss": np.array([m.loss()]), "logits": m.logits[: B_ * T_ * m.config.vocab_size].copy_to_host()}
    out.update({f"grad {k}": v for k, v in m.grads().items()})
    out.update({f"param {k}": v for k, v in m.to_params().items()})
    out["adamw m"], out["adamw v"] = m.d_m.copy_to_host(), m.d_v.copy_to_host()
    return out


def atomically_summed(name: str) -> bool:
    """The tensors whose last bits depend on the order in which blocks finish, in eager runs too: the
    linear layers' bias gradients are column sums over the B*T rows that the matmul's fused bias
    gradient adds up with float atomics, and AdamW carries those bits into the parameter and its
    moments. (The norms' weight and bias gradients are summed without atomics, in a fixed order:
    kernels/layernorm.py, kernels/rmsnorm.py.)"""
    tensor = name.split(" ", 1)[-1]
    norm = ".ln_" in tensor or tensor.startswith("ln_f.")
    return name.startswith(("grad ", "param ")) and tensor.endswith(".bias") and not norm


def assert_same_steps(m: NumbaGPT2, ref: NumbaGPT2, steps) -> set[str]:
    """Run each step on both models from the same state (ref gets m's parameters and AdamW moments
    first, so that one step's atomics cannot leak into the next) and compare what it leaves behind:
    bit for bit, except the atomically summed vectors (and AdamW's moments, which hold them), which
    must agree to the kernel tolerance. Returns the names that were not bit-identical."""
    differing = set()
    for i, (idx, targets) in enumerate(steps):
        for buf in ("d_params", "d_m", "d_v"):
            getattr(ref, buf).copy_to_device(getattr(m, buf))
        lr = 1e-3 * (i + 1)  # a learning-rate schedule: a recorded step must follow it
        m.step(idx, targets, lr=lr)
        ref.step(idx, targets, lr=lr)
        got, want = state(m), state(ref)
        for name, w in want.items():
            if np.array_equal(got[name], w):
                continue
            differing.add(name)
            assert atomically_summed(name) or name.startswith("adamw"), f"step {i + 1}: {name} is not bit-identical"
            assert max_rel(got[name], w.astype(np.float64)) <= KERNEL_REL, f"step {i + 1}: {name}"
    return differing


# ----------------------------------------------------------------------------- CPU (simulator)
@pytest.mark.skipif(not SIMULATOR, reason="the fallback is the simulator's path; a GPU replays graphs")
def test_graphs_fall_back_to_eager_with_a_note_in_the_simulator():
    params = synthetic(CONFIG, seed=3)
    steps = batches(CONFIG, 1, B, T)  # one step: the fallback is the eager path, which test_model.py covers
    with pytest.warns(RuntimeWarning, match="simulator"):
        graphed = NumbaGPT2(params, CONFIG, max_batch=B, max_seq=T, cuda_graphs=True)
    assert graphs_unavailable() is not None and "simulator" in graphed.graph_note
    eager = NumbaGPT2(params, CONFIG, max_batch=B, max_seq=T)
    assert eager.graph_note is None
    assert_same_steps(graphed, eager, steps)  # the same kernels, eagerly
    assert graphed.graph_stats() == {}  # nothing was recorded


def test_step_launches_copy_nothing_to_or_from_the_host_and_allocate_nothing(monkeypatch):
    """What graph capture needs of the recorded half of a step: only launches and device-to-device copies."""
    params = synthetic(CONFIG, seed=3)
    (idx, targets), (idx2, targets2) = batches(CONFIG, 2, B, T)
    m = NumbaGPT2(params, CONFIG, max_batch=B, max_seq=T)
    m.step(idx, targets)  # first step: compiles kernels, allocates any lazily created scratch

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
        assert stream is m.stream, "a copy that is not on the model's stream"
        return original_copy(self, ary, stream=stream)

    m._upload_inputs(m._check_idx(idx2), m._check_targets(targets2, idx2.shape))
    m._upload_adamw(1e-3, 0.9, 0.95, 1e-8, 0.1)
    monkeypatch.setattr(array_type, "copy_to_host", refuse("copy_to_host"))
    monkeypatch.setattr(array_type, "copy_to_device", device_to_device_only)
    m._run("step", m._launch_step)
    monkeypatch.undo()
    assert np.isfinite(m.loss())


def test_chained_embedding_backward_is_bit_identical_to_sorted():
    """The device grouping (chains of equal tokens) sums each token's rows in the order the host
    grouping (stable argsort) does: the same float32 result, bit for bit."""
    V, C, maxT, Bq, Tq = 11, 8, 16, 3, 12
    r = rng(7)
    idx = r.integers(0, V, (Bq, Tq))
    idx[2, :] = idx[0, 0]  # one token many times
    dout = dev(r.standard_normal((Bq, Tq, C)))
    base_wte, base_wpe = r.standard_normal((V, C)), r.standard_normal((maxT, C))
    order, start, token = encoder.token_groups(idx)
    wte_s, wpe_s = dev(base_wte), dev(base_wpe)
    encoder.encoder_backward_sorted(wte_s, wpe_s, dout, dev(order, np.int32), dev(start, np.int32),
                                    dev(token, np.int32), len(token), Bq, Tq, C)  # fmt: skip
    wte_c, wpe_c = dev(base_wte), dev(base_wpe)
    next_pos, is_first = (cuda.device_array(Bq * Tq, np.int32) for _ in range(2))
    encoder.encoder_backward_chained(wte_c, wpe_c, dout, dev(idx, np.int32), next_pos, is_first, Bq, Tq, C)
    assert np.array_equal(wte_c.copy_to_host(), wte_s.copy_to_host())
    assert np.array_equal(wpe_c.copy_to_host(), wpe_s.copy_to_host())
    first = is_first.copy_to_host().reshape(Bq, Tq)
    assert first.sum() == len(np.unique(idx))


def test_adamw_hyperparameters_bias_corrections_and_step_check():
    h = adamw_hyperparameters(3, 1e-3, 0.9, 0.95, 1e-8, 0.1)
    assert h.dtype == np.float32 and h[5] == np.float32(1 - 0.9**3) and h[6] == np.float32(1 - 0.95**3)
    with pytest.raises(ValueError, match="step"):
        adamw_hyperparameters(0, 1e-3, 0.9, 0.95, 1e-8, 0.1)


# ----------------------------------------------------------------------------- GPU
GPU_CONFIG = GPT2Config(n_layer=2, n_head=4, n_embd=128, vocab_size=1000, n_ctx=64)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a real GPU (the simulator has none)")
def test_graph_replays_are_bit_identical_to_eager_steps():
    """Four training steps with graphs (step 1 runs eagerly and is recorded, step 2 replays it, step 3
    records another graph for another count of kept targets, step 4 replays that) against the same
    steps run eagerly from the same state: logits, loss and every gradient, parameter and moment
    bit for bit, except the atomically summed vectors (`atomically_summed`), to the kernel tolerance."""
    params = synthetic(GPU_CONFIG, seed=0)
    Bg, Tg = 2, 64
    steps = batches(GPU_CONFIG, 3, Bg, Tg) + batches(GPU_CONFIG, 1, Bg, Tg, seed=9)
    m = NumbaGPT2(params, GPU_CONFIG, max_batch=Bg, max_seq=Tg, cuda_graphs=True)
    eager = NumbaGPT2(params, GPU_CONFIG, max_batch=Bg, max_seq=Tg)
    differing = assert_same_steps(m, eager, steps)
    assert m.graph_note is None, m.graph_note  # set when a capture failed (and the model went eager)
    stats = m.graph_stats()
    assert len(stats) == 2 and sum(s["replays"] for s in stats.values()) == 2, stats
    assert all(s["nodes"] > 20 for s in stats.values()), stats
    print("not bit-identical (float atomics):", sorted(differing))
