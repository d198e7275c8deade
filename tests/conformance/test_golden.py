"""Golden files (conformance/golden.py): the names and shapes of docs/golden-format.md, the suite's own
numbers bit for bit, the metadata, a file the official safetensors library reads, and the weights beside
the file for large cases."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from conformance import golden, tensorfile
from conformance.backends import ADAMW_DEFAULTS, NumpyBackend
from conformance.cases import ADAMW_STEPS, CASES, GENERATE_TOKENS, CaseUnavailable, params_for
from conformance.suite import _reference_run, case_batch
from conformance.tolerances import CEILINGS
from weights import GPT2Config, activation_names, param_shapes
from weights.errors import UserError

# a GPT-2 with the forward/backward and AdamW checks, a variant (the llama-style options together) with
# both, and trained weights with greedy generation and the KV cache
NAMES = ("tiny-B2-T4-adamw", "tiny-llama", "tiny-trained")
CASE = {c.name: c for c in CASES}


def quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    out = tmp_path_factory.mktemp("golden")
    made = {}
    for name in NAMES:
        try:
            made[name] = golden.export_case(CASE[name], out, log=quiet)
        except CaseUnavailable as e:
            made[name] = e
    return made


def opened(kit, name) -> golden.Golden:
    if isinstance(kit[name], Exception):
        pytest.skip(f"{name}: {kit[name]}")
    return golden.open_golden(kit[name])


def expected_names(case) -> set[str]:
    """The tensor names docs/golden-format.md gives a case of these checks, built from weights.layout."""
    params, acts = param_shapes(case.config), activation_names(case.config)
    names = {"input.idx", "input.targets"} | {f"weight.{n}" for n in params}
    if "forward_backward" in case.checks:
        names |= {"logits", "loss"} | {f"grad.{n}" for n in params} | {f"act.{n}" for n in acts}
    if "adamw" in case.checks:
        names |= {"adamw.loss"} | {f"adamw.param.{n}" for n in params}
        names |= {f"adamw.step{k}.param.{n}" for k in range(1, ADAMW_STEPS) for n in params}
    if "generate" in case.checks:
        names |= {"generate.tokens", "generate.tokens_kv_cache"}
    return names


@pytest.mark.parametrize("name", NAMES)
def test_names_shapes_and_dtypes_follow_the_layout(kit, name):
    g, case = opened(kit, name), CASE[name]
    assert set(g.names()) == expected_names(case)
    shapes = param_shapes(case.config)
    B, T, V = case.B, case.T, case.config.vocab_size
    for n, e in g.file.entries.items():
        if n.startswith(("input.", "generate.")):
            assert e.dtype == "I64", n
        else:
            assert e.dtype == "F64", n
        if n.startswith(("grad.", "weight.", "adamw.param.", "adamw.step")):
            assert e.shape == shapes[n.split(".param.")[-1] if n.startswith("adamw") else n.split(".", 1)[1]], n
        if n.startswith("act."):
            assert e.shape[:2] == (B, T) and len(e.shape) == 3, n
    assert g.file.entries["input.idx"].shape == (B, T)
    if "logits" in g:
        assert g.file.entries["logits"].shape == g.file.entries["act.logits"].shape == (B, T, V)
        assert g.file.entries["loss"].shape == ()
    if "generate.tokens" in g:
        assert g.file.entries["generate.tokens"].shape == (B, T + GENERATE_TOKENS)


@pytest.mark.parametrize("name", NAMES)
def test_values_are_the_suites_own_bit_for_bit(kit, name):
    g, case = opened(kit, name), CASE[name]
    idx, targets = case_batch(case)
    assert np.array_equal(g.array("input.idx"), idx) and np.array_equal(g.array("input.targets"), targets)
    params = params_for(case)
    assert all(np.array_equal(g.array(f"weight.{n}"), params[n]) for n in params)
    assert all(np.array_equal(p, params[n]) for n, p in g.params().items())
    ref = NumpyBackend(np.float64)
    if "forward_backward" in case.checks:
        logits, loss, grads = _reference_run(case, "forward_backward")
        assert np.array_equal(g.array("logits"), logits) and float(g.array("loss")) == loss
        assert all(np.array_equal(g.array(f"grad.{n}"), grads[n]) for n in grads)
        acts = ref.activations(params, case.config, idx)
        assert all(np.array_equal(g.array(f"act.{n}"), acts[n]) for n in acts)
    if "adamw" in case.checks:
        losses, final = _reference_run(case, "adamw")
        assert g.array("adamw.loss").tolist() == losses
        assert all(np.array_equal(g.array(f"adamw.param.{n}"), final[n]) for n in final)
        _, one = ref.adamw(params, case.config, idx, targets, 1, ADAMW_DEFAULTS)
        assert all(np.array_equal(g.array(f"adamw.step1.param.{n}"), one[n]) for n in one)
        assert not np.array_equal(g.array("adamw.step1.param.wte.weight"), params["wte.weight"])  # it moved
    if "generate" in case.checks:
        tokens = _reference_run(case, "generate")
        assert np.array_equal(g.array("generate.tokens"), tokens)
        assert np.array_equal(g.array("generate.tokens_kv_cache"), tokens)


@pytest.mark.parametrize("name", NAMES)
def test_metadata(kit, name):
    g, case = opened(kit, name), CASE[name]
    meta = g.file.metadata
    assert (meta["format"], meta["format_version"], meta["case"]) == ("gpt2-conformance-golden", "1", name)
    assert GPT2Config.from_hf_dict(json.loads(meta["config"])) == case.config
    assert json.loads(meta["checks"]) == list(case.checks)
    assert g.ceilings == json.loads(json.dumps(CEILINGS))
    assert g.weights["source"] == case.weights and g.weights["stored"] == "inline"
    sha = hashlib.sha256(b"".join(params_for(case)[n].astype("<f4").tobytes() for n in param_shapes(case.config)))
    assert g.weights["params_sha256"] == sha.hexdigest()
    assert "commit" in g.provenance["git"] and g.provenance["versions"]["numpy"] == np.__version__
    if "adamw" in case.checks:
        assert {k: g.adamw[k] for k in ADAMW_DEFAULTS} == ADAMW_DEFAULTS and g.adamw["steps"] == ADAMW_STEPS
        assert "wte.weight" in g.adamw["decayed"] and "h.1.attn.c_attn.weight" in g.adamw["decayed"]
        assert not [n for n in g.adamw["decayed"] if "ln_" in n or n.endswith(".bias")]
    if "generate" in case.checks:
        assert g.generate["max_new_tokens"] == GENERATE_TOKENS


def test_the_official_safetensors_library_reads_it(kit):
    from safetensors import safe_open

    g = opened(kit, "tiny-B2-T4-adamw")
    with safe_open(str(g.path), framework="numpy") as f:
        assert f.metadata() == g.file.metadata
        assert set(f.keys()) == set(g.names())
        for n in ("logits", "loss", "input.idx", "grad.h.1.mlp.c_fc.weight", "adamw.loss"):
            assert np.array_equal(f.get_tensor(n), g.array(n)) and f.get_tensor(n).shape == g.array(n).shape


def test_large_cases_carry_their_weights_beside(tmp_path, monkeypatch):
    monkeypatch.setattr(golden, "INLINE_MAX_VALUES", 0)  # what the 50,257-token and 124M cases do
    case = CASE["tiny-B2-T4-adamw"]
    g = golden.open_golden(golden.export_case(case, tmp_path, log=quiet))
    beside = tmp_path / "tiny-B2-T4-adamw.weights" / "model.safetensors"
    assert g.weights["stored"] == "file" and tmp_path / g.weights["file"] == beside
    assert g.weights["sha256"] == hashlib.sha256(beside.read_bytes()).hexdigest()
    assert not [n for n in g.names() if n.startswith(("weight.", "adamw.step"))]
    assert "adamw.param.wte.weight" in g and g.adamw["stored_steps"] == []
    params = params_for(case)
    assert all(np.array_equal(p, params[n]) for n, p in g.params().items())
    data = bytearray(beside.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor
    beside.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256 differs"):
        g.params()


def test_a_hand_made_golden_file_with_a_stray_name_is_refused(kit, tmp_path):
    g = opened(kit, "tiny-B2-T4-adamw")
    tensors = {n: g.array(n) for n in g.names()}
    tensors["grad.h.7.ln_1.weight"] = tensors["grad.h.1.ln_1.weight"]  # no layer 7 in a 2-layer config
    tensorfile.write(tmp_path / "bad.safetensors", tensors, g.file.metadata)
    with pytest.raises(UserError, match="grad.h.7.ln_1.weight"):
        golden.open_golden(tmp_path / "bad.safetensors")
