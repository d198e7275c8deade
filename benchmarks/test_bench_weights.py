"""How long `weights.synthetic` takes to build a checkpoint (the project promises < 10 s for 124M on 2 cores)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import timing
from benchmarks.backends import cpu_name
from weights import GPT2Config, num_params, synthetic

CONFIGS = [
    pytest.param("tiny", GPT2Config.tiny(), marks=pytest.mark.smoke, id="tiny"),
    pytest.param("124m", GPT2Config.gpt2_124m(), id="124m"),
]


@pytest.mark.parametrize("device", ["cpu"])
@pytest.mark.parametrize("name,config", CONFIGS)
def test_synthetic_weights(benchmark, name, config, device):
    benchmark.group = f"weights:synthetic:{name}"
    benchmark.extra_info.update(kind="weights", size=name, backend="numpy-f32", device=device,
                                device_name=cpu_name(), n_params=num_params(config))  # fmt: skip
    rounds = timing.ROUNDS_OVERRIDE or (2 if name == "124m" else 5)
    params = benchmark.pedantic(synthetic, args=(config,), rounds=rounds, iterations=1)
    assert sum(p.size for p in params.values()) >= num_params(config)
    assert all(p.dtype == np.float32 for p in params.values())
