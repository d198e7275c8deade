"""Shared fixtures for the PyTorch backend's tests: a small config, synthetic weights, an HF oracle.

The config is small enough that every CPU test runs in well under a second, yet has every
feature of the 124M model: several layers and heads, a vocabulary that is no power of two
(so padding to 128 is a real pad), and a context short enough to test the n_ctx limits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weights import GPT2Config, synthetic

CFG = GPT2Config(n_layer=3, n_head=4, n_embd=32, vocab_size=101, n_ctx=24)
PADDED_V = 128


@pytest.fixture(autouse=True)
def one_thread():
    """Run each test on one intra-op thread, restoring the setting after it.

    The models here are tiny: one thread computes them in microseconds, while two OpenMP threads
    on a busy 2-core CI box wait on each other for milliseconds per op (measured: 3 us vs 30 ms
    for a 16-wide linear layer).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cfg() -> GPT2Config:
    return CFG


@pytest.fixture(scope="session")
def params() -> dict[str, np.ndarray]:
    """float32 synthetic weights, perturbed so that every LayerNorm and bias term is visible."""
    return synthetic(CFG, seed=11)


@pytest.fixture(scope="session")
def params64(params) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) for k, v in params.items()}


@pytest.fixture
def ids():
    """ids(B, T, seed) -> int64 array of token ids, and a matching targets array with some -1 (ignored)."""

    def make(B=2, T=CFG.n_ctx, seed=0, vocab=CFG.vocab_size, ignore_some=True):
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, vocab, size=(B, T), dtype=np.int64)
        targets = rng.integers(0, vocab, size=(B, T), dtype=np.int64)
        if ignore_some:
            targets[0, :3] = -1  # ignored positions must drop out of the mean
        return idx, targets

    return make


def hf_oracle(params: dict[str, np.ndarray], config: GPT2Config, dtype=torch.float64):
    """transformers' GPT2LMHeadModel (eager attention, dropout 0) holding `params`: an independent GPT-2.

    Its Conv1D layers take the canonical (in, out) weights as they are, so it checks our transposes.
    """
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.GPT2Config(
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_embd=config.n_embd,
        vocab_size=config.vocab_size,
        n_positions=config.n_ctx,
        layer_norm_epsilon=config.layer_norm_eps,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    model = transformers.GPT2LMHeadModel(hf_cfg).eval()
    result = model.transformer.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()}, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    assert all(k.endswith(("attn.bias", "attn.masked_bias")) for k in result.missing_keys), result.missing_keys
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    return model.to(dtype)


@pytest.fixture(scope="session")
def oracle():
    """oracle(params, config, dtype=torch.float64) -> transformers' GPT2LMHeadModel holding params."""
    return hf_oracle
