"""scripts/mutation.py, the mutation harness: its list cannot rot, and its verdict can say no.

The mutants themselves run with `python scripts/mutation.py` (minutes; docs/results/mutation.md).
Here: every anchor applies exactly once to this tree, a missing or doubled anchor is an error that
touches nothing, and on a small throwaway repository a caught mutant passes while a survivor fails.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from weights.paths import PROJECT_ROOT

_spec = importlib.util.spec_from_file_location("mutation", PROJECT_ROOT / "scripts" / "mutation.py")
mutation = importlib.util.module_from_spec(_spec)
sys.modules["mutation"] = mutation  # dataclasses look their module up by name
_spec.loader.exec_module(mutation)


def test_every_mutant_applies_exactly_once_to_this_tree_and_names_real_tests():
    mutation.check_all(mutation.MUTANTS, PROJECT_ROOT)
    assert len(mutation.MUTANTS) >= 25
    folders = {m.path.split("/")[0] for m in mutation.MUTANTS}
    assert {"weights", "reference", "numba_impl", "torch_impl", "conformance"} <= folders
    for m in mutation.MUTANTS:
        for test in m.tests:
            path, _, name = test.partition("::")
            assert (PROJECT_ROOT / path).is_file(), (m.name, test)
            assert f"def {name.split('[')[0]}(" in (PROJECT_ROOT / path).read_text(), (m.name, test)


@pytest.mark.parametrize(("text", "message"), [("x = 1\n", "is gone"), ("x = 2\ny = 2\n", "occurs 2 times")])
def test_an_anchor_that_is_gone_or_ambiguous_is_an_error_and_changes_nothing(tmp_path, text, message):
    (tmp_path / "mod.py").write_text(text)
    m = mutation.Mutant("m", "mod.py", "= 2", "= 3", ("test_mod.py::test_f",), "a bug")
    with pytest.raises(mutation.MutantError, match=message):
        mutation.apply(m, tmp_path)
    with pytest.raises(mutation.MutantError, match=message):
        mutation.check_all([m], tmp_path)
    assert (tmp_path / "mod.py").read_text() == text


def _toy_repo(root):
    root.mkdir()
    (root / "mod.py").write_text("def f():\n    return 1  # the answer\n")
    (root / "test_mod.py").write_text("from mod import f\n\n\ndef test_f():\n    assert f() == 1\n")
    for cmd in (["init", "-q"], ["add", "mod.py", "test_mod.py"]):
        subprocess.run(["git", *cmd], cwd=root, check=True, capture_output=True)
    return root


def test_a_caught_mutant_passes_and_a_survivor_fails_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # the toy's pytest runs need no plugin: 1 s each, not 4
    repo = _toy_repo(tmp_path / "toy")
    caught = mutation.Mutant("wrong-answer", "mod.py", "return 1", "return 2", ("test_mod.py::test_f",), "f is 2")
    survivor = mutation.Mutant("comment", "mod.py", "# the answer", "# an answer", ("test_mod.py::test_f",), "none")
    out = tmp_path / "mutation.md"
    assert mutation.run([caught], repo, out) == 0
    report = out.read_text()
    assert "1 of 1 mutants caught" in report and "`test_mod.py::test_f`" in report
    assert mutation.run([caught, survivor], repo, out) == 1
    report = out.read_text()
    assert "| survived |" in report and "not caught (the run exits 1)" in report
    assert (repo / "mod.py").read_text() == "def f():\n    return 1  # the answer\n"  # the source is never touched
