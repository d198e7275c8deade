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
