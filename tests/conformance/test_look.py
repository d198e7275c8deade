"""`python -m conformance inspect` (conformance/look.py): each view against an independent computation.

Configs: the tiny GPT-2 and one variant with every option of docs/variants.md on at once (rotary positions,
RMSNorm, SwiGLU, grouped-query attention with 1 key/value head for 2 query heads, no biases, an untied head),
so that the logit lens must apply RMSNorm and lm_head.weight, and the attention maps must read h.{i}.rope
and share the key head.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import reference
import weights
from conformance import look
from conformance import look_views as views
from conformance.backends import Backend, NumpyBackend
from conformance.cases import TINY, TINY_LLAMA
from conformance.tolerances import LOCALIZE

VARIANT = dataclasses.replace(TINY_LLAMA, tied_head=False)
CONFIGS = {"tiny": TINY, "variant": VARIANT}
IDS = [5, 17, 3, 42, 8, 8, 60, 1, 23, 11, 0, 37]  # 12 positions, a repeated token among them
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=list(CONFIGS), scope="module")
def model(request):
    config = CONFIGS[request.param]
    return weights.synthetic(config, seed=3), config


def ref_acts(params, config, ids=IDS):
    return reference.activations(
        {k: v.astype(np.float64) for k, v in params.items()}, config, np.array([ids]), with_attention_probs=True
    )


def f64_look(params, config, **kw):
    return look.look_inside(params, config, IDS, NumpyBackend(np.float64), **kw)


# ----------------------------------------------------------------------------------- statistics
def test_statistics_are_numpys_on_every_activation(model):
    params, config = model
    result, acts = f64_look(params, config), ref_acts(params, config)
    assert result.names == weights.activation_names(config)
    for name in result.names:
        x = acts[name]
        s = result.stats[name]
        assert result.shapes[name] == x.shape
        np.testing.assert_allclose(
            [s.mean, s.std, s.rms, s.min, s.max],
            [x.mean(), x.std(), np.sqrt((x**2).mean()), x.min(), x.max()],
            rtol=1e-12,
            atol=1e-15,
        )
        assert s.outliers == np.count_nonzero(np.abs(x - x.mean()) > 6 * x.std()) / x.size


def test_an_outlier_is_counted():
    x = np.zeros((1, 10, 100))
    x[0, :, ::2] = 1.0  # mean 0.5, std 0.5: nothing is 6 std away
    assert views.activation_stats(x).outliers == 0.0
    x[0, 3, 7] = 1e3  # one element far out
    assert views.activation_stats(x).outliers == 1 / x.size


@pytest.mark.parametrize("value, counted", [(5.5, False), (6.5, True)])
def test_outliers_are_six_standard_deviations_out(value, counted):
    x = np.concatenate([np.tile([1.0, -1.0], 5000), [value]])  # mean ~0, std ~1: `value` sits ~value std out
    assert views.activation_stats(x[None, None]).outliers == (1 / x.size if counted else 0.0)


# ----------------------------------------------------------------------------------- attention maps
def test_attention_maps_are_causal_row_stochastic_and_the_references(model):
    params, config = model
    result, acts = f64_look(params, config), ref_acts(params, config)
    T = len(IDS)
    for i in range(config.n_layer):
        maps = result.attention[i]  # (NH, T, T)
        assert maps.shape == (config.n_head, T, T)
        np.testing.assert_allclose(maps.sum(axis=-1), 1.0, rtol=0, atol=1e-12)
        assert (maps[:, np.triu(np.ones((T, T), bool), k=1)] == 0).all()
        np.testing.assert_array_equal(maps, acts[f"h.{i}.att"][0])
        # recomputed from what attention reads (qkv, or rope for the variant) equals the reference's softmax
        qkv = acts[views.attention_input_name(config, i)]
        recomputed = views.attention_probs(qkv, config.n_head, config.kv_heads)[0]
        np.testing.assert_allclose(recomputed, acts[f"h.{i}.att"][0], rtol=0, atol=1e-12)


def test_another_backends_maps_are_recomputed_and_agree(model):
    pytest.importorskip("torch")
    from conformance.backends import TorchBackend

    params, config = model
    result = look.look_inside(params, config, IDS, TorchBackend("cpu", "fp32"), layers=[config.n_layer - 1])
    assert result.attention_source.startswith("recomputed")
    att = ref_acts(params, config)[f"h.{config.n_layer - 1}.att"][0]
    # torch computes in float32: its probabilities sit within the float32 noise level the localizer uses
    assert np.abs(result.attention[config.n_layer - 1] - att).max() < LOCALIZE["fp32"]


def test_the_wrong_input_would_be_seen():
    """The variant's maps differ when read from qkv instead of rope, or without the key-head grouping:
    so the equality above pins both."""
    params = weights.synthetic(VARIANT, seed=3)
    acts = ref_acts(params, VARIANT)
    att = acts["h.0.att"][0]
    from_qkv = views.attention_probs(acts["h.0.qkv"], VARIANT.n_head, VARIANT.kv_heads)[0]
    assert np.abs(from_qkv - att).max() > 1e-6


def test_grouped_heads_read_their_own_key_head():
    """4 query heads on 2 key/value heads: heads 0, 1 read key head 0 and heads 2, 3 key head 1."""
    config = dataclasses.replace(TINY, n_head=4, n_kv_head=2)
    acts = ref_acts(weights.synthetic(config, seed=5), config)
    recomputed = views.attention_probs(acts["h.1.qkv"], config.n_head, config.kv_heads)[0]
    np.testing.assert_allclose(recomputed, acts["h.1.att"][0], rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------- logit lens
def test_the_lens_of_the_last_layer_is_the_models_top_k(model):
    params, config = model
    K = 7
    result, acts = f64_look(params, config, top=K), ref_acts(params, config)
    lens = {r.stream: r for r in result.lens}
    assert list(lens) == ["embed"] + [f"h.{i}.resid_2" for i in range(config.n_layer)] + ["logits"]
    logits = acts["logits"][0]  # (T, V)
    want = np.argsort(-logits, axis=-1, kind="stable")[:, :K]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for stream in (f"h.{config.n_layer - 1}.resid_2", "logits"):
        np.testing.assert_array_equal(lens[stream].ids, want)
        np.testing.assert_allclose(lens[stream].probs, np.take_along_axis(probs, want, -1), rtol=1e-10)


def test_the_lens_of_an_earlier_layer_is_a_shallower_models_output(model):
    """Block 0's output read through ln_f and the head is exactly the logits of the same model cut after
    block 0: an independent check of the lens' norm and head (RMSNorm and lm_head for the variant)."""
    params, config = model
    result = f64_look(params, config, top=3)
    cut = dataclasses.replace(config, n_layer=1)
    kept = {k: v for k, v in params.items() if not k.startswith("h.") or k.startswith("h.0.")}
    logits = ref_acts(kept, cut)["logits"][0]
    row = next(r for r in result.lens if r.stream == "h.0.resid_2")
    np.testing.assert_array_equal(row.ids, np.argsort(-logits, axis=-1, kind="stable")[:, :3])


# ----------------------------------------------------------------------------------- divergence
class Perturbed(Backend):
    """The float64 reference with one parameter tensor scaled by (1 + rel): every activation before the op
    that reads it is bit-identical, the op's output is off by about rel."""

    def __init__(self, tensor: str, rel: float = 1e-3):
        super().__init__("perturbed", "fp32", "cpu")
        self.tensor, self.rel = tensor, rel

    def activations(self, params, config, idx):
        p = dict(params)
        p[self.tensor] = params[self.tensor] * np.float32(1 + self.rel)
        return NumpyBackend(np.float64).activations(p, config, idx)


def test_a_backend_against_itself_diverges_nowhere(model):
    params, config = model
    result = f64_look(params, config, compare=NumpyBackend(np.float64))
    assert [n for n, _ in result.divergence.errors] == weights.activation_names(config)
    assert all(e == 0.0 for _, e in result.divergence.errors)
    assert result.divergence.name is None


@pytest.mark.parametrize(
    "tensor, first", [("h.1.mlp.c_fc.weight", "h.1.fc"), ("h.0.attn.c_proj.weight", "h.0.attn_proj")]
)
def test_a_perturbed_copy_is_named_where_it_starts(model, tensor, first):
    params, config = model
    result = f64_look(params, config, compare=Perturbed(tensor))
    d = result.divergence
    assert d.name == first and d.threshold == LOCALIZE["fp32"]
    names = [n for n, _ in d.errors]
    assert all(e == 0.0 for _, e in d.errors[: names.index(first)])
    assert result.lines == {"logits ceiling (fp32)": 2e-5, "localizer threshold (fp32)": 1e-5}


# ----------------------------------------------------------------------------------- files
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_pictures_are_valid_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    params = weights.synthetic(VARIANT, seed=3)
    result = f64_look(params, VARIANT, compare=Perturbed("h.1.mlp.c_fc.weight"), heads=[1], decode=str)
    written = look.write_outputs(result, tmp_path)
    names = sorted(p.name for p in written)
    assert names == sorted(
        [
            "activations.png",
            "logit-lens.png",
            "attention-layer-0.png",
            "attention-layer-1.png",
            "divergence.png",
            "summary.md",
            "summary.json",
        ]
    )
    for p in written:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5_000, p
            pixels = matplotlib.image.imread(p)
            assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.std() > 0.01, p  # drawn, not blank
    md = (tmp_path / "summary.md").read_text()
    assert "![divergence per activation](divergence.png)" in md and "SYNTHETIC" not in md  # label="" here
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["divergence"]["first"] == "h.1.fc" and data["charts"] == [p.name for p in written if p.suffix == ".png"]
    assert list(data["attention"]["heads"]["h.0"]) == ["1"]


def test_text_mode_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    folder = weights.save(weights.synthetic(TINY, seed=1), TINY, tmp_path / "ckpt").parent
    code = look.main(["--weights", str(folder), "--prompt", "To be, or not", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.json", "summary.md"]
    assert "pip install .[plot]" in err and "pip install .[plot]" in (tmp_path / "out" / "summary.md").read_text()
    assert f"weights:  checkpoint {folder}" in out and "SYNTHETIC" not in out  # a local checkpoint, not synthetic
    assert "h.1.resid_2" in out and "== logit lens" in out and "T o ␣ b e , ␣ o r ␣ n o t" in out


def test_a_saved_synthetic_checkpoint_is_labelled(tmp_path):
    folder = weights.save(weights.synthetic(TINY), TINY, tmp_path, metadata={"weights": weights.SYNTHETIC_LABEL})
    assert look.load_weights(str(folder))[2].startswith(weights.SYNTHETIC_LABEL)


# ----------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "args, flag",
    [
        (["--backend", "nosuch"], "--backend 'nosuch': unknown backend"),
        (["--compare", "hf-transformers-f32"], "--compare hf-transformers-f32: no named activations"),
        (["--prompt", ""], "--prompt is empty"),
        (["--ids", "1,64"], "--ids: token id 64 is outside [0, vocab_size=64)"),
        (["--ids", "1,x"], "--ids '1,x': not a comma-separated list"),
        (["--ids", ",".join(["1"] * 17)], "--ids is 17 tokens, longer than the model's context (n_ctx = 16)"),
        (["--layers", "2"], "--layers '2': layer 2 does not exist; the model has layers 0..1"),
        (["--heads", "0,5"], "--heads '0,5': head 5 does not exist"),
        (["--top", "0"], "--top 0: must be at least 1"),
        (["--weights", "synthetic:nosuch"], "--weights synthetic:nosuch: unknown synthetic config"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, args, flag):
    if "hf-transformers-f32" in args:
        pytest.importorskip("transformers")
    code = look.main(["--weights", "tiny", "--out", str(tmp_path / "out"), *args])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.splitlines()[-1].startswith(f"error: {flag}"), err
    assert sum(line.startswith("error:") for line in err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists() and out == ""  # nothing written, no half report


def test_the_command_through_a_subprocess(tmp_path):
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_WAIT_POLICY": "PASSIVE", "MPLBACKEND": "Agg"}
    cmd = [
        sys.executable,
        "-m",
        "conformance",
        "inspect",
        "--weights",
        "tiny-llama",
        "--prompt",
        "To be",
        "--compare",
        "numpy-f32",
        "--top",
        "3",
        "--out",
        str(tmp_path),
    ]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (
        run.stdout.startswith("weights:  SYNTHETIC weights")
        and "no activation differs by more than 1e-05" in run.stdout
    )
    assert "position=rope" in run.stdout and "recomputed" not in run.stdout  # the reference keeps its own softmax
    assert (tmp_path / "summary.json").is_file() and json.loads((tmp_path / "summary.json").read_text())["synthetic"]
