"""The loader never guesses and always names the file: hub ids it pins, refused head-count guesses,
config.json errors naming the file and the field, SHA-256 checks of local files, the GPT-2 family."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from weights import CheckpointError, ConfigError, GPT2Config, hub, load, num_params, save, synthetic
from weights.hub import HubCheckpoint, HubError, sha256_of

TINY = GPT2Config.tiny()  # C = 16, 2 heads


def test_the_released_family_has_presets_with_the_published_parameter_counts():
    expected = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200}
    for name, count in expected.items():
        assert num_params(GPT2Config.preset(name)) == count, name
    xl = GPT2Config.preset("gpt2-xl")
    assert (xl.n_layer, xl.n_head, xl.n_embd, xl.head_size) == (48, 25, 1600, 64)


def test_a_pinned_hub_id_with_a_slash_goes_to_the_hub_and_takes_its_pinned_config(tmp_path, monkeypatch):
    params = synthetic(TINY, seed=1)
    save_file({k: v for k, v in params.items()}, str(tmp_path / "model.safetensors"))  # no config.json
    pin = HubCheckpoint("openai-community/tiny-test", "0" * 40, "model.safetensors", 0, "0" * 64, preset="tiny")
    monkeypatch.setitem(hub.KNOWN, pin.repo_id, pin)
    asked = []
    monkeypatch.setattr(
        hub, "download", lambda hub_id, timeout_s=10.0: asked.append(hub_id) or tmp_path / "model.safetensors"
    )
    loaded, cfg = load("openai-community/tiny-test")
    assert asked == ["openai-community/tiny-test"] and cfg == TINY  # 2 heads from the pin, not guessed
    np.testing.assert_array_equal(loaded["h.1.attn.c_attn.weight"], params["h.1.attn.c_attn.weight"])


def test_an_unknown_path_like_source_is_still_no_such_file():
    with pytest.raises(CheckpointError, match="nowhere/model: no such checkpoint file or folder"):
        load("nowhere/model")


def test_unpinned_family_members_are_refused_with_what_to_do():
    with pytest.raises(HubError, match="'gpt2-xl': its config is known .* not pinned .*--sha256"):
        load("gpt2-xl")


def test_the_head_count_is_not_guessed_without_config_json(tmp_path):
    save(synthetic(TINY, seed=2), TINY, tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="n_embd = 16 is not a multiple of GPT-2's head size 64.*config.json"):
        load(tmp_path)
    params, cfg = load(tmp_path, config=TINY)  # told how many heads: loads
    assert cfg.n_head == 2


def _write_config(tmp_path, value):
    save(synthetic(TINY, seed=3), TINY, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(value))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: [d], r"config.json: expected a JSON object of config fields, got a list"),
        (lambda d: {**d, "layer_norm_epsilon": "abc"}, r"config.json: layer_norm_epsilon must be a number, got 'abc'"),
        (lambda d: {**d, "n_head": 3}, r"config.json: GPT2Config.n_embd \(16\) must be divisible by n_head \(3\)"),
        (lambda d: {**d, "n_head": "2"}, r"config.json: GPT2Config.n_head must be a positive int, got '2'"),
        (
            lambda d: {k: v for k, v in d.items() if k not in ("n_positions", "n_ctx")},
            r"config.json: missing key 'n_positions'",
        ),
        (lambda d: {k: v for k, v in d.items() if k != "n_embd"}, r"config.json: missing key 'n_embd'"),
    ],
)
def test_every_config_error_names_the_file_and_the_field(tmp_path, edit, message):
    _write_config(tmp_path, edit(TINY.to_hf_dict()))
    with pytest.raises(ConfigError, match=message) as e:
        load(tmp_path)
    assert str(tmp_path / "config.json") in str(e.value)


def test_save_writes_a_sha256_sidecar_and_load_checks_it(tmp_path):
    params = synthetic(TINY, seed=4)
    save(params, TINY, tmp_path)
    sidecar = (tmp_path / "model.safetensors.sha256").read_text()
    assert sidecar == f"{sha256_of(tmp_path / 'model.safetensors')}  model.safetensors\n"
    load(tmp_path)  # matches
    # another valid checkpoint put in its place: the tensors are fine, the digest is not
    other = synthetic(TINY, seed=5)
    save_file({k: np.ascontiguousarray(v) for k, v in other.items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"model.safetensors: sha256 [0-9a-f]{64}, but .*model.safetensors.sha256 says"
    ):
        load(tmp_path)


def test_an_explicit_sha256_is_checked_and_a_bad_one_named(tmp_path):
    save(synthetic(TINY, seed=6), TINY, tmp_path)
    digest = sha256_of(tmp_path / "model.safetensors")
    load(tmp_path, sha256=digest.upper())  # hex digits in either case
    with pytest.raises(CheckpointError, match="--sha256 says " + "0" * 64):
        load(tmp_path, sha256="0" * 64)
    with pytest.raises(CheckpointError, match="--sha256: 'abc' is not a SHA-256 digest"):
        load(tmp_path, sha256="abc")
    (tmp_path / "model.safetensors.sha256").write_text("not a digest\n")
    with pytest.raises(CheckpointError, match="model.safetensors.sha256: not a SHA-256 digest"):
        load(tmp_path)
