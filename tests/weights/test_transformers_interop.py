"""Our checkpoints and transformers' GPT2LMHeadModel read each other exactly."""

from __future__ import annotations

import numpy as np
import pytest

from weights import GPT2Config, load, save, synthetic

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CFG = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=96, n_ctx=24)


def test_our_save_loads_into_transformers_bit_identical(tmp_path):
    params = synthetic(CFG, seed=7)
    save(params, CFG, tmp_path)
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    sd = model.transformer.state_dict()
    for name, value in params.items():
        np.testing.assert_array_equal(sd[name].numpy(), value, err_msg=name)
    # the head is tied to wte
    np.testing.assert_array_equal(model.lm_head.weight.detach().numpy(), params["wte.weight"])


def test_save_pretrained_loads_through_load(tmp_path):
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=96, n_positions=24)
    model = transformers.GPT2LMHeadModel(hf_cfg).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    params, cfg = load(tmp_path)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size, cfg.n_ctx) == (2, 2, 32, 96, 24)
    sd = model.transformer.state_dict()
    for name, value in params.items():
        np.testing.assert_array_equal(value, sd[name].numpy(), err_msg=name)


def test_transformers_computes_our_logits_from_our_checkpoint(tmp_path):
    """transformers' GPT-2, reading the file we wrote, computes the logits the float64 reference computes
    from the same file. Both in float64: they differ by rounding only (measured ~1e-15 relative; the
    bound 1e-10 is the one the reference's own comparison with transformers uses, docs/reference.md)."""
    import reference

    params = synthetic(CFG, seed=8)
    save(params, CFG, tmp_path)
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager").eval().double()
    idx = np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 10))
    with torch.no_grad():
        theirs = model(torch.as_tensor(idx)).logits.numpy()
    ours_params, cfg = load(tmp_path, dtype=np.float64)
    ours = reference.forward(ours_params, cfg, idx)[0]
    assert theirs.shape == ours.shape == (2, 10, CFG.vocab_size)
    assert np.abs(theirs - ours).max() <= 1e-10 * np.abs(ours).max()
