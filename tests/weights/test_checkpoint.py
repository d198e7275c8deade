"""weights/: load and save strictly, round trips, and every bad-input error names its culprit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from weights import CheckpointError, GPT2Config, load, num_params, param_names, save, synthetic

CFG = GPT2Config.tiny()


@pytest.fixture
def params():
    return synthetic(CFG, seed=1)


def _write(tmp_path, tensors, name="model.safetensors"):
    path = tmp_path / name
    save_file(tensors, str(path))
    return path


def test_round_trip_is_exact(tmp_path, params):
    save(params, CFG, tmp_path / "ckpt")
    loaded, cfg = load(tmp_path / "ckpt")
    assert cfg == CFG
    assert list(loaded) == param_names(CFG)
    for name in params:
        assert loaded[name].dtype == np.float32
        np.testing.assert_array_equal(loaded[name], params[name], err_msg=name)


def test_load_float64_on_request(tmp_path, params):
    save(params, CFG, tmp_path)
    loaded, _ = load(tmp_path, dtype=np.float64)
    assert all(v.dtype == np.float64 for v in loaded.values())
    np.testing.assert_array_equal(loaded["h.1.attn.c_proj.weight"], params["h.1.attn.c_proj.weight"].astype(np.float64))


def test_save_writes_hub_layout_and_config(tmp_path, params):
    save(params, CFG, tmp_path)
    raw = load_file(str(tmp_path / "model.safetensors"))
    assert set(raw) == set(params)  # no prefix, no lm_head, no buffers
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert (cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]) == (2, 2, 16, 64, 16)
    assert cfg["activation_function"] == "gelu_new"


def test_hub_layout_mask_buffers_skipped_by_exact_name(tmp_path, params):
    tensors = dict(params)
    for i in range(CFG.n_layer):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, CFG.n_ctx, CFG.n_ctx), np.float32))
        tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    path = _write(tmp_path, tensors)
    loaded, _ = load(path, config=CFG)
    # c_attn.bias is a real parameter and must survive the buffer filter
    np.testing.assert_array_equal(loaded["h.0.attn.c_attn.bias"], params["h.0.attn.c_attn.bias"])
    assert "h.0.attn.bias" not in loaded


def test_save_pretrained_layout_with_tied_lm_head(tmp_path, params):
    tensors = {f"transformer.{k}": v for k, v in params.items()}
    tensors["lm_head.weight"] = params["wte.weight"].copy()
    loaded, _ = load(_write(tmp_path, tensors), config=CFG)
    np.testing.assert_array_equal(loaded["wte.weight"], params["wte.weight"])


def test_untied_lm_head_is_an_error(tmp_path, params):
    tensors = {f"transformer.{k}": v for k, v in params.items()}
    tensors["lm_head.weight"] = params["wte.weight"] + 1.0
    with pytest.raises(CheckpointError, match="lm_head.weight differs from wte.weight"):
        load(_write(tmp_path, tensors), config=CFG)


def test_unknown_tensor_is_named(tmp_path, params):
    tensors = dict(params, **{"h.0.attn.q_proj.weight": np.zeros((16, 16), np.float32)})
    with pytest.raises(CheckpointError, match=r"unknown tensor name 'h.0.attn.q_proj.weight'"):
        load(_write(tmp_path, tensors), config=CFG)


def test_suffix_lookalike_is_not_skipped(tmp_path, params):
    # 'h.0.mlp.attn.bias' ends with 'attn.bias' but is no mask buffer: it must be rejected, not dropped
    tensors = dict(params, **{"h.0.mlp.attn.bias": np.zeros((16,), np.float32)})
    with pytest.raises(CheckpointError, match="unknown tensor name 'h.0.mlp.attn.bias'"):
        load(_write(tmp_path, tensors), config=CFG)


def test_missing_tensor_is_named(tmp_path, params):
    tensors = dict(params)
    del tensors["h.1.ln_2.bias"]
    with pytest.raises(CheckpointError, match=r"missing tensor 'h.1.ln_2.bias'"):
        load(_write(tmp_path, tensors), config=CFG)


def test_wrong_shape_is_named(tmp_path, params):
    tensors = dict(params)
    tensors["h.0.mlp.c_fc.weight"] = tensors["h.0.mlp.c_fc.weight"].T.copy()  # (4C, C) instead of (C, 4C)
    with pytest.raises(CheckpointError, match=r"'h.0.mlp.c_fc.weight' has shape \(64, 16\), expected \(16, 64\)"):
        load(_write(tmp_path, tensors), config=CFG)


def test_wrong_dtype_is_named(tmp_path, params):
    tensors = dict(params)
    tensors["ln_f.bias"] = np.zeros((16,), np.int32)
    with pytest.raises(CheckpointError, match=r"'ln_f.bias' has dtype int32"):
        load(_write(tmp_path, tensors), config=CFG)


def test_non_finite_is_named(tmp_path, params):
    tensors = dict(params)
    tensors["h.1.attn.c_attn.weight"] = tensors["h.1.attn.c_attn.weight"].copy()
    tensors["h.1.attn.c_attn.weight"][3, 5] = np.nan
    with pytest.raises(CheckpointError, match=r"'h.1.attn.c_attn.weight' contains NaN or inf"):
        load(_write(tmp_path, tensors), config=CFG)


@pytest.mark.parametrize("keep", [0, 4, 100, -1000])
def test_truncated_file_is_a_clear_error(tmp_path, params, keep):
    save(params, CFG, tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(CheckpointError, match=r"model.safetensors: (truncated|corrupt)"):
        load(path, config=CFG)


def test_garbage_file_is_a_clear_error(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load(path)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="folder has no model.safetensors"):
        load(tmp_path)


def test_config_json_shape_mismatch(tmp_path, params):
    save(params, CFG, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["n_layer"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"missing tensor 'h.2.ln_1.weight'"):
        load(tmp_path)


def test_config_json_unsupported_activation(tmp_path, params):
    save(params, CFG, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["activation_function"] = "gelu"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match="activation_function='gelu' is not GPT-2"):
        load(tmp_path)


def test_config_inferred_without_config_json(tmp_path):
    cfg = GPT2Config(n_layer=3, n_head=2, n_embd=128, vocab_size=70, n_ctx=20)
    p = synthetic(cfg, seed=0)
    save(p, cfg, tmp_path)
    (tmp_path / "config.json").unlink()
    _, inferred = load(tmp_path)
    assert (inferred.n_layer, inferred.n_embd, inferred.vocab_size, inferred.n_ctx) == (3, 128, 70, 20)
    assert inferred.n_head == 2  # head size 64, as in every released GPT-2


def test_save_is_atomic_when_interrupted(tmp_path, params, monkeypatch):
    save(params, CFG, tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    import safetensors.numpy

    def exploding_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(safetensors.numpy, "save_file", exploding_save_file)
    changed = {k: v + 1 for k, v in params.items()}
    with pytest.raises(KeyboardInterrupt):
        save(changed, CFG, tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before  # old file intact
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no temp litter


def test_save_rejects_bad_params(tmp_path, params):
    bad = dict(params)
    bad["h.0.attn.c_proj.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match=r"'h.0.attn.c_proj.weight' has shape \(3, 3\)"):
        save(bad, CFG, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_124m_count():
    assert num_params(GPT2Config.gpt2_124m()) == 124_439_808
