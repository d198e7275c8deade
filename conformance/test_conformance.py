"""The conformance suite as pytest tests: every case on every backend, against the float64 reference.

One test per (case, backend), for every backend of the registry: the built-in ones and those of the
installed plugins (conformance/plugins.py), whose test ids are "<case>-<backend name>" like any other.
A backend that cannot run here is skipped with its reason; a check that breaches its ceiling fails
with the number, the ceiling and, for logits/gradients, the divergence localizer's verdict. A plugin
that failed to load fails `test_every_plugin_loads` with its error. Full 124M cases run with --full.
"""

from __future__ import annotations

import numpy as np
import pytest

from conformance.backends import NumpyBackend, registry
from conformance.cases import CASES, batch, params_for
from conformance.localize import localize_backends
from conformance.plugins import PluginFailure
from conformance.suite import REFERENCE, run_case
from conformance.tolerances import LOCALIZE

REGISTRY = registry()
BACKENDS = [b for b in REGISTRY if b.name != REFERENCE and not isinstance(b, PluginFailure)]


def _params():
    for case in CASES:
        marks = [pytest.mark.full] if case.full else []
        for b in BACKENDS:
            extra = [pytest.mark.gpu] if b.device == "cuda" and b.name != "numba-cuda-f32" else []
            yield pytest.param(case, b, id=f"{case.name}-{b.name}", marks=marks + extra)


@pytest.mark.parametrize("case,backend", list(_params()))
def test_conformance(case, backend):
    results = run_case(case, backend)
    if all(r.detail.startswith("skipped") for r in results):
        pytest.skip(results[0].detail)
    failures = [r for r in results if r.passed is False]
    if failures:
        lines = [
            f"{r.check}: {r.value} > ceiling {r.ceiling} ({r.detail})"
            if r.value is not None
            else f"{r.check}: {r.detail}"
            for r in failures
        ]
        try:
            ceiling = LOCALIZE[backend.precision]
            d = localize_backends(
                backend, NumpyBackend(np.float64), params_for(case), case.config, batch(case)[0], ceiling
            )
            lines.append("localizer: " + d.describe())
        except Exception as e:
            lines.append(f"localizer could not run: {e}")
        pytest.fail(f"{backend.name} on {case.name}:\n  " + "\n  ".join(lines))
    judged = [r for r in results if r.passed is True]
    assert judged, f"{backend.name} on {case.name}: no check was judged ({[r.detail for r in results]})"


def test_every_plugin_loads():
    """An installed plugin whose entry point raised, returned no Backend or reused a name fails here, by name."""
    failures = [f"{b.name} ({b.origin}): {b.error}" for b in REGISTRY if isinstance(b, PluginFailure)]
    assert not failures, "plugin(s) that did not load:\n  " + "\n  ".join(failures)
