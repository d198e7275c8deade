"""The main job (`python -m conformance.compare`) says no: a backend beyond its ceiling or a crash exits 1.

Backends are planted through the registry: the reference itself, one off by a known relative amount
in its logits, one that raises. The ceiling is the conformance suite's own (FP32["logits"]).
"""

from __future__ import annotations

import numpy as np
import pytest

import conformance.compare as compare
import weights
from conformance.backends import Backend, NumpyBackend
from conformance.tolerances import BF16, FP32
from weights.paths import WHERE_TOKENIZER, tokenizer_dir

pytestmark = pytest.mark.skipif(tokenizer_dir() is None, reason=f"needs the GPT-2 tokenizer ({WHERE_TOKENIZER})")


class Scaled(Backend):
    """The float64 reference with every logit multiplied by (1 + rel): max|d|/max|ref| == rel."""

    def __init__(self, name: str, rel: float, precision: str = "fp32"):
        super().__init__(name, precision, "cpu")
        self.rel = rel

    def forward(self, params, config, idx):
        return NumpyBackend(np.float64).forward(params, config, idx) * (1.0 + self.rel)


class Crashes(Backend):
    def forward(self, params, config, idx):
        raise RuntimeError("kernel launch failed")


class Absent(Backend):
    def available(self):
        return False, "needs hardware this machine lacks"


@pytest.fixture
def ckpt(tmp_path):
    config = weights.GPT2Config.tiny()
    return weights.save(weights.synthetic(config, seed=0), config, tmp_path / "ckpt")


def run(monkeypatch, capsys, backends, *args):
    monkeypatch.setattr(compare, "registry", lambda: [NumpyBackend(np.float64), *backends])
    code = compare.main(list(args))
    return code, capsys.readouterr().out


def test_within_tolerance_passes_and_says_so(monkeypatch, capsys, ckpt):
    rel = FP32["logits"] / 10
    code, out = run(monkeypatch, capsys, [Scaled("near", rel), Absent("absent", "fp32", "gpu")], "--weights", str(ckpt))
    assert code == 0, out
    assert "near                 PASS      within tolerance" in out
    assert "absent               not run" in out  # not available here is not a failure
    assert "overall: PASS: 1 backend(s) agree with numpy-f64 within tolerance; 1 not available here" in out
    assert "exactly" not in out
    assert "[1/3] numpy-f64" in out and "[2/3] near" in out  # a progress line per backend


def test_beyond_the_ceiling_fails_with_exit_1(monkeypatch, capsys, ckpt):
    rel = FP32["logits"] * 3
    code, out = run(monkeypatch, capsys, [Scaled("near", 1e-7), Scaled("far", rel)], "--weights", str(ckpt))
    assert code == 1, out
    assert f"far                  FAIL      BEYOND TOLERANCE: {rel:.1e} > ceiling {FP32['logits']:.0e}" in out
    assert "overall: FAIL: far (1 of 2 judged backends)" in out


def test_bf16_backends_are_judged_on_the_bf16_row(monkeypatch, capsys, ckpt):
    code, out = run(monkeypatch, capsys, [Scaled("half", 3e-3, precision="bf16")], "--weights", str(ckpt))
    assert code == 0 and f"ceiling {BF16['logits']:.0e}" in out


def test_a_crash_of_an_available_backend_fails(monkeypatch, capsys, ckpt):
    code, out = run(monkeypatch, capsys, [Crashes("boom", "fp32", "cpu")], "--weights", str(ckpt))
    assert code == 1
    assert "boom                 FAIL      CRASHED: RuntimeError: kernel launch failed" in out


def test_the_synthetic_fallback_is_labelled(monkeypatch, capsys):
    """Offline with --fallback-synthetic: a banner, the label on the weights line and at the end."""

    def offline(source, sha256=None):
        raise weights.hub.HubError("the hub (huggingface.co) cannot be reached")

    class Tiny:  # the 124M build takes ~15 s; the labelling is the same at any size
        gpt2_124m = staticmethod(weights.GPT2Config.tiny)

    monkeypatch.setattr(compare, "load", offline)
    monkeypatch.setattr(compare, "GPT2Config", Tiny)
    code, out = run(monkeypatch, capsys, [], "--weights", "gpt2", "--fallback-synthetic")
    assert code == 0
    assert f"FALLING BACK TO {weights.SYNTHETIC_LABEL}" in out
    assert f"weights: {weights.SYNTHETIC_LABEL}" in out
    assert f"(these are {weights.SYNTHETIC_LABEL}: the tokens above are not GPT-2's predictions)" in out
    assert "building the synthetic GPT-2 124M checkpoint" in out


def test_offline_without_fallback_is_one_line(monkeypatch, capsys):
    def offline(source, sha256=None):
        raise weights.hub.HubError("the hub (huggingface.co) cannot be reached; pass --weights synthetic")

    monkeypatch.setattr(compare, "load", offline)
    assert compare.main(["--weights", "gpt2"]) == 2
    assert capsys.readouterr().err == "error: the hub (huggingface.co) cannot be reached; pass --weights synthetic\n"


def test_transformers_oracle_is_explained_and_quiet(capfd, ckpt):
    """The real hf backend on a vocabulary of 64: no bos/eos config warnings reach the user."""
    pytest.importorskip("transformers")
    code = compare.main(["--weights", str(ckpt), "--backends", "hf-transformers-f32"])
    out, err = capfd.readouterr()
    assert code == 0, out + err
    assert "an independent oracle we did not write" in out
    assert "hf-transformers-f32  PASS      within tolerance" in out
    assert "bos_token_id" not in out + err and "eos_token_id" not in out + err
    assert "build+forward: building the backend's model" in out
