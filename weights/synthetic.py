"""Deterministic GPT-2-format checkpoints made locally, of any size.

`synthetic(config, seed)` returns a params dict in the canonical layout, initialised
the GPT-2 way:

    every weight matrix and both embeddings   ~ N(0, 0.02)
    attn.c_proj.weight, mlp.c_proj.weight     ~ N(0, 0.02 / sqrt(2 * n_layer))

With ``perturb=True`` (the default) the values a fresh GPT-2 would leave at exactly
1 or 0 are moved away from them, so that no term of the math can hide inside a
conformance check (a forgotten LayerNorm weight, a dropped bias, a swapped ln_1/ln_2):

    LayerNorm weights  1 + 0.1 * z      LayerNorm biases  0.1 * z
    linear biases      0.02 * z         (z ~ N(0, 1))

These weights are synthetic, not OpenAI's: anything that uses them says so
(`SYNTHETIC_LABEL`).

Reproducibility: every tensor has its own stream, ``SeedSequence([seed, tensor index])``
feeding a PCG64 bit generator (NumPy promises these raw streams never change). The
normals are drawn with Box-Muller from 53-bit uniforms in float64 and rounded to
float32. We do not use ``Generator.standard_normal``, whose algorithm NumPy may change
between releases.
"""

from __future__ import annotations

import math

import numpy as np

from weights.config import GPT2Config
from weights.layout import RESIDUAL_PROJECTIONS, param_shapes, tensor_kind

SYNTHETIC_LABEL = "SYNTHETIC weights (deterministic GPT-2 init, not OpenAI's trained GPT-2)"

INIT_STD = 0.02


def standard_normal(seed: int, stream: int, n: int) -> np.ndarray:
    """n draws of N(0, 1) as float64, from PCG64(SeedSequence([seed, stream])) via Box-Muller."""
    bits = np.random.PCG64(np.random.SeedSequence([seed, stream]))
    m = (n + 1) // 2
    raw = bits.random_raw(2 * m)
    # 53-bit uniforms in (0, 1]: never 0, so log() is finite.
    u = ((raw >> np.uint64(11)).astype(np.float64) + 1.0) * (1.0 / 9007199254740992.0)
    u1, u2 = u[:m], u[m:]
    r = np.sqrt(-2.0 * np.log(u1))
    theta = (2.0 * math.pi) * u2
    z = np.empty(2 * m, dtype=np.float64)
    z[:m] = r * np.cos(theta)
    z[m:] = r * np.sin(theta)
    return z[:n]


def synthetic(config: GPT2Config, seed: int = 0, perturb: bool = True, dtype=np.float32) -> dict[str, np.ndarray]:
    """A deterministic GPT-2 checkpoint (params dict in the canonical layout)."""
    params: dict[str, np.ndarray] = {}
    proj_std = INIT_STD / math.sqrt(2 * config.n_layer)
    for index, (name, shape) in enumerate(param_shapes(config).items()):
        z = standard_normal(seed, index, int(np.prod(shape))).reshape(shape)
        kind = tensor_kind(name)
        if kind.endswith("ln_1.weight") or kind.endswith("ln_2.weight") or kind == "ln_f.weight":
            values = 1.0 + 0.1 * z if perturb else np.ones(shape)
        elif kind.startswith(("ln_1", "ln_2", "ln_f")):  # LayerNorm biases
            values = 0.1 * z if perturb else np.zeros(shape)
        elif kind.endswith(".bias"):  # linear biases
            values = 0.02 * z if perturb else np.zeros(shape)
        elif kind in RESIDUAL_PROJECTIONS:
            values = proj_std * z
        else:  # wte, wpe, c_attn.weight, c_fc.weight
            values = INIT_STD * z
        # Round through float32 first so the float64 copy holds exactly the float32 values.
        params[name] = np.asarray(values, dtype=np.float32).astype(dtype, copy=False)
    return params
