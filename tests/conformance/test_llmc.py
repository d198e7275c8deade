"""llm.c's model file and debug state (conformance/llmc.py, docs/llmc.md): round trips to the bit, the bytes
against the layout built here by hand, an llm.c model in every backend, a debug state as a golden file, and
one-line errors for every bad file.

The byte-level test does not use the module's layout tables: it computes every offset from llm.c's
sizes (train_gpt2.c's fill_in_parameter_sizes, read for the facts) and unpacks the bytes with struct.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from conformance import llmc
from conformance.backends import by_name
from weights import GPT2Config, param_shapes, synthetic
from weights.hub import sha256_of

CFG = GPT2Config.tiny()  # L 2, NH 2, C 16, V 64, maxT 16 -> Vp 128
L, NH, C, V, MAXT, VP = 2, 2, 16, 64, 16, 128


def run(capsys, *argv):
    code = llmc.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(capsys, argv, *needles):
    code, _, err = run(capsys, *argv)
    assert code == 2, (argv, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def bf16_exact(params):
    """Params rounded to bfloat16 by truncation (exactly representable: a bfloat16 file holds them as they are)."""
    return {k: (v.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32) for k, v in params.items()}


# ------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("version", [1, 3, 5])
def test_model_round_trip_is_bit_exact(tmp_path, version):
    params = synthetic(CFG, seed=1)
    if version == 5:
        params = bf16_exact(params)
    llmc.write_model(params, CFG, tmp_path / "m.bin", version=version)
    back, config = llmc.read_model(tmp_path / "m.bin")
    assert config == CFG and list(back) == list(param_shapes(CFG))
    for name, p in params.items():
        assert back[name].dtype == np.float32 and np.array_equal(back[name], p), name
    values = 8896 if version > 1 else 7872  # 7,872 parameters, + 64 pad rows of 16 in versions 3 and 5
    assert (tmp_path / "m.bin").stat().st_size == 1024 + values * (2 if version == 5 else 4)


def test_bfloat16_rounds_to_nearest_even_like_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(10_000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 10_000)
    ties = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x3F80C000], dtype=np.uint32).view(np.float32)
    x = np.concatenate([x, ties, np.float32([0.0, -0.0, 1.0])])
    ours = llmc.to_bfloat16_bits(x)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(llmc.from_bfloat16_bits(ours), torch.from_numpy(x).to(torch.bfloat16).float())


def test_gpt2_124m_header_and_the_real_vocabulary_padding(tmp_path):
    """The 124M header without 124M values: llm.c prints num_parameters 124,475,904 for gpt2_124M.bin (the
    124,439,808 of GPT-2 plus 47 pad rows of 768). The real padding rule on a narrow model of the real
    vocabulary: Vp = 50304, rows 50257..50303 zero in the file, a bit-exact round trip."""
    header = llmc.ModelHeader.for_config(GPT2Config.gpt2_124m())
    assert (header.padded_vocab_size, header.num_parameters()) == (50304, 124_475_904)
    assert header.file_size() == 1024 + 4 * 124_475_904
    assert list(header.ints()[:8]) == [20240326, 3, 1024, 50257, 12, 12, 768, 50304]
    narrow = GPT2Config(n_layer=1, n_head=1, n_embd=8, vocab_size=50257, n_ctx=16)
    params = synthetic(narrow, seed=2)
    llmc.write_model(params, narrow, tmp_path / "narrow.bin")
    ints = np.fromfile(tmp_path / "narrow.bin", dtype="<i4", count=256)
    assert list(ints[:8]) == [20240326, 3, 16, 50257, 1, 1, 8, 50304] and not ints[8:].any()
    wte = np.fromfile(tmp_path / "narrow.bin", dtype="<f4", count=50304 * 8, offset=1024).reshape(50304, 8)
    np.testing.assert_array_equal(wte[:50257], params["wte.weight"])
    assert not wte[50257:].any()
    back, config = llmc.read_model(tmp_path / "narrow.bin")
    assert config == narrow and all(np.array_equal(back[k], v) for k, v in params.items())


# ------------------------------------------------------------------------------------------ the bytes
def test_model_bytes_follow_llmc_layout(tmp_path):
    params = synthetic(CFG, seed=7)
    llmc.write_model(params, CFG, tmp_path / "m.bin")
    raw = (tmp_path / "m.bin").read_bytes()
    header = struct.unpack_from("<256i", raw, 0)
    assert header[:8] == (20240326, 3, MAXT, V, L, NH, C, VP) and not any(header[8:])
    floats = lambda offset, n: np.array(struct.unpack_from(f"<{n}f", raw, offset), dtype=np.float32)  # noqa: E731
    # llm.c's order and sizes (values): wte Vp*C, wpe maxT*C, ln1w L*C, ln1b L*C, qkvw L*3C*C, qkvb L*3C,
    # attprojw L*C*C, attprojb L*C, ln2w L*C, ln2b L*C, fcw L*4C*C, fcb L*4C, fcprojw L*C*4C, fcprojb L*C,
    # lnfw C, lnfb C
    sizes = [VP * C, MAXT * C, L * C, L * C, L * 3 * C * C, L * 3 * C, L * C * C, L * C, L * C, L * C,
             L * 4 * C * C, L * 4 * C, L * C * 4 * C, L * C, C, C]  # fmt: skip
    at = np.cumsum([1024] + [4 * n for n in sizes])  # the byte offset where each tensor starts
    assert len(raw) == at[-1]
    np.testing.assert_array_equal(floats(at[0], 8), params["wte.weight"][0, :8])  # the first floats of wte
    np.testing.assert_array_equal(floats(at[0] + 4 * V * C, (VP - V) * C), 0.0)  # the padded rows: zero
    np.testing.assert_array_equal(floats(at[1], MAXT * C), params["wpe.weight"].ravel())
    np.testing.assert_array_equal(floats(at[2] + 4 * C, C), params["h.1.ln_1.weight"])  # layer 1's ln1w
    # qkvw is (L, 3C, C), llm.c's (out, in): row r of layer 1 is column r of our (in, out) c_attn weight
    r = 37
    np.testing.assert_array_equal(floats(at[4] + 4 * (3 * C * C + r * C), C), params["h.1.attn.c_attn.weight"][:, r])
    np.testing.assert_array_equal(floats(at[5], 3 * C), params["h.0.attn.c_attn.bias"])
    np.testing.assert_array_equal(floats(at[6] + 4 * 5 * C, C), params["h.0.attn.c_proj.weight"][:, 5])
    np.testing.assert_array_equal(floats(at[10] + 4 * (4 * C * C + 9 * C), C), params["h.1.mlp.c_fc.weight"][:, 9])
    np.testing.assert_array_equal(floats(at[12] + 4 * 3 * 4 * C, 4 * C), params["h.0.mlp.c_proj.weight"][:, 3])
    np.testing.assert_array_equal(floats(at[13] + 4 * C, C), params["h.1.mlp.c_proj.bias"])
    np.testing.assert_array_equal(floats(at[15], C), params["ln_f.bias"])


def test_debug_state_bytes_follow_llmc_layout(tmp_path):
    """x, y int32, logits (B, T, V) unpadded, the loss, then the gradients in the model layout with wte's
    gradient padded to Vp (version 2) or not (version 1)."""
    grads = synthetic(CFG, seed=8)
    rng = np.random.default_rng(3)
    idx, targets = rng.integers(0, V, (2, 3)), rng.integers(0, V, (2, 3))
    logits = rng.standard_normal((2, 3, V)).astype(np.float32)
    for version, rows in ((2, VP), (1, V)):
        path = tmp_path / f"state{version}.bin"
        llmc.write_debug_state(path, CFG, idx, targets, logits, 2.5, grads, version=version)
        raw = path.read_bytes()
        assert struct.unpack_from("<4i", raw, 0) == (20240327, version, 2, 3)
        assert not any(struct.unpack_from("<252i", raw, 16))
        assert struct.unpack_from("<6i", raw, 1024) == tuple(idx.ravel())  # x
        assert struct.unpack_from("<6i", raw, 1048) == tuple(targets.ravel())  # y
        at = 1024 + 48
        np.testing.assert_array_equal(np.frombuffer(raw, "<f4", 2 * 3 * V, at), logits.ravel())
        at += 4 * 2 * 3 * V
        assert struct.unpack_from("<f", raw, at) == (2.5,)
        dwte = np.frombuffer(raw, "<f4", rows * C, at + 4).reshape(rows, C)
        np.testing.assert_array_equal(dwte[:V], grads["wte.weight"])
        assert not dwte[V:].any()
        n_grads = rows * C + MAXT * C + L * (12 * C * C + 13 * C) + 2 * C
        assert len(raw) == at + 4 + 4 * n_grads


# ------------------------------------------------------------------------------------------ backends
def test_an_llmc_model_loads_into_every_backend(tmp_path):
    """Written and read back, the model gives each backend the logits of the original float32 params, to the
    bit; torch_impl also takes the padded (Vp, C) head llm.c computes with, and its logits agree."""
    params = synthetic(CFG, seed=4)
    llmc.write_model(params, CFG, tmp_path / "m.bin")
    back, config = llmc.read_model(tmp_path / "m.bin")
    idx = np.random.default_rng(5).integers(0, V, (1, 4))
    ran = []
    for name in ("numpy-f32", "torch-cpu-f32", "hf-transformers-f32", "numba-cuda-f32"):
        backend = by_name(name)
        ok, why = backend.available()
        if ok:
            ok, why = backend.supports(config, idx.size)
        if not ok:
            print(f"{name} skipped: {why}")
            continue
        np.testing.assert_array_equal(backend.forward(back, config, idx), backend.forward(params, CFG, idx), name)
        ran.append(name)
    assert "numpy-f32" in ran
    torch = pytest.importorskip("torch")
    from torch_impl.model import GPT2

    header = llmc.read_model_header(tmp_path / "m.bin")
    padded = GPT2.from_params(back, config, padded_vocab_size=header.padded_vocab_size, attention="math")
    plain = GPT2.from_params(params, CFG, attention="math")
    with torch.no_grad():
        np.testing.assert_allclose(padded(torch.from_numpy(idx))[0].numpy(), plain(torch.from_numpy(idx))[0].numpy(),
                                   rtol=0, atol=1e-6)  # fmt: skip


# ------------------------------------------------------------------------------------------ golden files
def reference_case(seed=6):
    import reference

    params = synthetic(CFG, seed=seed)
    rng = np.random.default_rng(seed)
    idx, targets = rng.integers(0, V, (2, 4)), rng.integers(0, V, (2, 4))
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    logits, loss, grads = reference.forward_backward(p64, CFG, idx, targets)
    return params, idx, targets, logits, loss, grads


def test_debug_state_from_a_golden_file_reads_back_to_its_tensors(tmp_path, capsys):
    """A golden file (the reference's float64 numbers) -> debug state + model file -> read back: the same
    tensors rounded once to float32; -> a golden file again: those float32 values, the model's sha256 in its
    metadata; -> a debug state again: the same bytes."""
    params, idx, targets, logits, loss, grads = reference_case()
    tensors = {"input.idx": idx, "input.targets": targets, "logits": logits, "loss": np.array(loss)}
    tensors.update({f"grad.{k}": v for k, v in grads.items()})
    tensors.update({f"weight.{k}": v for k, v in params.items()})
    golden = tmp_path / "tiny.safetensors"
    llmc.write_golden(golden, tensors, "tiny", CFG, {"source": "synthetic", "seed": 6}, None)
    code, out, err = run(capsys, "debug-state", golden, tmp_path / "state.bin", "--model", tmp_path / "model.bin")
    assert code == 0, err
    state = llmc.read_debug_state(tmp_path / "state.bin", tmp_path / "model.bin")
    assert set(state) == {k for k in tensors if not k.startswith("weight.")}
    for name, value in state.items():
        want = value.dtype.type(tensors[name]) if value.ndim == 0 else np.asarray(tensors[name]).astype(value.dtype)
        np.testing.assert_array_equal(value, want, err_msg=name)
    assert state["input.idx"].dtype == np.int64 and state["logits"].dtype == np.float32
    back, _ = llmc.read_model(tmp_path / "model.bin")
    assert all(np.array_equal(back[k], v) for k, v in params.items())

    code, out, err = run(capsys, "golden-from-debug-state", tmp_path / "state.bin", tmp_path / "model.bin",
                         tmp_path / "again.safetensors", "--case", "tiny-again")  # fmt: skip
    assert code == 0, err
    again, meta, config = llmc.read_golden(tmp_path / "again.safetensors")
    assert config == CFG and set(again) == set(state)
    for name, value in state.items():
        assert again[name].dtype == (np.int64 if name.startswith("input.") else np.float64), name
        np.testing.assert_array_equal(again[name], value, err_msg=name)
    assert (meta["format"], meta["format_version"], meta["case"]) == ("gpt2-conformance-golden", "1", "tiny-again")
    assert json.loads(meta["weights"])["sha256"] == sha256_of(tmp_path / "model.bin")
    assert json.loads(meta["adamw"])["decay"] == "all"
    assert {"ceilings", "provenance", "config"} <= set(meta)
    code, _, err = run(capsys, "debug-state", tmp_path / "again.safetensors", tmp_path / "state2.bin")
    assert code == 0, err
    assert (tmp_path / "state2.bin").read_bytes() == (tmp_path / "state.bin").read_bytes()


def test_a_debug_states_golden_file_scores_a_candidate(tmp_path, capsys):
    """llm.c's debug state as a golden file is one the checker reads: the weights come from the model file
    it names (path and sha256), a float32 candidate of ours passes, a candidate with one gradient scaled
    by 1% fails naming it, and a model file changed after the fact is refused by its sha256."""
    from conformance import check, golden, tensorfile
    from conformance.backends import NumpyBackend

    params, idx, targets, logits, loss, grads = reference_case(seed=3)
    (tmp_path / "llmc").mkdir()
    llmc.write_model(params, CFG, tmp_path / "llmc" / "model.bin")
    llmc.write_debug_state(tmp_path / "llmc" / "state.bin", CFG, idx, targets, logits, loss, grads)
    gold_path = tmp_path / "kit" / "debug.golden.safetensors"
    gold_path.parent.mkdir()
    assert run(capsys, "golden-from-debug-state", tmp_path / "llmc" / "state.bin", tmp_path / "llmc" / "model.bin",
               gold_path)[0] == 0  # fmt: skip
    g = golden.open_golden(gold_path)
    assert g.checks == ["forward_backward"] and g.weights["file"] == "../llmc/model.bin"
    assert all(np.array_equal(g.params()[k], v) for k, v in params.items())
    assert g.weights["params_sha256"] == golden.params_sha256(params, CFG)
    cand = golden.write_candidate(g, NumpyBackend(np.float32), tmp_path / "numpy.candidate.safetensors", log=print)
    capsys.readouterr()
    assert check.main([str(gold_path), str(cand), "--json", str(tmp_path / "r.json"), "--require", "grads"]) == 0
    f = tensorfile.TensorFile(cand)
    tensors = {n: np.array(f.array(n)) for n in f.names()}
    tensors["grad.h.0.attn.c_attn.weight"] *= 1.01
    bad = tmp_path / "bad.candidate.safetensors"
    tensorfile.write(bad, tensors, f.metadata)
    assert check.main([str(gold_path), str(bad), "--json", str(tmp_path / "r.json")]) == 1
    assert "grad.h.0.attn.c_attn.weight" in capsys.readouterr().out
    model = tmp_path / "llmc" / "model.bin"
    data = bytearray(model.read_bytes())
    data[-1] ^= 1
    model.write_bytes(bytes(data))
    assert_one_line_error(capsys, ["debug-state", gold_path, tmp_path / "s.bin", "--model", tmp_path / "m.bin"],
                          "model.bin", "sha256")  # fmt: skip


def test_cli_checkpoint_round_trip_and_info(tmp_path, capsys):
    from weights import load, save

    params = synthetic(CFG, seed=9)
    save(params, CFG, tmp_path / "ckpt")
    assert run(capsys, "to-llmc", tmp_path / "ckpt", tmp_path / "m.bin")[0] == 0
    assert run(capsys, "from-llmc", tmp_path / "m.bin", tmp_path / "out")[0] == 0
    back, config = load(tmp_path / "out")
    assert config == CFG and all(np.array_equal(back[k], v) for k, v in params.items())
    code, out, _ = run(capsys, "info", tmp_path / "m.bin")
    assert code == 0 and "version 3" in out and "Vp 128" in out and "8,896 parameters" in out
    assert run(capsys, "to-llmc", tmp_path / "ckpt", tmp_path / "p.bin", "--padded-vocab", "192")[0] == 0
    assert llmc.read_model_header(tmp_path / "p.bin").padded_vocab_size == 192


# ------------------------------------------------------------------------------------------ bad input
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, capsys):
    params = synthetic(CFG, seed=1)
    good = tmp_path / "good.bin"
    llmc.write_model(params, CFG, good)
    raw = good.read_bytes()

    def variant(name, data):
        path = tmp_path / name
        path.write_bytes(data)
        return path

    def header_with(index, value):
        h = bytearray(raw)
        struct.pack_into("<i", h, 4 * index, value)
        return bytes(h)

    cases = [
        (variant("magic.bin", header_with(0, 1234)), "bad magic 1234"),
        (variant("version.bin", header_with(1, 2)), "version 2 is not supported"),
        (variant("short.bin", raw[:500]), "shorter than llm.c's 1024-byte"),
        (variant("truncated.bin", raw[:-4]), "truncated"),
        (variant("long.bin", raw + b"\0" * 8), "8 bytes too many"),
        (variant("layers.bin", header_with(4, 3)), "L=3"),  # sizes that disagree with the file's length
        (variant("heads.bin", header_with(5, 3)), "not a multiple"),
        (variant("vp.bin", header_with(7, 32)), "Vp = 32 < V = 64"),
    ]
    for path, needle in cases:
        assert_one_line_error(capsys, ["from-llmc", path, tmp_path / "out"], path.name, needle)
        assert not (tmp_path / "out").exists()
    state = tmp_path / "state.bin"
    _, idx, targets, logits, loss, grads = reference_case()
    llmc.write_debug_state(state, CFG, idx, targets, logits, loss, grads)
    assert_one_line_error(capsys, ["from-llmc", state, tmp_path / "out"], "state.bin", "debug state")
    golden = tmp_path / "g.safetensors"
    assert_one_line_error(capsys, ["golden-from-debug-state", good, good, golden], "good.bin", "not a debug state")
    other = GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=60, n_ctx=16)
    llmc.write_model(synthetic(other), other, tmp_path / "other.bin")
    wrong_model = ["golden-from-debug-state", state, tmp_path / "other.bin", golden]
    assert_one_line_error(capsys, wrong_model, "state.bin", "V=60")
    short_state = ["golden-from-debug-state", variant("s.bin", state.read_bytes()[:-1]), good, golden]
    assert_one_line_error(capsys, short_state, "s.bin", "truncated")
    assert not golden.exists()
    assert_one_line_error(capsys, ["info", tmp_path / "missing.bin"], "missing.bin")


def test_what_llmc_cannot_hold_is_refused_by_name(tmp_path, capsys):
    from weights import save

    rope = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_ctx=16, position="rope")
    save(synthetic(rope), rope, tmp_path / "rope")
    assert_one_line_error(capsys, ["to-llmc", tmp_path / "rope", tmp_path / "r.bin"], "r.bin", "position='rope'")
    assert_one_line_error(capsys, ["debug-state", "tiny-swiglu", tmp_path / "s.bin"], "mlp='swiglu'")
    # llm.c's loss averages every position: a case with ignored targets (-1) has no debug state
    assert_one_line_error(capsys, ["debug-state", "tiny-B2-T4-adamw", tmp_path / "s.bin"], "targets", "-1")
    assert_one_line_error(capsys, ["debug-state", "no-such-case", tmp_path / "s.bin"], "no-such-case")
    assert not any(tmp_path.glob("*.bin"))
    assert_one_line_error(capsys, ["to-llmc", tmp_path / "rope", tmp_path / "none" / "r.bin"], "does not exist")
