"""AdamW's decay set (docs/contract.md): "matrices" (the default), "all" (llm.c's), or named tensors, in every
backend's AdamW; the default computes what it computed before decay sets existed.

Zero gradients make a step the decay alone (m = v = 0, so the Adam step is 0 / (0 + eps) = 0): a decayed
tensor becomes exactly p * (1 - lr * wd), any other tensor stays, which names the decayed set per tensor.
Trajectories with decay="all" on every backend against the reference's are the conformance case
tiny-llmc-B2-T4 (conformance/cases.py); here the Llama oracle, whose tensors map onto ours by name.
"""

from __future__ import annotations

import numpy as np
import pytest

import reference
from conformance import checks
from conformance.backends import ADAMW_DEFAULTS, NumpyBackend, by_name, torch_adamw
from conformance.cases import CASES, TINY, batch, params_for
from conformance.suite import without_key_bias
from conformance.tolerances import FP32
from weights import param_shapes, synthetic

LR, WD = 0.1, 0.5  # a decay of 5% per step: no rounding can fake or hide it
SOME = ("wte.weight", "h.0.ln_1.bias", "h.1.attn.c_attn.bias", "h.1.mlp.c_proj.weight", "ln_f.weight")
SETS = {"matrices": None, "all": None, "some": SOME, "none": ()}


def expected_decayed(decay_name: str) -> set[str]:
    shapes = param_shapes(TINY)
    if decay_name == "matrices":
        return {n for n, s in shapes.items() if len(s) == 2}
    if decay_name == "all":
        return set(shapes)
    return set(SETS[decay_name])


def decay_arg(decay_name: str):
    return decay_name if SETS[decay_name] is None else SETS[decay_name]


def assert_decay_alone(before, after, decayed, factor, exact=True):
    for name, p in before.items():
        if name in decayed:
            expect = p * factor
            if exact:
                np.testing.assert_array_equal(after[name], expect, err_msg=name)
            else:  # torch may round the scalar factor differently: 1 ulp of float32
                np.testing.assert_allclose(after[name], expect, rtol=2e-7, atol=0, err_msg=name)
            assert not np.array_equal(after[name], p), f"{name} was not decayed"
        else:
            np.testing.assert_array_equal(after[name], p, err_msg=f"{name} was decayed")


# ------------------------------------------------------------------------------------------ reference
@pytest.mark.parametrize("decay_name", list(SETS))
def test_reference_decays_exactly_the_set(decay_name):
    params = synthetic(TINY, seed=2, dtype=np.float64)
    before = {k: v.copy() for k, v in params.items()}
    zeros = {k: np.zeros_like(v) for k, v in params.items()}
    reference.adamw_step(params, zeros, {}, lr=LR, weight_decay=WD, decay=decay_arg(decay_name))
    assert_decay_alone(before, params, expected_decayed(decay_name), 1.0 - LR * WD)


def test_reference_default_is_the_2d_formula_bit_for_bit():
    """Three steps with random gradients: the default against the contract's formula written here with the
    2-D test (float32, the same operations in the same order: equal to the bit)."""
    params = synthetic(TINY, seed=3)
    mine = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v2 = {k: np.zeros_like(v) for k, v in params.items()}
    state, rng, hp = {}, np.random.default_rng(0), ADAMW_DEFAULTS
    for t in range(1, 4):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
        reference.adamw_step(params, grads, state, **hp)
        for k, p in mine.items():
            g = grads[k]
            if p.ndim == 2:
                p *= 1.0 - hp["lr"] * hp["weight_decay"]
            m[k] *= hp["beta1"]
            m[k] += (1.0 - hp["beta1"]) * g
            v2[k] *= hp["beta2"]
            v2[k] += (1.0 - hp["beta2"]) * (g * g)
            p -= hp["lr"] * (m[k] / (1.0 - hp["beta1"] ** t)) / (np.sqrt(v2[k] / (1.0 - hp["beta2"] ** t)) + hp["eps"])
    for k in params:
        np.testing.assert_array_equal(params[k], mine[k], err_msg=k)


@pytest.mark.parametrize(
    "decay,message",
    [("everything", "must be one of"), ("wte.weight", "must be one of"), (["wte.weight", "h.9.ln_1.bias"], "h.9")],
)
def test_reference_refuses_an_unknown_set(decay, message):
    params = synthetic(TINY, seed=0)
    with pytest.raises(ValueError, match=message):
        reference.adamw_step(params, {k: np.zeros_like(v) for k, v in params.items()}, {}, lr=LR, decay=decay)


# ------------------------------------------------------------------------------------------ torch
@pytest.mark.parametrize("decay_name", list(SETS))
def test_torch_adamw_decays_exactly_the_set(decay_name):
    torch = pytest.importorskip("torch")
    from torch_impl.model import GPT2

    params = synthetic(TINY, seed=2)
    model = GPT2.from_params(params, TINY, attention="math")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    hp = dict(ADAMW_DEFAULTS, lr=LR, weight_decay=WD, decay=decay_arg(decay_name))
    torch_adamw(model.named_parameters(), hp).step()
    factor = np.float32(1.0 - LR * WD)
    assert_decay_alone(params, model.to_params(), expected_decayed(decay_name), factor, exact=False)


def test_torch_adamw_default_groups_are_the_2d_split():
    """The default's two parameter groups are exactly the 2-D tensors (decayed) and the rest, in model order."""
    pytest.importorskip("torch")
    from torch_impl.model import GPT2

    model = GPT2.from_params(synthetic(TINY), TINY)
    groups = torch_adamw(model.named_parameters(), ADAMW_DEFAULTS).param_groups
    params = list(model.parameters())
    assert [g["weight_decay"] for g in groups] == [ADAMW_DEFAULTS["weight_decay"], 0.0]
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in params if p.dim() >= 2]
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in params if p.dim() < 2]
    with pytest.raises(ValueError, match="lm_head.weight"):  # the tied model has no head of its own
        torch_adamw(model.named_parameters(), dict(ADAMW_DEFAULTS, decay=["lm_head.weight"]))


def test_llama_oracle_follows_the_reference_with_decay_all_and_a_named_set():
    """hf-llama-f64 (Llama's q/k/v and gate/up are slices of our c_attn and c_fc: a named set must reach
    every slice) against numpy-f64, 3 steps at lr 1e-2 and wd 0.5, judged by the float32 AdamW ceilings; the
    decay sets differ from each other by more than 10x those ceilings, so a set that was not applied fails."""
    pytest.importorskip("transformers")
    case = next(c for c in CASES if c.name == "tiny-llama")
    params, (idx, targets) = params_for(case), batch(case)
    ref, oracle = NumpyBackend(np.float64), by_name("hf-llama-f64")
    named = ("h.0.attn.c_attn.weight", "h.1.mlp.c_fc.weight", "h.0.ln_2.weight", "ln_f.weight")
    runs = {}
    for decay in ("all", named, "matrices"):
        hp = dict(ADAMW_DEFAULTS, lr=1e-2, weight_decay=0.5, decay=decay)
        runs[str(decay)] = ref.adamw(params, case.config, idx, targets, 3, hp)[1]
        if decay == "matrices":
            continue
        _, final = oracle.adamw(params, case.config, idx, targets, 3, hp)
        _, worst, _ = checks.worst_tensor(final, runs[str(decay)], checks.l2_rel)
        assert worst <= FP32["adamw_param_l2"], (decay, worst)
        start = without_key_bias(params, case.config)
        moved = checks.moved(final, start), checks.moved(runs[str(decay)], start)
        assert checks.worst_tensor(*moved, checks.l2_rel)[1] <= FP32["adamw_update_l2"], decay
    for a, b in (("all", str(named)), ("all", "matrices"), (str(named), "matrices")):
        assert checks.worst_tensor(runs[a], runs[b], checks.l2_rel)[1] > 10 * FP32["adamw_param_l2"], (a, b)


# ------------------------------------------------------------------------------------------ numba
def numba_model(params):
    """NumbaGPT2 on the tiny config (in the CUDA simulator without a GPU), or a skip that says why not."""
    try:
        from numba_impl._compat import SIMULATOR, cuda
        from numba_impl.model import NumbaGPT2
    except Exception as e:  # numba missing, or its CUDA unusable here
        pytest.skip(f"numba_impl unavailable ({type(e).__name__}: {e})")
    if not (SIMULATOR or cuda.is_available()):
        pytest.skip("no CUDA GPU visible to Numba and NUMBA_ENABLE_CUDASIM is not 1")
    return NumbaGPT2(params, TINY, max_batch=1, max_seq=4)


def _decayed_mask(model, names) -> np.ndarray:
    mask = np.zeros(model.n_params, dtype=bool)
    for name in names:
        o, n = model.offsets[name]
        mask[o : o + n] = True
    return mask


def test_numba_default_is_one_launch_and_every_set_covers_exactly_its_tensors():
    m = numba_model(synthetic(TINY, seed=2))
    n_2d = sum(int(np.prod(s)) for s in param_shapes(TINY).values() if len(s) == 2)
    assert m._adamw_launches("matrices") == ((0, m.n_params, n_2d),)  # the one launch of before decay sets
    assert m._adamw_launches("all") == ((0, m.n_params, m.n_params),)
    for decay_name in SETS:
        launches = m._adamw_launches(decay_arg(decay_name))
        covered = np.zeros(m.n_params, dtype=int)
        got = np.zeros(m.n_params, dtype=bool)
        for start, stop, n_decay in launches:
            covered[start:stop] += 1
            got[start : start + n_decay] = True
        assert (covered == 1).all(), decay_name  # every value updated exactly once
        np.testing.assert_array_equal(got, _decayed_mask(m, expected_decayed(decay_name)), err_msg=decay_name)
    assert len(m._adamw_launches(SOME)) > 1  # the named set really is several launches
    with pytest.raises(ValueError, match="h.7"):
        m._adamw_launches(["h.7.ln_1.weight"])
    with pytest.raises(ValueError, match="must be"):
        m._adamw_launches("everything")


def test_numba_decays_exactly_the_named_set():
    """One step with zero gradients on the device: the named set's tensors decay, bit for bit in float32."""
    params = synthetic(TINY, seed=2)
    m = numba_model(params)
    m.d_grads.copy_to_device(np.zeros(m.n_params, dtype=np.float32))
    m.adamw_step(lr=LR, weight_decay=WD, decay=SOME)
    factor = np.float32(1.0) - np.float32(LR) * np.float32(WD)  # the kernel's float32 arithmetic
    assert_decay_alone(params, m.to_params(), set(SOME), factor)


def test_numba_default_step_is_the_single_kernel_launch_bit_for_bit():
    """The default step against the kernel launched by hand once over the flat buffers with the 2-D tensors'
    values decayed (the launch of the model before decay sets): the same parameters, to the bit."""
    from numba_impl._compat import cuda
    from numba_impl.kernels.adamw import adamw_update

    params = synthetic(TINY, seed=5)
    m = numba_model(params)
    grads = np.random.default_rng(1).standard_normal(m.n_params).astype(np.float32)
    start = m.d_params.copy_to_host()
    m.d_grads.copy_to_device(grads)
    hp = {k: v for k, v in ADAMW_DEFAULTS.items() if k != "decay"}
    m.adamw_step(**hp)
    n_2d = sum(int(np.prod(s)) for s in param_shapes(TINY).values() if len(s) == 2)
    d_p, d_m, d_v = cuda.to_device(start), cuda.to_device(np.zeros_like(start)), cuda.to_device(np.zeros_like(start))
    adamw_update(d_p, cuda.to_device(grads), d_m, d_v, m.n_params, n_2d, 1, **hp)
    np.testing.assert_array_equal(m.d_params.copy_to_host(), d_p.copy_to_host())
