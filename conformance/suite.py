"""Run the conformance checks of one case on one backend, against the float64 reference.

`run_case(case, backend)` returns a list of `Result`s (one per check and metric); the reference's
own results for the case are computed once and cached. The CLI (conformance/report.py) and the
pytest suite (conformance/test_conformance.py) both call this.
"""

from __future__ import annotations

import functools
import time
import traceback
from dataclasses import asdict, dataclass, field

import numpy as np

from conformance import checks
from conformance.backends import Backend, NumpyBackend
from conformance.cases import ADAMW_STEPS, GENERATE_TOKENS, Case, CaseUnavailable, batch, params_for
from conformance.tolerances import CEILINGS

REFERENCE = "numpy-f64"


@dataclass
class Result:
    case: str
    backend: str
    check: str  # e.g. "logits", "grad_l2", "adamw_loss"
    value: float | None
    ceiling: float | None
    passed: bool | None  # None: reported, not judged (or skipped)
    detail: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@functools.cache
def _reference_run(case: Case, what: str, seed: int = 0):
    """The float64 reference's answer for `case` (cached: every backend compares to the same numbers)."""
    ref = NumpyBackend(np.float64)
    params = params_for(case, seed)
    idx, targets = case_batch(case, seed)
    if what == "forward_backward":
        return ref.forward_backward(params, case.config, idx, targets)
    if what == "adamw":
        return ref.adamw(params, case.config, idx, targets, ADAMW_STEPS, case.adamw_hp)
    if what == "generate":
        return ref.generate(params, case.config, idx, GENERATE_TOKENS)
    raise ValueError(what)


def without_key_bias(params: dict, config) -> dict:
    """Drop the key slice of every attn.c_attn.bias before comparing AdamW trajectories.

    With learned positions the key bias has an exactly zero gradient: it adds q . b_k to every score of
    a query's row, and softmax is invariant to adding a constant to a row. Its computed gradient is
    rounding noise (~1e-21 in float64, ~1e-10 in float32) and Adam's m / sqrt(v) turns noise of any size
    into a full +-lr step of random sign, so after 10 steps those 768 values differ by up to 2e-2
    between any two correct implementations. Every other value is compared. The key slice is the
    columns [NH HS, (NH + NKV) HS) ([C, 2C) for GPT-2). With rotary positions the bias is rotated with
    its key, by an angle that differs from key to key, so it is not a constant of the row: its gradient
    is real and it is compared like everything else.
    """
    if config.position != "learned" or not config.bias:
        return dict(params)
    k0 = config.n_head * config.head_size
    k1 = k0 + config.kv_heads * config.head_size
    out = dict(params)
    for name in params:
        if name.endswith("attn.c_attn.bias"):
            b = np.asarray(params[name])
            out[name] = np.concatenate([b[:k0], b[k1:]])
    return out


def _judge(value, ceiling) -> bool | None:
    if ceiling is None:
        return None
    return bool(value <= ceiling)


def case_batch(case: Case, seed: int = 0):
    """The case's tokens: seed 0 is the suite's batch; conformance.spread draws others."""
    return batch(case) if seed == 0 else batch(case, seed=1234 + seed)


def run_case(case: Case, backend: Backend, seed: int = 0) -> list[Result]:
    """Every check of `case` on `backend`. seed 0 is the suite; conformance.spread measures other
    seeds (weights and tokens drawn with them) to set the ceilings."""
    ok, why = backend.available()
    if ok:
        ok, why = backend.supports(case.config, case.B * case.T)
    if not ok:
        return [Result(case.name, backend.name, "all", None, None, None, f"skipped: {why}")]
    try:
        params = params_for(case, seed)
        idx, targets = case_batch(case, seed)
    except CaseUnavailable as e:
        return [Result(case.name, backend.name, "all", None, None, None, f"skipped: {e}")]
    ceil = CEILINGS["fp32" if backend.precision == "fp64" else backend.precision]
    out: list[Result] = []

    def add(check, value, detail="", seconds=0.0, **extra):
        c = ceil[check]
        out.append(Result(case.name, backend.name, check, float(value), c, _judge(value, c), detail, seconds, extra))

    for what in case.checks:
        t0 = time.perf_counter()
        try:
            if what == "forward_backward":
                logits, loss, grads = backend.forward_backward(params, case.config, idx, targets)
                dt = time.perf_counter() - t0
                r_logits, r_loss, r_grads = _reference_run(case, "forward_backward", seed)
                add("logits", checks.max_rel(logits, r_logits), seconds=dt)
                add("loss", checks.scalar_rel(loss, r_loss), f"loss {float(loss):.6f} vs {float(r_loss):.6f}")
                name, worst, per = checks.worst_tensor(grads, r_grads, checks.l2_rel)
                add("grad_l2", worst, f"worst tensor {name}", per_tensor=per)
                name, worst, per = checks.worst_tensor(grads, r_grads, checks.max_rel)
                add("grad_max", worst, f"worst tensor {name}", per_tensor=per)
            elif what == "adamw":
                losses, final = backend.adamw(params, case.config, idx, targets, ADAMW_STEPS, case.adamw_hp)
                dt = time.perf_counter() - t0
                r_losses, r_final = _reference_run(case, "adamw", seed)
                worst_step = max(range(len(r_losses)), key=lambda i: checks.scalar_rel(losses[i], r_losses[i]))
                add(
                    "adamw_loss",
                    checks.scalar_rel(losses[worst_step], r_losses[worst_step]),
                    f"worst at step {worst_step + 1} of {ADAMW_STEPS}",
                    dt,
                    losses=list(map(float, losses)),
                )
                final, r_final = without_key_bias(final, case.config), without_key_bias(r_final, case.config)
                name, worst, per = checks.worst_tensor(final, r_final, checks.l2_rel)
                add("adamw_param_l2", worst, f"worst tensor {name} (key biases excluded)", per_tensor=per)
                start = without_key_bias(params, case.config)
                name, worst, per = checks.worst_tensor(
                    checks.moved(final, start), checks.moved(r_final, start), checks.l2_rel
                )
                add("adamw_update_l2", worst, f"worst tensor {name} (key biases excluded)", per_tensor=per)
            elif what == "generate":
                tokens = np.asarray(backend.generate(params, case.config, idx, GENERATE_TOKENS))
                dt = time.perf_counter() - t0
                r_tokens = np.asarray(_reference_run(case, "generate", seed))
                mism = int((tokens != r_tokens).sum()) if tokens.shape == r_tokens.shape else int(r_tokens.size)
                add(
                    "generate_mismatches",
                    mism,
                    f"{GENERATE_TOKENS} greedy tokens after {case.T}",
                    dt,
                    tokens=tokens.tolist(),
                    reference=r_tokens.tolist(),
                )
            elif what == "kv_cache":
                cached = np.asarray(backend.generate(params, case.config, idx, GENERATE_TOKENS, use_cache=True))
                full = np.asarray(backend.generate(params, case.config, idx, GENERATE_TOKENS, use_cache=False))
                dt = time.perf_counter() - t0
                add("kv_cache", int((cached != full).sum()), "greedy tokens with KV cache vs full recompute", dt)
            else:
                raise ValueError(f"unknown check {what!r}")
        except NotImplementedError as e:
            out.append(Result(case.name, backend.name, what, None, None, None, f"skipped: {e}"))
        except Exception as e:  # a crash is a failure with its traceback, not a missing row
            tb = traceback.format_exception_only(type(e), e)[-1].strip()
            out.append(Result(case.name, backend.name, what, None, None, False, f"error: {tb}"))
    return out
