"""The full GPT-2 124M shape (B=4, T=1024) on a real GPU against the float64 reference on the CPU.
Opt in with --full on a CUDA machine (the reference takes ~45 s on 16 cores, the GPU side ~1 s).
Ceilings: the project's float32 ceilings (helpers.py). Results of a run: docs/results/numba-h100.md."""

from __future__ import annotations

import numpy as np
import pytest

from numba_impl._compat import SIMULATOR, cuda
from tests.numba_impl.gpu_report import batch, compare
from weights import GPT2Config, synthetic

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.full,
    pytest.mark.skipif(SIMULATOR or not cuda.is_available(), reason="needs a real CUDA GPU for Numba"),
]


@pytest.mark.parametrize("attention", ["flash", "naive"])
def test_124m_forward_backward_within_float32_ceilings(attention):
    import reference
    from numba_impl.model import NumbaGPT2

    config = GPT2Config.gpt2_124m()
    params = synthetic(config, seed=0)
    idx, targets = batch(config, seed=1)
    targets[0, :7] = -1
    got = NumbaGPT2(params, config, max_batch=4, max_seq=1024, attention=attention).forward_backward(idx, targets)
    ref = reference.forward_backward({k: v.astype(np.float64) for k, v in params.items()}, config, idx, targets)
    result = compare(f"numba fast+{attention}", got, ref)
    assert result["within_ceilings"], result
