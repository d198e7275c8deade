"""weights.provenance: the record every results file embeds (commit, dirty flag, versions, device, date)."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys

import numpy as np
import pytest

from weights.provenance import PROJECT_ROOT, git_state, provenance


def _git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(autouse=True)
def _no_commit_from_the_shell(monkeypatch):
    monkeypatch.delenv("GPT2_GIT_COMMIT", raising=False)
    monkeypatch.delenv("GPT2_GIT_DIRTY", raising=False)


@pytest.fixture
def repo(tmp_path):
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.com")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "a.txt").write_text("one\n")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


def test_clean_checkout_records_its_commit(repo):
    state = git_state(repo)
    assert state["commit"] == _git(repo, "rev-parse", "HEAD")
    assert state["dirty"] is False and state["changed_files"] == [] and state["source"] == "git"


def test_a_new_commit_changes_the_record(repo):
    first = git_state(repo)["commit"]
    (repo / "a.txt").write_text("two\n")
    _git(repo, "commit", "-q", "-am", "second")
    assert git_state(repo)["commit"] == _git(repo, "rev-parse", "HEAD") != first


def test_a_modified_tracked_file_makes_the_tree_dirty(repo):
    (repo / "a.txt").write_text("changed\n")
    state = git_state(repo)
    assert state["dirty"] is True and state["changed_files"] == ["a.txt"]


def test_untracked_files_do_not_make_the_tree_dirty(repo):
    (repo / "notes.txt").write_text("scratch\n")
    assert git_state(repo)["dirty"] is False


def test_without_git_the_commit_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_GIT_COMMIT", "0123abcd")
    monkeypatch.setenv("GPT2_GIT_DIRTY", "1")
    state = git_state(tmp_path)
    assert state["commit"] == "0123abcd" and state["dirty"] is True and state["source"].startswith("environment")


def test_the_environment_overrides_a_copied_git_directory(repo, monkeypatch):
    """A tree copied to another machine may carry an older .git: the copier's word wins."""
    monkeypatch.setenv("GPT2_GIT_COMMIT", "feedface")
    monkeypatch.setenv("GPT2_GIT_DIRTY", "0")
    state = git_state(repo)
    assert state["commit"] == "feedface" and state["dirty"] is False
    assert _git(repo, "rev-parse", "HEAD") in state["source"]


def test_without_git_or_environment_the_commit_is_unknown_and_says_why(tmp_path, monkeypatch):
    monkeypatch.delenv("GPT2_GIT_COMMIT", raising=False)
    state = git_state(tmp_path)
    assert state["commit"] is None and state["dirty"] is None and "not a git checkout" in state["source"]


def test_the_full_record(repo):
    rec = provenance(repo)
    assert rec["git"]["commit"] == _git(repo, "rev-parse", "HEAD")
    assert rec["versions"]["numpy"] == np.__version__
    assert rec["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert rec["device"]["cpu_count"] >= 1 and rec["device"]["cpu"]
    assert rec["host"]["hostname"]
    when = datetime.datetime.fromisoformat(rec["date_utc"])
    assert abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) < 60
    json.dumps(rec)  # a results file can always hold it


def test_the_module_prints_the_project_record():
    out = subprocess.run(
        [sys.executable, "-m", "weights.provenance"], cwd=PROJECT_ROOT, check=True, capture_output=True, text=True
    )
    rec = json.loads(out.stdout)
    assert rec["git"]["commit"] == _git(PROJECT_ROOT, "rev-parse", "HEAD")


# ------------------------------------------------------------------ every results writer embeds the record
def _head() -> str:
    return _git(PROJECT_ROOT, "rev-parse", "HEAD")


def test_the_conformance_report_json_records_the_commit(tmp_path):
    from conformance.report import main

    out = tmp_path / "report.json"
    main(["--backends", "numpy-f32", "--cases", "tiny-T1", "--json", str(out)])
    rec = json.loads(out.read_text())["provenance"]
    assert rec["git"]["commit"] == _head() and rec["versions"]["numpy"] == np.__version__


def test_the_benchmark_json_records_the_commit():
    from benchmarks.conftest import pytest_benchmark_update_machine_info

    machine_info = {}
    pytest_benchmark_update_machine_info(None, machine_info)
    assert machine_info["provenance"]["git"]["commit"] == _head()


def test_the_training_throughput_json_records_the_commit(tmp_path):
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_throughput", PROJECT_ROOT / "scripts" / "train_throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = argparse.Namespace(
        data="d", gpus=1, steps=30, skip=8, batch_size=64, out="o", json="t.json", profile=0, tries=[]
    )
    out = tmp_path / "throughput.json"
    mod.write_json(out, args, [{"gpus": 1, "tokens_per_s": 1.0}])
    doc = json.loads(out.read_text())
    assert doc["provenance"]["git"]["commit"] == _head()
    assert doc["runs"] == [{"gpus": 1, "tokens_per_s": 1.0}] and doc["settings"]["steps"] == 30


def test_the_numba_gpu_report_records_the_commit(tmp_path, monkeypatch):
    """The report's writer, with no section run (this machine has no GPU to measure)."""
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(PROJECT_ROOT / "tests" / "numba_impl"))
    try:
        import gpu_report
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "no GPU (test)")
    monkeypatch.setattr(sys, "argv", ["gpu_report.py", str(tmp_path), "--sections", ""])
    monkeypatch.setattr(gpu_report.os, "sync", lambda: None)
    gpu_report.main()
    rec = json.loads((tmp_path / "numba-gpu-report.json").read_text())["provenance"]
    assert rec["git"]["commit"] == _head()


def test_a_training_run_records_the_commit_beside_its_log(tmp_path):
    pytest.importorskip("torch")
    from torch_impl.data import write_shard
    from torch_impl.train import TrainConfig, train

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    write_shard(data / "rand_train_000000.bin", rng.integers(0, 64, 4096))
    write_shard(data / "rand_val_000000.bin", rng.integers(0, 64, 1024))
    cfg = TrainConfig(
        data=str(data), out_dir=str(tmp_path / "run"), model="tiny", padded_vocab=128, batch_size=2, seq_len=8,
        max_steps=2, warmup_steps=1, eval_every=0, progress=False, plot=False, log_every=0, device="cpu",
        save=False,
    )  # fmt: skip
    train(cfg)
    rec = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert rec["git"]["commit"] == _head() and rec["start_step"] == 0
    steps = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "loss" in r] == [0, 1]  # the log itself is untouched
