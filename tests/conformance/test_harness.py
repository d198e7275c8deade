"""The conformance harness itself: metrics, skip reporting, and the divergence localizer on planted bugs."""

from __future__ import annotations

import numpy as np
import pytest

from conformance import checks
from conformance.backends import Backend, NumpyBackend, TorchBackend
from conformance.cases import CASES, batch, params_for
from conformance.localize import activation_order, localize_backends
from conformance.suite import run_case
from conformance.tolerances import FP32, LOCALIZE

CASE = next(c for c in CASES if c.name == "tiny-B4-ctx")


def test_metrics():
    ref = np.array([1.0, -4.0, 2.0])
    assert checks.max_rel(ref + [0, 0.004, 0], ref) == pytest.approx(1e-3)
    assert checks.l2_rel(ref * 1.01, ref) == pytest.approx(1e-2)
    assert checks.scalar_rel(2.002, 2.0) == pytest.approx(1e-3)
    assert checks.max_rel(np.array([np.nan, 0, 0]), ref) == float("inf")
    with pytest.raises(ValueError, match="shape"):
        checks.max_rel(ref[:2], ref)
    name, worst, _ = checks.worst_tensor({"a": ref, "b": ref * 2}, {"a": ref, "b": ref}, checks.l2_rel)
    assert (name, worst) == ("b", pytest.approx(1.0))


def test_unavailable_backend_is_reported_with_reason():
    class Missing(Backend):
        def available(self):
            return False, "no such hardware here"

    (r,) = run_case(CASE, Missing("imaginary-f32", "fp32", "none"))
    assert r.passed is None and r.detail == "skipped: no such hardware here"


class _TransposedCProj(NumpyBackend):
    """numpy-f32 with a planted bug in one op: layer 1's attention c_proj uses W.T (a missed transpose)."""

    def __init__(self):
        super().__init__(np.float32)
        self.name = "numpy-f32-planted-bug"

    def _p(self, params):
        p = super()._p(params)
        p["h.1.attn.c_proj.weight"] = np.ascontiguousarray(p["h.1.attn.c_proj.weight"].T)
        return p


def test_planted_transpose_fails_the_ceilings_and_is_localised():
    backend = _TransposedCProj()
    results = {r.check: r for r in run_case(CASE, backend)}
    assert results["logits"].passed is False and results["logits"].value > 100 * FP32["logits"]
    d = localize_backends(
        backend, NumpyBackend(np.float64), params_for(CASE), CASE.config, batch(CASE)[0], LOCALIZE["fp32"]
    )
    assert d.name == "h.1.attn_proj", d.describe()
    assert "attn.c_proj" in d.op and "layer 1" in d.op
    names = [n for n, _ in d.errors]
    assert names == activation_order(CASE.config)
    assert all(e <= LOCALIZE["fp32"] for n, e in d.errors[: names.index("h.1.attn_proj")])


def test_correct_backend_is_not_localised():
    backend = NumpyBackend(np.float32)
    d = localize_backends(
        backend, NumpyBackend(np.float64), params_for(CASE), CASE.config, batch(CASE)[0], LOCALIZE["fp32"]
    )
    assert d.name is None, d.describe()


def test_planted_erf_gelu_in_torch_is_localised(monkeypatch):
    """torch_impl with the erf GELU (nn.GELU()'s default, wrong for GPT-2) parts from the reference at h.0.gelu."""
    pytest.importorskip("torch")
    import torch.nn.functional as F

    exact_gelu = F.gelu

    def erf_gelu(x, approximate="none"):
        return exact_gelu(x)  # ignores approximate="tanh": the classic GPT-2 bug

    # The two GELUs differ by up to ~5e-4 for |x| near 2; synthetic c_fc weights keep |x| << 1, where
    # they agree to ~1e-6. Scale c_fc up so the MLP's inputs span the range where the forms differ.
    params = {k: np.array(v) for k, v in params_for(CASE).items()}
    for i in range(CASE.config.n_layer):
        params[f"h.{i}.mlp.c_fc.weight"] *= 20.0
    idx = batch(CASE)[0]
    backend = TorchBackend("cpu", "fp32", attention="math")
    clean = localize_backends(backend, NumpyBackend(np.float64), params, CASE.config, idx, LOCALIZE["fp32"])
    assert clean.name is None, clean.describe()
    monkeypatch.setattr(F, "gelu", erf_gelu)
    d = localize_backends(backend, NumpyBackend(np.float64), params, CASE.config, idx, LOCALIZE["fp32"])
    assert d.name == "h.0.gelu", d.describe()
    assert "GELU" in d.op


def test_report_fails_and_localises_a_planted_bug(monkeypatch, tmp_path, capsys):
    import json

    from conformance import report

    monkeypatch.setattr(report, "registry", lambda: [NumpyBackend(np.float64), _TransposedCProj()])
    out = tmp_path / "r.json"
    code = report.main(["--cases", "tiny-B1-T7", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 1
    assert "FAIL" in text and "backends part at h.1.attn_proj" in text
    data = json.loads(out.read_text())
    assert any(r["passed"] is False and r["check"] == "logits" for r in data["results"])
    assert data["localizations"][0]["backend"] == "numpy-f32-planted-bug"


def test_report_passes_a_correct_backend(monkeypatch, tmp_path, capsys):
    from conformance import report

    monkeypatch.setattr(report, "registry", lambda: [NumpyBackend(np.float64), NumpyBackend(np.float32)])
    assert report.main(["--cases", "tiny-B1-T7", "--json", str(tmp_path / "r.json")]) == 0
    assert "0 failed" in capsys.readouterr().out
