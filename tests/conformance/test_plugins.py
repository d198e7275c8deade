"""Backends as plugins: the entry-point group, what the registry does with what it finds, the example plugin.

Most tests plant throwaway distributions: a `<name>-<version>.dist-info` folder (METADATA and
entry_points.txt, as pip writes them) and a module beside it in tmp_path. They run whether or not the
example package is installed. The last tests need the installed example (`pip install -e
examples/gpt2-conformance-plugin`; nox's tests session does it) and skip without it.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from conformance import backends, plugins, report
from conformance.backends import BUILTIN, builtin_backends, registry
from conformance.cases import CASES, batch, params_for
from conformance.localize import localize_backends
from conformance.plugins import GROUP, PluginFailure
from conformance.suite import run_case
from conformance.tolerances import LOCALIZE

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "gpt2-conformance-plugin"
EXAMPLE_NAMES = ("example-torch-autograd-broken", "example-torch-autograd-f32")
BROKEN_SWITCH = "GPT2_EXAMPLE_PLUGIN_BROKEN"  # the example's own switch (its backend.py), spelled out here
CASE = {c.name: c for c in CASES}

# A plugin module's code: three small backends that reuse the reference in float32 (tests may; backends may not).
BACKENDS_MODULE = """
import numpy as np
from conformance.backends import Backend, NumpyBackend

class Minimal(Backend):
    '''Implements forward_backward only: every other check must be skipped, not failed.'''
    def __init__(self, name="minimal-f32", precision="fp32"):
        super().__init__(name, precision, "cpu", "a test plugin")
    def forward_backward(self, params, config, idx, targets):
        return NumpyBackend(np.float32).forward_backward(params, config, idx, targets)

def one():
    return Minimal()

def two():
    return [Minimal("plugin-a-f32"), Minimal("plugin-b-f32")]
"""


def _distribution(tmp_path: Path, name: str, entry_points: dict[str, str], code: str = BACKENDS_MODULE):
    """A throwaway installed distribution `name` 1.2.3 in tmp_path whose entry points (name -> "attr")
    point into a module of `code`; tmp_path goes on sys.path. Returns the distribution."""
    module = re.sub(r"\W", "_", f"plugin_{tmp_path.parent.name}_{tmp_path.name}")  # unique: no stale sys.modules
    (tmp_path / f"{module}.py").write_text(code)
    info = tmp_path / f"{name.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    lines = [f"[{GROUP}]"] + [f"{ep} = {module}:{attr}" for ep, attr in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return metadata.PathDistribution(info)


@pytest.fixture
def plant(tmp_path, monkeypatch):
    """plant(name, {entry point: attr}, code) -> the registry then sees exactly the planted distributions."""
    monkeypatch.syspath_prepend(str(tmp_path))
    planted: list = []
    monkeypatch.setattr(plugins, "_entry_points", lambda: [ep for d in planted for ep in d.entry_points])

    def add(name: str, entry_points: dict[str, str], code: str = BACKENDS_MODULE):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.syspath_prepend(str(folder))
        planted.append(_distribution(folder, name, entry_points, code))

    return add


def _by_name(backends) -> dict:
    return {b.name: b for b in backends}


# ------------------------------------------------------------------------------------------ discovery
def test_an_installed_entry_point_is_found_through_importlib_metadata(tmp_path, monkeypatch):
    """No stand-in for importlib.metadata: a dist-info folder on sys.path is all a plugin needs."""
    dist = _distribution(tmp_path, "throwaway-plugin", {"throwaway": "one"}, BACKENDS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = _by_name(registry())
    b = found["minimal-f32"]
    assert b.origin.distribution == "throwaway-plugin" and b.origin.version == "1.2.3"
    (ep,) = dist.entry_points
    assert b.origin.entry_point == f"throwaway = {ep.value}"
    assert str(b.origin) == f"throwaway-plugin 1.2.3 (entry point throwaway = {ep.value})"
    builtin = [x.name for x in builtin_backends()]
    assert [x.name for x in registry()][: len(builtin)] == builtin  # the built-in ones first, unchanged
    assert all(found[n].origin is BUILTIN for n in builtin)


def test_an_entry_point_may_return_a_list_and_the_order_is_fixed(plant):
    plant("zeta-plugin", {"one": "one"})
    plant("alpha-plugin", {"two": "two"})
    names = [b.name for b in registry()][len(builtin_backends()) :]
    assert names == ["plugin-a-f32", "plugin-b-f32", "minimal-f32"]  # sorted by distribution, then entry point


def test_with_no_plugin_the_registry_is_the_builtin_one(monkeypatch):
    monkeypatch.setattr(plugins, "_entry_points", lambda: [])
    assert [b.name for b in registry()] == [b.name for b in builtin_backends()]


# ------------------------------------------------------------------------------------ what is refused
def test_a_plugin_that_raises_on_load_is_listed_with_its_error(plant, tmp_path, capsys, monkeypatch):
    plant("crashing-plugin", {"crashes": "one"}, code="raise ImportError('needs the frobnicator package')\n")
    plant("fine-plugin", {"fine": "one"})
    found = _by_name(registry())
    failure = found["crashing-plugin:crashes"]
    assert isinstance(failure, PluginFailure)
    assert "ImportError: needs the frobnicator package" in failure.error
    assert failure.available() == (False, f"plugin error: {failure.error}")
    assert "minimal-f32" in found  # the other plugin still loads

    # listed, exit 0
    assert report.main(["--list"]) == 0
    listed = capsys.readouterr().out
    row = next(line for line in listed.splitlines() if line.startswith("crashing-plugin:crashes"))
    assert "needs the frobnicator package" in row and "crashing-plugin 1.2.3" in row
    assert "1 plugin error(s)" in listed

    # a conformance run counts it as one failure (exit 1) and still runs the rest (the reference alone built in)
    monkeypatch.setattr(backends, "builtin_backends", lambda: builtin_backends()[:1])
    out = tmp_path / "r.json"
    assert report.main(["--cases", "tiny-T1", "--json", str(out)]) == 1
    text = capsys.readouterr().out
    assert "crashing-plugin:crashes" in text and "FAIL" in text
    data = json.loads(out.read_text())
    (bad,) = [r for r in data["results"] if r["check"] == "plugin"]
    assert bad["backend"] == "crashing-plugin:crashes" and bad["passed"] is False
    assert any(r["backend"] == "minimal-f32" and r["passed"] is True for r in data["results"])


def test_a_duplicate_name_is_refused_by_name(plant):
    plant("copycat-plugin", {"copy": "copy"}, code=BACKENDS_MODULE + "\ndef copy(): return [Minimal('numpy-f32')]\n")
    plant("first-plugin", {"first": "one"})
    plant("second-plugin", {"second": "one"})
    backends = registry()
    assert [b.name for b in backends].count("numpy-f32") == 1
    assert _by_name(backends)["numpy-f32"].origin is BUILTIN  # the built-in keeps its name
    assert _by_name(backends)["minimal-f32"].origin.distribution == "first-plugin"  # first come, first served
    errors = {b.name: b.error for b in backends if isinstance(b, PluginFailure)}
    assert set(errors) == {"copycat-plugin:copy", "second-plugin:second"}
    assert "'numpy-f32' is already taken by built-in" in errors["copycat-plugin:copy"]
    assert "'minimal-f32' is already taken by first-plugin 1.2.3" in errors["second-plugin:second"]


@pytest.mark.parametrize(
    "returns, message",
    [
        ("'not a backend'", "returned str, not a conformance.backends.Backend"),
        ("[]", "returned no backend"),
        ("Minimal('two words')", "backend name 'two words' is not letters"),
        ("Minimal('a,b')", "backend name 'a,b' is not letters"),
        ("Minimal('half-f16', precision='fp16')", "precision 'fp16' is none of fp32, bf16"),
    ],
)
def test_what_a_plugin_returns_is_checked(plant, returns, message):
    plant("odd-plugin", {"odd": "odd", "fine": "one"}, code=BACKENDS_MODULE + f"\ndef odd(): return {returns}\n")
    found = _by_name(registry())
    assert message in found["odd-plugin:odd"].error
    assert found["minimal-f32"].origin.entry_point.startswith("fine = ")  # its sibling entry point is kept


def test_a_plugin_failure_is_skipped_by_run_case_with_its_error(plant):
    plant("crashing-plugin", {"crashes": "one"}, code="1 / 0\n")
    failure = _by_name(registry())["crashing-plugin:crashes"]
    (r,) = run_case(CASE["tiny-T1"], failure)
    assert r.passed is None and "ZeroDivisionError" in r.detail


# ------------------------------------------------------------------------ the interface's defaults
def test_a_minimal_plugin_is_judged_on_what_it_has_and_skipped_on_the_rest(plant):
    plant("minimal-plugin", {"minimal": "one"})
    backend = _by_name(registry())["minimal-f32"]
    results = run_case(CASE["tiny-B2-T4-adamw"], backend)
    judged = {r.check: r.passed for r in results if r.passed is not None}
    assert judged == {"logits": True, "loss": True, "grad_l2": True, "grad_max": True}
    (adamw,) = [r for r in results if r.check == "adamw"]
    assert adamw.detail == "skipped: minimal-f32 has no AdamW"
    params, (idx, targets) = params_for(CASE["tiny-T1"]), batch(CASE["tiny-T1"])
    logits = backend.forward(params, CASE["tiny-T1"].config, idx)  # the default forward: forward_backward's logits
    assert np.array_equal(logits, backend.forward_backward(params, CASE["tiny-T1"].config, idx, targets)[0])
    with pytest.raises(NotImplementedError, match="minimal-f32 exposes no named activations"):
        backend.activations(params, CASE["tiny-T1"].config, idx)


# ---------------------------------------------------------------------------------- the example plugin
@pytest.fixture
def example(plant):
    """The example package's entry points, loaded from this checkout's source (installed or not)."""
    pytest.importorskip("torch")
    with open(EXAMPLE / "pyproject.toml", "rb") as f:
        eps = tomllib.load(f)["project"]["entry-points"][GROUP]
    planted_eps = {name: target.split(":")[1] for name, target in eps.items()}
    code = "from gpt2_conformance_plugin import *  # noqa\n"
    plant("example-from-source", planted_eps, code=code)
    sys.path.insert(0, str(EXAMPLE / "src"))
    try:
        yield _by_name(registry())
    finally:
        sys.path.remove(str(EXAMPLE / "src"))


def test_the_examples_pyproject_registers_both_backends_in_the_group():
    with open(EXAMPLE / "pyproject.toml", "rb") as f:
        eps = tomllib.load(f)["project"]["entry-points"][GROUP]
    assert sorted(eps) == sorted(EXAMPLE_NAMES)
    assert all(target.startswith("gpt2_conformance_plugin:") for target in eps.values())


def test_the_example_imports_no_backend_of_the_project():
    imports = set()
    for path in (EXAMPLE / "src").rglob("*.py"):
        imports |= set(re.findall(r"^\s*(?:from|import)\s+(\w+)", path.read_text(), re.MULTILINE))
    assert imports.isdisjoint({"reference", "torch_impl", "numba_impl"}), imports
    assert {"torch", "weights", "conformance"} <= imports


def test_the_example_passes_the_suite_on_tiny_cases(example):
    backend = example["example-torch-autograd-f32"]
    assert backend.origin.distribution == "example-from-source" and backend.available() == (True, "")
    results = run_case(CASE["tiny-B2-T4-adamw"], backend) + run_case(CASE["tiny-trained"], backend)
    if any(r.check == "all" for r in results):
        pytest.skip(f"a case cannot run here: {[r.detail for r in results if r.check == 'all']}")
    judged = {r.check: r.passed for r in results if r.passed is not None}
    assert set(judged) >= {"logits", "loss", "grad_l2", "grad_max", "adamw_loss", "adamw_param_l2"}
    assert set(judged) >= {"adamw_update_l2", "generate_mismatches"}
    assert all(judged.values()), [(r.check, r.value, r.ceiling) for r in results if r.passed is False]
    (kv,) = [r for r in results if r.check == "kv_cache"]
    assert kv.passed is None and kv.detail.startswith("skipped: the example has no KV cache")
    ok, why = backend.supports(CASE["tiny-rope"].config)
    assert not ok and "position=rope" in why
    d = localize_backends(
        backend,
        _by_name(builtin_backends())["numpy-f64"],
        params_for(CASE["tiny-B1-T7"]),
        CASE["tiny-B1-T7"].config,
        batch(CASE["tiny-B1-T7"])[0],
        LOCALIZE["fp32"],
    )
    assert d.name is None, d.describe()  # every contract activation is there and agrees


def test_the_broken_example_is_unavailable_unless_asked_for(example, monkeypatch):
    monkeypatch.delenv(BROKEN_SWITCH, raising=False)
    ok, why = example["example-torch-autograd-broken"].available()
    assert not ok and BROKEN_SWITCH in why


def test_the_broken_example_fails_the_suite_and_the_localizer_names_attention(example, monkeypatch, tmp_path, capsys):
    from conformance import test_conformance

    monkeypatch.setenv(BROKEN_SWITCH, "1")
    backend = example["example-torch-autograd-broken"]
    with pytest.raises(pytest.fail.Exception, match=r"localizer: backends part at h\.0\.attn \(") as failed:
        test_conformance.test_conformance(CASE["tiny-B1-T7"], backend)
    assert "causal self-attention" in str(failed.value) and "h.0.qkv, is within" in str(failed.value)

    out = tmp_path / "r.json"
    code = report.main(["--backends", "example-torch-autograd-broken", "--cases", "tiny-B1-T7", "--json", str(out)])
    assert code == 1
    assert "backends part at h.0.attn" in capsys.readouterr().out
    data = json.loads(out.read_text())
    (row,) = [b for b in data["backends"] if b["name"] == "example-torch-autograd-broken"]
    assert row["distribution"] == "example-from-source" and row["version"] == "1.2.3"
    assert data["localizations"][0]["backend"] == "example-torch-autograd-broken"


# ------------------------------------------------------------------------ the installed example (CI)
def _installed_example():
    try:
        return metadata.distribution("gpt2-conformance-plugin")
    except metadata.PackageNotFoundError:
        pytest.skip("the example plugin is not installed: pip install -e examples/gpt2-conformance-plugin")


def test_the_installed_example_shows_up_in_the_registry_and_the_list(capsys):
    dist = _installed_example()
    pytest.importorskip("torch")
    found = _by_name(registry())
    for name in EXAMPLE_NAMES:
        assert found[name].origin.distribution == "gpt2-conformance-plugin", found[name].origin
        assert found[name].origin.version == dist.version
    assert report.main(["--list"]) == 0
    listed = capsys.readouterr().out
    row = next(line for line in listed.splitlines() if line.startswith("example-torch-autograd-f32 "))
    assert f"gpt2-conformance-plugin {dist.version} (entry point example-torch-autograd-f32 = " in row
    assert " yes " in row
