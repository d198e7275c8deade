"""The released GPT-2 124M weights (opt in with --full): our model and transformers' agree on real text.

Needs the hub checkpoint (downloaded once by weights.hub, hash-checked), the GPT-2 tokenizer files
and Tiny Shakespeare; each skips with the reason and the fix when absent.

Tolerance: both models in float64, so they differ by rounding only. GPT-2's residual stream has
a few channels of size ~1e3, so rounding is ~1e-15 * 1e3 relative to O(100) logits; 1e-8 absolute
is orders above that and orders below any real mistake.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch_impl import contract
from torch_impl.model import GPT2
from weights import CheckpointError, load
from weights.hub import HubError
from weights.paths import WHERE_TINYSHAKESPEARE, WHERE_TOKENIZER, tinyshakespeare_path, tokenizer_dir

pytestmark = pytest.mark.full


@pytest.fixture(scope="module")
def gpt2():
    try:
        return load("gpt2", dtype=np.float64)
    except (HubError, CheckpointError) as e:
        pytest.skip(f"the released GPT-2 weights are not available here: {e}")


@pytest.fixture(scope="module")
def shakespeare_ids():
    if tokenizer_dir() is None:
        pytest.skip(f"GPT-2 tokenizer files not found; {WHERE_TOKENIZER}")
    path = tinyshakespeare_path()
    if path is None:
        pytest.skip(f"tinyshakespeare.txt not found; {WHERE_TINYSHAKESPEARE}")
    from weights.tokenizer import get_tokenizer

    tokens = get_tokenizer().encode_ordinary(path.read_text()[:4000])
    return np.array(tokens[:257], dtype=np.int64)[None, :]  # (1, 257): 256 inputs + next-token targets


def test_real_gpt2_logits_match_transformers_and_predict_text(gpt2, shakespeare_ids, oracle):
    params, config = gpt2
    assert config.n_layer == 12 and config.vocab_size == 50257
    idx, targets = shakespeare_ids[:, :-1], shakespeare_ids[:, 1:]
    model = GPT2.from_params(params, config, dtype=torch.float64, attention="sdpa")
    assert model.num_params() == 124_439_808
    logits, loss = contract.forward(model, idx, targets)
    with torch.no_grad():
        ref = oracle(params, config)(torch.from_numpy(idx)).logits.numpy()
    np.testing.assert_allclose(logits, ref, rtol=0, atol=1e-8)
    # A trained GPT-2 predicts English far better than an untrained one (ln 50257 = 10.8 nats);
    # on Shakespeare its loss is around 4-5.5 nats.
    assert loss < 7.0


def test_real_gpt2_greedy_continuation_matches_transformers(gpt2, shakespeare_ids, oracle):
    params, config = gpt2
    prompt = torch.from_numpy(shakespeare_ids[:, :32])
    ours = GPT2.from_params(params, config, dtype=torch.float64).generate(prompt, 16)
    hf = oracle(params, config)
    seq = prompt
    with torch.no_grad():
        for _ in range(16):
            seq = torch.cat([seq, hf(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(ours, seq)
