"""scripts/train_throughput.py without a GPU: the sweep of --try runs, --profile, and the JSON that is
rewritten after every run (the training runs themselves are replaced by a stand-in: they need CUDA)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from weights.paths import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "train_throughput.py"


@pytest.fixture
def script(monkeypatch):
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "check_args", lambda args: None)  # no CUDA, no data here
    return mod


def _fake_run(script, calls, tokens_per_s, fail_at=None):
    def run(gpus, args, out_dir, extra=()):
        calls.append((gpus, out_dir.name, list(extra)))
        if fail_at is not None and len(calls) == fail_at:
            raise script.UserError("the 1-GPU training run failed with exit status 1")
        if "--profile-steps" in extra:
            out_dir.mkdir(parents=True)
            (out_dir / "profile.json").write_text("{}")
            (out_dir / "profile.txt").write_text("table")
        tok = tokens_per_s[len(calls) - 1]
        return {"gpus": gpus, "extra_flags": list(extra), "tokens_per_s": tok, "mfu": 0.4,
                "per_step": [{"step": s, "loss": 10.0 - s + 0.01 * len(calls)} for s in range(3)]}  # fmt: skip

    return run


def test_tries_run_after_the_first_and_are_compared_with_it(script, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(script, "run", _fake_run(script, calls, [100.0, 120.0, 90.0]))
    out = tmp_path / "t.json"
    argv = ["--data", "d", "--gpus", "1", "--profile", "3", "--out", str(tmp_path / "runs"), "--json", str(out),
            "--try", "--loss-impl chunked", "--try", "--batch-size 128 --loss-impl chunked"]  # fmt: skip
    assert script._main(argv) == 0
    assert calls == [
        (1, "gpu1", ["--profile-steps", "3"]),
        (1, "try1", ["--loss-impl", "chunked"]),
        (1, "try2", ["--batch-size", "128", "--loss-impl", "chunked"]),
    ]
    doc = json.loads(out.read_text())
    runs = doc["runs"]
    assert [r["vs_first_run"] for r in runs[1:]] == pytest.approx([1.2, 0.9])
    assert runs[1]["loss_max_abs_difference_vs_first_run"] == pytest.approx(0.01)
    assert doc["settings"]["tries"] == ["--loss-impl chunked", "--batch-size 128 --loss-impl chunked"]
    assert (tmp_path / "t-profile.json").read_text() == "{}" and (tmp_path / "t-profile.txt").exists()


def test_a_try_that_profiles_keeps_its_profile_beside_the_json(script, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(script, "run", _fake_run(script, calls, [100.0, 120.0, 90.0]))
    out = tmp_path / "t.json"
    argv = ["--data", "d", "--gpus", "1", "--out", str(tmp_path / "runs"), "--json", str(out),
            "--try", "--loss-impl chunked", "--try", "--loss-impl chunked --profile-steps 3"]  # fmt: skip
    assert script._main(argv) == 0
    assert not (tmp_path / "t-profile.json").exists() and not (tmp_path / "t-try1-profile.json").exists()
    assert (tmp_path / "t-try2-profile.json").read_text() == "{}"
    assert (tmp_path / "t-try2-profile.txt").read_text() == "table"


def test_a_failing_try_is_recorded_and_the_others_still_run(script, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(script, "run", _fake_run(script, calls, [100.0, 120.0, None, 90.0], fail_at=3))
    out = tmp_path / "t.json"
    argv = ["--data", "d", "--gpus", "1", "--out", str(tmp_path / "runs"), "--json", str(out),
            "--try", "--loss-impl chunked", "--try", "--compile-mode max-autotune",
            "--try", "--batch-size 32"]  # fmt: skip
    assert script._main(argv) == 1  # a try failed: the verdict says so
    runs = json.loads(out.read_text())["runs"]
    assert [r.get("tokens_per_s") for r in runs] == [100.0, 120.0, None, 90.0]
    assert runs[2]["extra_flags"] == ["--compile-mode", "max-autotune"] and "exit status 1" in runs[2]["error"]


def test_last_value_reads_the_flag_the_trainer_keeps(script):
    assert script._last_value(["--batch-size", "32", "--batch-size", "128"], "--batch-size", 64) == 128
    assert script._last_value(["--loss-impl", "chunked"], "--batch-size", 64) == 64


def test_a_try_may_set_environment_variables_for_its_run_alone(script):
    assert script.split_env(["PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True", "A_1=", "--batch-size", "128"]) == (
        {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "A_1": ""},
        ["--batch-size", "128"],
    )
    # only leading words: a flag's value that holds '=' stays a flag's value
    assert script.split_env(["--sample-prompt", "X=1"]) == ({}, ["--sample-prompt", "X=1"])
    assert script.split_env([]) == ({}, [])
