"""The NumPy-in/NumPy-out contract: shapes and dtypes, the loss's ignore rule, bad input,
bf16 autocast, and the TF32 switch that must always give back the caller's settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch_impl import contract
from torch_impl.model import GPT2


@pytest.fixture(scope="module")
def model(cfg, params):
    return GPT2.from_params(params, cfg)


def test_forward_returns_all_positions_and_no_loss_without_targets(cfg, model, ids):
    idx, _ = ids(B=2, T=7)
    logits, loss = contract.forward(model, idx)
    assert isinstance(logits, np.ndarray) and logits.shape == (2, 7, cfg.vocab_size) and logits.dtype == np.float32
    assert loss is None
    # position t sees only ids 0..t: changing the last id leaves every earlier position's logits alone
    changed = idx.copy()
    changed[:, -1] = (changed[:, -1] + 1) % cfg.vocab_size
    logits2, _ = contract.forward(model, changed)
    np.testing.assert_array_equal(logits2[:, :-1], logits[:, :-1])
    assert not np.allclose(logits2[:, -1], logits[:, -1])


def test_loss_is_mean_cross_entropy_over_positions_not_ignored(cfg, model, ids):
    idx, targets = ids(B=2, T=9, seed=1)
    targets[1, 2:5] = -1
    logits, loss = contract.forward(model, idx, targets)
    x = logits.astype(np.float64)
    logp = x - x.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    keep = targets != -1
    expected = -logp[keep, targets[keep]].mean()
    # float32 logits, float64 recomputation: agreement to float32 rounding of an O(5) loss (~1e-6).
    assert loss == pytest.approx(expected, abs=1e-5)
    assert isinstance(loss, float)


def test_activations_are_arrays_in_forward_order(cfg, model, ids):
    idx, _ = ids(B=1, T=4)
    acts = contract.activations(model, idx)
    names = list(acts)
    assert names[0] == "embed" and names[-2:] == ["ln_f", "logits"]
    assert names[1:11] == [
        f"h.0.{n}" for n in ("ln_1", "qkv", "attn", "attn_proj", "resid_1", "ln_2", "fc", "gelu", "mlp_proj", "resid_2")
    ]
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in acts.values())
    np.testing.assert_array_equal(acts["logits"], contract.forward(model, idx)[0])
    # the named pieces add up as the contract table says
    np.testing.assert_allclose(acts["h.1.resid_1"], acts["h.0.resid_2"] + acts["h.1.attn_proj"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(acts["h.1.resid_2"], acts["h.1.resid_1"] + acts["h.1.mlp_proj"], rtol=0, atol=1e-6)
    fc = acts["h.2.fc"].astype(np.float64)
    gelu_tanh = 0.5 * fc * (1 + np.tanh(np.sqrt(2 / np.pi) * (fc + 0.044715 * fc**3)))
    np.testing.assert_allclose(acts["h.2.gelu"], gelu_tanh, rtol=0, atol=1e-6)  # float32 rounding of O(1) values


@pytest.mark.parametrize(
    "idx, message",
    [
        (np.array([[1, 2, 101]]), r"idx: token id 101 at \[0, 2\] is outside \[0, vocab_size=101\)"),
        (np.array([[1, -1, 2]]), r"idx: token id -1 at \[0, 1\] is outside \[0, vocab_size=101\)"),
        (np.zeros((1, 25), dtype=np.int64), "idx: sequence length T=25 exceeds n_ctx=24"),
        (np.zeros((1, 0), dtype=np.int64), "idx: empty batch or sequence"),
        (np.zeros((4,), dtype=np.int64), r"idx: expected shape \(B, T\), got \(4,\)"),
        (np.zeros((1, 3), dtype=np.float32), "idx: token ids must be an integer array, got dtype float32"),
    ],
)
def test_bad_idx_is_named(model, idx, message):
    with pytest.raises(ValueError, match=message):
        contract.forward(model, idx)


def test_tensors_on_another_device_are_named(model):
    meta = torch.zeros(1, 3, dtype=torch.long, device="meta")  # a device that is surely not the model's
    with pytest.raises(ValueError, match="idx: on meta, but the model is on cpu"):
        model(meta)
    with pytest.raises(ValueError, match="idx: on meta, but the model is on cpu"):
        model.generate(meta, 2)
    with pytest.raises(ValueError, match="targets: on meta, but idx is on cpu"):
        model(torch.zeros(1, 3, dtype=torch.long), meta)


def test_bad_idx_tensors_are_named(model):
    with pytest.raises(ValueError, match="idx: token ids must be an integer array, got dtype torch.float32"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="idx: token ids must be a torch.Tensor, got list"):
        model([[1, 2]])


@pytest.mark.parametrize(
    "targets, message",
    [
        (
            np.array([[1, 2, 101]]),
            r"targets: id 101 at \[0, 2\] is outside \[0, vocab_size=101\) and is not the ignore index -1",
        ),
        (np.array([[1, -2, 3]]), r"targets: id -2 at \[0, 1\]"),
        (np.array([[1, 2]]), r"targets: shape \(1, 2\) does not match idx shape \(1, 3\)"),
        (np.array([[-1, -1, -1]]), "every position is -1"),
        (np.array([[1.0, 2.0, 3.0]]), "targets: must be an integer array, got dtype float64"),
    ],
)
def test_bad_targets_are_named(model, targets, message):
    with pytest.raises(ValueError, match=message):
        contract.forward_backward(model, np.array([[1, 2, 3]]), targets)


def test_forward_backward_needs_targets(model):
    with pytest.raises(ValueError, match="needs targets"):
        contract.forward_backward(model, np.array([[1, 2]]), None)


def test_bf16_autocast_is_close_to_float32(cfg, model, ids):
    """bf16 keeps 8 bits of mantissa (relative step 2^-8 ~ 4e-3): logits of O(0.5) land within ~0.05,
    the loss within ~1%. The bound is loose on purpose; it still fails if autocast broke the math."""
    idx, targets = ids(B=2, T=12, seed=2)
    ref_logits, ref_loss, ref_grads = contract.forward_backward(model, idx, targets)
    logits, loss, grads = contract.forward_backward(model, idx, targets, autocast_dtype=torch.bfloat16)
    assert logits.dtype == np.float32  # bf16 is handed back as float32 (NumPy has no bf16)
    assert not np.array_equal(logits, ref_logits)  # it really ran in bf16
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=0.05)
    assert loss == pytest.approx(ref_loss, rel=0.01)
    assert all(g.dtype == np.float32 for g in grads.values())  # master weights stay float32
    cos = lambda a, b: float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
    for name in ("wte.weight", "h.0.attn.c_attn.weight", "h.2.mlp.c_proj.weight"):
        assert cos(grads[name], ref_grads[name]) > 0.99, name


def test_autocast_argument_is_checked(cfg, params):
    m64 = GPT2.from_params(params, cfg, dtype=torch.float64)
    with pytest.raises(ValueError, match="autocast needs float32 parameters"):
        contract.forward(m64, np.array([[1, 2]]), autocast_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="autocast_dtype must be None, torch.bfloat16 or torch.float16"):
        contract.forward(m64, np.array([[1, 2]]), autocast_dtype=torch.float64)


# ------------------------------------------------------------------------------------------ TF32

MATMUL, CUDNN = torch.backends.cuda.matmul, torch.backends.cudnn
needs_fp32_precision = pytest.mark.skipif(
    not hasattr(MATMUL, "fp32_precision"), reason="torch < 2.9 has no fp32_precision switches"
)


@pytest.fixture
def restore_tf32_flags():
    """Whatever a test does to the global flags, put them back (they are process-wide)."""
    switches = [contract._backend(p) for p in contract._FP32_PRECISION_SWITCHES]
    saved = [s.fp32_precision for s in switches]
    yield
    for s, value in zip(switches, saved, strict=True):
        s.fp32_precision = value


@needs_fp32_precision
def test_tf32_disabled_turns_tf32_off_and_restores_the_new_api_settings(restore_tf32_flags):
    MATMUL.fp32_precision = "tf32"
    CUDNN.conv.fp32_precision = "tf32"
    with contract.tf32_disabled():
        assert MATMUL.fp32_precision == "ieee" and CUDNN.conv.fp32_precision == "ieee"
        assert CUDNN.fp32_precision == "ieee" and CUDNN.rnn.fp32_precision == "ieee"
    assert MATMUL.fp32_precision == "tf32" and CUDNN.conv.fp32_precision == "tf32"


@needs_fp32_precision
def test_tf32_disabled_restores_settings_made_with_the_legacy_api(restore_tf32_flags):
    """A trainer that sets allow_tf32 (the old API) can still read it after a conformance call."""
    MATMUL.allow_tf32 = True
    CUDNN.allow_tf32 = True
    with contract.tf32_disabled():
        assert MATMUL.fp32_precision == "ieee"
    assert MATMUL.allow_tf32 is True and CUDNN.allow_tf32 is True
    MATMUL.allow_tf32 = False
    with contract.tf32_disabled():
        pass
    assert MATMUL.allow_tf32 is False


@needs_fp32_precision
def test_tf32_disabled_restores_after_an_exception(model, restore_tf32_flags):
    MATMUL.fp32_precision = "tf32"
    with pytest.raises(ValueError, match="sequence length"):
        contract.forward(model, np.zeros((1, 99), dtype=np.int64))
    assert MATMUL.fp32_precision == "tf32"
    with pytest.raises(RuntimeError, match="boom"), contract.tf32_disabled():
        raise RuntimeError("boom")
    assert MATMUL.fp32_precision == "tf32"


@needs_fp32_precision
def test_every_contract_call_runs_with_tf32_off(model, monkeypatch, restore_tf32_flags):
    MATMUL.fp32_precision = "tf32"
    seen = []
    real = model.forward_step

    def spy(*args, **kwargs):
        seen.append(MATMUL.fp32_precision)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward_step", spy)
    idx = np.array([[1, 2, 3]])
    contract.forward(model, idx)
    contract.forward_backward(model, idx, idx)
    contract.activations(model, idx)
    assert seen == ["ieee", "ieee", "ieee"]
    assert MATMUL.fp32_precision == "tf32"
