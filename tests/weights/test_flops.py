"""weights/flops.py: the one FLOP count and peak table the trainer, the benchmarks and the Numba reports share."""

from __future__ import annotations

import dataclasses

import pytest

from weights import GPT2Config, num_params
from weights.flops import forward_flops_per_token, matmul_params, mfu, peak_tflops, training_flops_per_token


def test_gpt2_124m_is_llm_c_count():
    c = GPT2Config.gpt2_124m()
    assert training_flops_per_token(c, 1024) == 6 * 124_439_808 + 6 * 12 * 768 * 1024
    assert forward_flops_per_token(c, 1024) == pytest.approx(training_flops_per_token(c, 1024) / 3)


def test_the_attention_term_is_the_causal_half_of_the_full_products():
    """Against all T keys: q k^T and att v are 2 C T FLOPs each per layer and token forward, x3 with the backward
    = 12 L C T; the count's 6 L C T is half of it (a causal query sees half the keys on average)."""
    c = GPT2Config.gpt2_124m()
    full = 3 * 2 * (2 * c.n_embd * 1024) * c.n_layer
    assert training_flops_per_token(c, 1024) - 6 * num_params(c) == full // 2


def test_an_untied_models_looked_up_wte_is_not_a_matmul():
    tied = GPT2Config.tiny()
    untied = dataclasses.replace(tied, tied_head=False)
    assert num_params(untied) - num_params(tied) == 64 * 16  # lm_head
    assert matmul_params(untied) == matmul_params(tied)
    assert training_flops_per_token(untied, 16) == training_flops_per_token(tied, 16)


def test_mfu_is_per_device():
    # 2 devices at 1e12 FLOP/s each: 1e12 FLOP/s in all is 50% per device
    assert mfu(1e6, 1e6, 1e12, devices=2) == pytest.approx(0.5)
    assert mfu(1e6, 1e6, 1e12) == pytest.approx(1.0)
    assert mfu(1e6, 1e6, None) is None


def test_peaks_by_device_name(monkeypatch):
    monkeypatch.delenv("BENCH_PEAK_TFLOPS", raising=False)
    assert peak_tflops("NVIDIA H200", "bfloat16") == 989.4 and peak_tflops("NVIDIA H200", "float32") == 66.9
    assert peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0  # not the SXM part's
    assert peak_tflops("NVIDIA L40S", "float32") is None and peak_tflops("AMD EPYC", "bfloat16") is None
    monkeypatch.setenv("BENCH_PEAK_TFLOPS", "123")
    assert peak_tflops("anything", "float32") == 123.0
