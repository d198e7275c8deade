"""The conformance ceilings: one table, here and in docs/conformance.md.

Every number compares a backend against the float64 NumPy reference (`numpy-f64`) on the same
weights and tokens. Notation: d = backend - reference.

    logits       max|d| / max|ref|                       (worst logit, relative to the largest logit)
    loss         |d| / |ref|
    grad.<name>  ||d||_2 / ||ref||_2   and   max|d| / max|ref|   for every parameter tensor
    adamw.loss   max over steps of |d| / |ref|
    adamw.param  ||d||_2 / ||ref||_2 of every parameter tensor after the last step (worst tensor)
    adamw.update ||d||_2 / ||ref||_2 of every tensor's update, final - start (a weight that dwarfs its
                 update would hide an optimizer bug under the param check)
    generate     number of greedy tokens that differ (must be 0)
    kv_cache     number of greedy tokens that differ between generation with a KV cache and full
                 recomputation on the same backend (must be 0)

One rule sets every ceiling (conformance/spread.py, docs/conformance.md):

    ceiling = the worst value measured for the check and precision, over every seed, shape and
              device in the spread files, x F = 5, rounded up to the next 1-2-5 value;
              a relative ceiling above 1 is reported, not judged.

The measurements are results files written by the script that measured them, each with its
provenance record: docs/results/ceiling-spread-*.json (`python -m conformance.spread`: every
conformance case for several seeds of weights and tokens) and the H100 conformance reports
(conformance.spread.SOURCES lists them). `python -m conformance.spread --derive` prints, per row,
the worst value, where it was measured and the ceiling the rule gives; tests/conformance/
test_ceilings.py fails when a number here differs from it or from docs/conformance.md's table.
Why F = 5: conformance/spread.py (the measured leave-one-seed-out spread is 2.9 at most).

Counts (generation mismatches, KV cache) measured 0 everywhere, so the rule keeps them at 0.
bf16 AdamW trajectories measured O(1) relative differences: Adam turns bf16's gradient noise into
parameter noise within 10 steps, so the rule's value is above 1 and they are reported.

AdamW and the key bias. AdamW divides by sqrt(v): a coordinate whose gradient is pure rounding noise
takes a full +-lr step of arbitrary sign. GPT-2 has exactly such coordinates: the attention key bias
(the slice [C:2C] of attn.c_attn.bias) has a zero gradient in exact arithmetic, because it adds the
same q . b_k to every score of a softmax row. Those values are left out of the parameter comparison
(conformance/suite.py, `without_key_bias`); everything else is compared per tensor in the l2 sense.

A ceiling is never raised to make a run pass. A breach is a bug to localise (the divergence
localizer in conformance/localize.py says at which op two backends part). New measurements enter
only as a spread run over several seeds, never as the one number of a failing run.
"""

from __future__ import annotations

# Each row: the worst measured value, where (backend, case, seed, file in docs/results/), then x 5 -> 1-2-5.
FP32 = {
    "logits": 2e-5,  # 2.1e-6  torch-cuda-f32, 124m-B1-T1024, seed 0 (conformance-h100-124m.json)
    "loss": 1e-6,  # 1.5e-7  hf-transformers-f32, tiny-B2-T4-adamw, seed 2 (ceiling-spread-cpu.json)
    "grad_l2": 5e-5,  # 6.1e-6  numpy-f32, small-trained, seed 3 (ceiling-spread-cpu.json)
    "grad_max": 5e-5,  # 6.5e-6  numpy-f32, small-trained, seed 3 (ceiling-spread-cpu.json)
    "adamw_loss": 2e-4,  # 3.5e-5  hf-transformers-f32, 124m-adamw, seed 0 (conformance-cpu-adamw-update.json)
    "adamw_param_l2": 1e-3,  # 1.8e-4  numba-cuda-f32, 124m-adamw (conformance-h100-numba-splitk-124m.json)
    "adamw_update_l2": 5e-3,  # 6.4e-4  hf-transformers-f32, 124m-adamw (conformance-cpu-adamw-update.json)
    "generate_mismatches": 0,  # 0 everywhere
    "kv_cache": 0,  # 0 everywhere
}

BF16 = {  # torch-cuda-bf16 (autocast) on the H100, seed 0: what bf16 costs, not a float32-style proof
    "logits": 5e-2,  # 9.0e-3  124m-B4-T64 (conformance-h100-124m.json)
    "loss": 1e-2,  # 1.1e-3  tiny-trained (conformance-h100-small.json)
    "grad_l2": 5e-1,  # 6.0e-2  124m-B1-T1024, ln_f.weight (conformance-h100-124m.json)
    "grad_max": 5e-1,  # 6.4e-2  124m-B1-T1024 (conformance-h100-124m.json)
    "adamw_loss": None,  # 0.88 x 5 > 1: reported (124m-adamw, conformance-h100-124m.json)
    "adamw_param_l2": None,  # 1.09 x 5 > 1: reported (same run)
    "adamw_update_l2": None,  # not measured yet in bf16 (the parameters differ by O(1)): reported
    "generate_mismatches": 0,  # 0 (conformance-h100-small.json)
    "kv_cache": 0,  # 0 (conformance-h100-small.json)
}

# The divergence localizer's threshold is not a verdict (nothing passes or fails on it): it only picks the
# first activation to point at. It sits at or below the logits ceiling of the precision, so that the op
# where a breach starts is named even when the bug's error is still small there and grows op by op
# (tests/conformance/test_harness.py plants such bugs and checks the op the localizer names).
LOCALIZE = {"fp32": 1e-5, "bf16": 5e-2}

# The float32 NumPy reference is itself a float32 backend and held to FP32.
CEILINGS = {"fp32": FP32, "bf16": BF16}


def ceiling(precision: str, check: str):
    return CEILINGS[precision][check]
