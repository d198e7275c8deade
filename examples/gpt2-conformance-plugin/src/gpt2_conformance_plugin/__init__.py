"""gpt2-conformance-plugin: an independent GPT-2 that joins the conformance suite of "one GPT-2, three ways".

The project finds it through the entry-point group `gpt2_three_ways.conformance_backends` (pyproject.toml):
each entry point names a zero-argument callable that returns one `conformance.backends.Backend` or a
list of them. This package registers two:

    example-torch-autograd-f32      a compact GPT-2 in plain torch (model.py), gradients by autograd
    example-torch-autograd-broken   the same with one planted bug (attention scale 1/HS); runs only
                                    with GPT2_EXAMPLE_PLUGIN_BROKEN=1, and then the suite must fail on it
"""

from __future__ import annotations

from gpt2_conformance_plugin.backend import BROKEN_SWITCH, TorchAutogradBackend


def backend() -> TorchAutogradBackend:
    """The entry point of example-torch-autograd-f32."""
    return TorchAutogradBackend()


def broken_backend() -> TorchAutogradBackend:
    """The entry point of example-torch-autograd-broken (the planted bug)."""
    return TorchAutogradBackend(planted_bug=True)


__all__ = ["BROKEN_SWITCH", "TorchAutogradBackend", "backend", "broken_backend"]
