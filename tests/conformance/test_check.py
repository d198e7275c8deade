"""The checker (conformance/check.py): candidates of our own backends pass with the suite's numbers;
perturbed ones fail naming the tensor and the layer; missing, misshapen and mistyped tensors fail by
name (exit 1); files that are not golden files, or of another format version, are user errors (exit 2)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conformance import check, golden, tensorfile
from conformance.backends import NumbaBackend, NumpyBackend, TorchBackend
from conformance.cases import CASES, CaseUnavailable
from conformance.suite import run_case
from weights import activation_names

ROOT = Path(__file__).resolve().parents[2]
CASE = {c.name: c for c in CASES}
ADAMW, TRAINED = "tiny-B2-T4-adamw", "tiny-trained"  # 8 tokens each: the CUDA simulator runs them
LLMC = "tiny-llmc-B2-T4"  # llm.c's AdamW: another lr and decay, every tensor decayed


def quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    out = tmp_path_factory.mktemp("kit")
    for name in (ADAMW, TRAINED, LLMC):
        try:
            golden.export_case(CASE[name], out, log=quiet)
        except CaseUnavailable:
            pass  # tests of that case skip
    return out


def golden_of(kit, name) -> Path:
    path = golden.golden_path(kit, name)
    if not path.is_file():
        pytest.skip(f"{name}: its golden file could not be made here (data or torch missing)")
    return path


def candidate(kit, name, backend, checks=None) -> Path:
    dest = golden.candidate_path(kit, name, backend.name)
    if not dest.is_file():
        ok, why = backend.available()
        if not ok:
            pytest.skip(why)
        golden.write_candidate(golden.open_golden(golden_of(kit, name)), backend, dest, checks, log=quiet)
    return dest


def run_check(capsys, tmp_path, gold, cand, *flags):
    """(exit status, JSON report or None, stdout, stderr) of `python -m conformance check` in this process."""
    report = tmp_path / "report.json"
    report.unlink(missing_ok=True)
    rc = check.main([str(gold), str(cand), "--json", str(report), *flags])
    out, err = capsys.readouterr()
    return rc, json.loads(report.read_text()) if report.is_file() else None, out, err


def edited(src: Path, dest: Path, edit) -> Path:
    """A copy of candidate `src` with edit(tensors: dict) applied: a perturbed candidate."""
    f = tensorfile.TensorFile(src)
    tensors = {n: np.array(f.array(n)) for n in f.names()}
    edit(tensors)
    tensorfile.write(dest, tensors, f.metadata)
    return dest


def by_check(report) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in report["results"]:
        out.setdefault(r["check"], []).append(r)
    return out


# ------------------------------------------------------------------------------ our backends pass
BACKENDS = {
    "numpy-f32": (lambda: NumpyBackend(np.float32), None, "all"),
    "torch-cpu-f32": (lambda: TorchBackend("cpu", "fp32"), None, "all"),
    # the simulator: forward/backward and the activations only (10 AdamW steps or 20 tokens take ~30 s each)
    "numba-cuda-f32": (lambda: NumbaBackend(), ("forward_backward",), "logits,loss,grads,acts"),
}
EXPECTED = {
    "forward_backward": {"logits", "loss", "grad_l2", "grad_max"},
    "adamw": {"adamw_loss", "adamw_param_l2", "adamw_update_l2"},
    "generate": {"generate_mismatches"},
    "kv_cache": {"kv_cache"},
}


PAIRS = [(n, b) for n in (ADAMW, TRAINED) for b in BACKENDS if n == ADAMW or not b.startswith("numba")]


@pytest.mark.parametrize("name,backend_name", PAIRS)
def test_candidates_of_our_backends_pass(kit, tmp_path, capsys, name, backend_name):
    make, checks, require = BACKENDS[backend_name]
    cand = candidate(kit, name, make(), checks)
    rc, report, out, _ = run_check(capsys, tmp_path, golden_of(kit, name), cand, "--require", require)
    assert rc == 0, out
    assert report["verdict"] == "pass" and report["candidate"]["implementation"] == backend_name
    ran = checks or CASE[name].checks
    if backend_name.startswith("numba"):
        ran = [c for c in ran if c != "kv_cache"]  # numba_impl has no KV cache
    judged = {r["check"] for r in report["results"] if r["passed"] is True}
    assert judged == set().union(*(EXPECTED[c] for c in ran))
    assert report["localization"]["first"] is None  # every activation within float32 noise
    assert [n for n, _ in report["localization"]["errors"]] == activation_names(CASE[name].config)


def test_the_checker_gives_the_suites_numbers(kit, tmp_path, capsys):
    """numpy-f32 through a candidate file scores exactly what `conformance.report` measures for it."""
    cand = candidate(kit, ADAMW, NumpyBackend(np.float32))
    rc, report, _, _ = run_check(capsys, tmp_path, golden_of(kit, ADAMW), cand)
    suite = {r.check: r.value for r in run_case(CASE[ADAMW], NumpyBackend(np.float32))}
    mine = {c: rs[0]["value"] for c, rs in by_check(report).items()}
    assert rc == 0 and set(suite) == set(mine)
    assert all(mine[c] == pytest.approx(suite[c], rel=1e-12, abs=0) for c in suite), (mine, suite)


def test_the_reference_itself_scores_zero(kit, tmp_path, capsys):
    """numpy-f64 as a candidate is the golden file's own computation: every value 0, held to the fp32 row."""
    cand = candidate(kit, ADAMW, NumpyBackend(np.float64))
    rc, report, _, _ = run_check(capsys, tmp_path, golden_of(kit, ADAMW), cand, "--require", "all")
    assert rc == 0 and report["precision"] == "fp32"
    assert [r["value"] for r in report["results"]] == [0.0] * 7


def test_a_case_of_its_own_adamw_is_checked_with_it(kit, tmp_path, capsys):
    """The llm.c case's golden file carries its own AdamW (lr 1e-4, every tensor decayed): a candidate that
    follows it passes; one that decays only the matrices, as the contract's default does, fails the
    update check on a tensor that only the "all" set decays."""
    gold = golden.open_golden(golden_of(kit, LLMC))
    assert gold.adamw["decay"] == "all" and gold.adamw["lr"] == 1e-4
    rc, report, out, _ = run_check(capsys, tmp_path, gold.path, candidate(kit, LLMC, NumpyBackend(np.float32)))
    assert rc == 0 and report["verdict"] == "pass", out
    wrong = dataclasses.replace(gold, adamw=dict(gold.adamw, decay="matrices"))
    dest = tmp_path / "matrices.candidate.safetensors"
    golden.write_candidate(wrong, NumpyBackend(np.float32), dest, ("adamw",), log=quiet)
    rc, report, out, _ = run_check(capsys, tmp_path, gold.path, dest, "--require", "adamw")
    failed = [r for r in report["results"] if r["passed"] is False]
    assert rc == 1 and [r["check"] for r in failed] == ["adamw_update_l2"], out
    over = {o["tensor"] for o in report["over_ceiling"] if o["check"] == "adamw_update_l2"}
    assert over and all("ln_" in t or t.endswith(".bias") for t in over), over  # the tensors "matrices" leaves alone


# ------------------------------------------------------------------------------ perturbed candidates fail
def test_a_bug_from_one_activation_on_is_localised(kit, tmp_path, capsys):
    names = activation_names(CASE[ADAMW].config)
    later = names[names.index("h.1.attn_proj") :]  # layer 1's c_proj off by 0.1%, and all that follows it

    def edit(t):
        for n in later:
            t[f"act.{n}"] *= 1.001
        t["logits"] *= 1.001

    cand = edited(candidate(kit, ADAMW, NumpyBackend(np.float32)), tmp_path / "c.safetensors", edit)
    rc, report, out, _ = run_check(capsys, tmp_path, golden_of(kit, ADAMW), cand)
    assert rc == 1 and report["verdict"] == "fail"
    failed = {r["check"] for r in report["results"] if r["passed"] is False}
    assert failed == {"logits"}
    loc = report["localization"]
    assert loc["first"] == "h.1.attn_proj" and "layer 1" in loc["op"] and "attn.c_proj" in loc["op"]
    assert "localizer: backends part at h.1.attn_proj" in out


def test_one_wrong_gradient_tensor_is_named_with_its_layer(kit, tmp_path, capsys):
    def edit(t):
        t["grad.h.1.mlp.c_fc.weight"] *= 1.01

    cand = edited(candidate(kit, ADAMW, NumpyBackend(np.float32)), tmp_path / "c.safetensors", edit)
    rc, report, out, _ = run_check(capsys, tmp_path, golden_of(kit, ADAMW), cand)
    assert rc == 1
    failed = {r["check"]: r for r in report["results"] if r["passed"] is False}
    assert set(failed) == {"grad_l2", "grad_max"}
    assert "grad.h.1.mlp.c_fc.weight (layer 1)" in failed["grad_l2"]["detail"]
    assert {o["tensor"] for o in report["over_ceiling"]} == {"grad.h.1.mlp.c_fc.weight"}
    assert "grad.h.1.mlp.c_fc.weight (layer 1)" in out


def test_an_update_hidden_under_its_weights_fails_the_update_check(kit, tmp_path, capsys):
    """Every AdamW update of a LayerNorm weight 10% too long (the weight is 1 +- 0.1, its 10 steps move it by
    0.6%): the parameters are within their ceiling, the update is not."""
    start = golden.open_golden(golden_of(kit, ADAMW)).params()

    def edit(t):
        name = "h.1.ln_2.weight"
        t[f"adamw.param.{name}"] = start[name] + 1.1 * (t[f"adamw.param.{name}"] - start[name])

    cand = edited(candidate(kit, ADAMW, NumpyBackend(np.float32)), tmp_path / "c.safetensors", edit)
    rc, report, _, _ = run_check(capsys, tmp_path, golden_of(kit, ADAMW), cand)
    assert rc == 1
    results = by_check(report)
    assert results["adamw_param_l2"][0]["passed"] is True
    assert results["adamw_update_l2"][0]["passed"] is False
    assert "adamw.param.h.1.ln_2.weight (layer 1)" in results["adamw_update_l2"][0]["detail"]


def test_one_wrong_greedy_token_fails(kit, tmp_path, capsys):
    def edit(t):
        t["generate.tokens"][0, -1] = (t["generate.tokens"][0, -1] + 1) % CASE[TRAINED].config.vocab_size

    cand = edited(candidate(kit, TRAINED, NumpyBackend(np.float32)), tmp_path / "c.safetensors", edit)
    rc, report, _, _ = run_check(capsys, tmp_path, golden_of(kit, TRAINED), cand)
    assert rc == 1
    results = by_check(report)
    gen = {r["detail"]: r for r in results["generate_mismatches"]}
    assert gen["generate.tokens"]["value"] == 1 and gen["generate.tokens"]["passed"] is False
    assert gen["generate.tokens_kv_cache"]["passed"] is True
    assert results["kv_cache"][0]["value"] == 1  # its own two generations disagree now


# ------------------------------------------------------------------------------ named failures (exit 1)
@pytest.mark.parametrize(
    "what,edit,message",
    [
        ("missing logits", lambda t: t.pop("logits"), "required tensor 'logits' is missing"),
        (
            "transposed gradient",
            lambda t: t.update({"grad.h.0.attn.c_attn.weight": t["grad.h.0.attn.c_attn.weight"].T.copy()}),
            "tensor 'grad.h.0.attn.c_attn.weight' has shape (48, 16), expected (16, 48)",
        ),
        (
            "integer logits",
            lambda t: t.update({"logits": t["logits"].astype(np.int32)}),
            "tensor 'logits' has dtype I32, expected a float type",
        ),
        (
            "other tokens",
            lambda t: t.update({"input.idx": (t["input.idx"] + 1) % 64}),
            "input.idx differs from the golden file's at 8 position(s)",
        ),
    ],
)
def test_structural_failures_are_named(kit, tmp_path, capsys, what, edit, message):
    src = candidate(kit, ADAMW, NumpyBackend(np.float32))

    def add_inputs(t):  # our candidates carry no inputs; a candidate may, and then they must match
        g = golden.open_golden(golden_of(kit, ADAMW))
        t["input.idx"] = np.array(g.array("input.idx"))
        edit(t)

    cand = edited(src, tmp_path / "c.safetensors", add_inputs)
    rc, report, out, _ = run_check(capsys, tmp_path, golden_of(kit, ADAMW), cand)
    assert rc == 1, what
    errors = [r["detail"] for r in report["results"] if r["passed"] is False]
    assert len(errors) == 1 and errors[0].startswith(f"error: {message}"), (what, errors)
    assert message in out


def test_bf16_tensors_are_read_and_judged_by_the_bf16_row(kit, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    f = tensorfile.TensorFile(candidate(kit, ADAMW, NumpyBackend(np.float32)))
    cand = tmp_path / "bf16.safetensors"
    save_file({"logits": torch.from_numpy(np.array(f.array("logits"))).to(torch.bfloat16)}, str(cand))
    rc, report, _, _ = run_check(capsys, tmp_path, golden_of(kit, ADAMW), cand, "--precision", "bf16")
    assert rc == 0 and report["results"][0]["ceiling"] == report["ceilings"]["logits"] == 5e-2
    rc, report, _, _ = run_check(capsys, tmp_path, golden_of(kit, ADAMW), cand)  # bf16 is not float32
    assert rc == 1 and report["results"][0]["value"] > report["ceilings"]["logits"]


# ------------------------------------------------------------------------------ user errors (exit 2)
def test_file_and_flag_errors_are_one_line_and_exit_2(kit, tmp_path, capsys):
    gold = golden_of(kit, ADAMW)
    cand = candidate(kit, ADAMW, NumpyBackend(np.float32))
    g = tensorfile.TensorFile(gold)
    v2 = tmp_path / "v2.golden.safetensors"
    tensorfile.write(v2, {n: g.array(n) for n in g.names()}, {**g.metadata, "format_version": "2"})
    bad_meta = {}  # metadata of the right types only, each broken once: one-line errors, not tracebacks
    for key, value in (("checks", '"5"'), ("adamw", "[1]"), ("ceilings", '{"fp32": {"logits": "x"}, "bf16": {}}')):
        bad_meta[key] = tmp_path / f"bad-{key}.golden.safetensors"
        tensorfile.write(bad_meta[key], {n: g.array(n) for n in g.names()}, {**g.metadata, key: value})
    other = tmp_path / "other-case.safetensors"
    tensorfile.write(other, {"logits": np.zeros(1)}, {"case": "tiny-T1"})
    cases = [
        ([tmp_path / "nope.safetensors", cand], "nope.safetensors: no such golden file"),
        ([cand, gold], "not a golden file (metadata 'format' is 'gpt2-conformance-candidate'"),
        ([v2, cand], "golden format_version '2' is not readable here"),
        ([bad_meta["checks"], cand], "metadata 'checks' must be a list of check names"),
        ([bad_meta["adamw"], cand], "metadata 'adamw' must be an object"),
        ([bad_meta["ceilings"], cand], "metadata 'ceilings' fp32.logits: 'x' is not a number or null"),
        ([gold, other], "a candidate for case 'tiny-T1', but"),
        ([gold, cand, "--require", "grads,nonsense"], "--require nonsense"),
        ([gold, cand, "--json", str(tmp_path / "no" / "r.json")], "--json"),
    ]
    for argv, message in cases:
        rc = check.main([str(a) for a in argv])
        _, err = capsys.readouterr()
        assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, (argv, err)


def test_export_flag_errors_exit_2(kit, tmp_path, capsys):
    for argv, message in [
        (["--cases", "tiny-nope"], "--cases: unknown case(s) ['tiny-nope']"),
        (["--candidate", "numpy-f99", "--out", str(kit)], "--candidate numpy-f99: unknown backend"),
        (["--candidate", "numpy-f32", "--cases", "tiny-T1", "--out", str(tmp_path)], "no golden file for case tiny-T1"),
    ]:
        rc = golden.main(argv)
        _, err = capsys.readouterr()
        assert rc == 2 and err.startswith("error: ") and message in err, (argv, err)


def test_export_that_writes_nothing_is_an_error(kit, tmp_path, capsys, monkeypatch):
    """Every case skipped (unavailable here, or the backend runs none of them): exit 2 and a line that
    says nothing was written, never a success that leaves an empty folder."""

    def unavailable(case, out, **kwargs):
        raise CaseUnavailable("Tiny Shakespeare not found")

    monkeypatch.setattr(golden, "export_case", unavailable)
    rc = golden.main(["--out", str(tmp_path / "g")])
    out, err = capsys.readouterr()
    assert rc == 2 and err.startswith("error: ") and "no golden file written" in err, err
    assert "skipped (Tiny Shakespeare not found)" in out
    assert not list((tmp_path / "g").iterdir())

    monkeypatch.setattr(NumpyBackend, "supports", lambda self, config, tokens: (False, "too big for this test"))
    rc = golden.main(["--candidate", "numpy-f32", "--out", str(kit)])
    out, err = capsys.readouterr()
    assert rc == 2 and "--candidate numpy-f32: no candidate file written" in err, err
    assert "skipped (too big for this test)" in out


def test_the_cli_through_a_subprocess(kit, tmp_path):
    gold, cand = golden_of(kit, ADAMW), candidate(kit, ADAMW, NumpyBackend(np.float32))
    proc = subprocess.run(
        [sys.executable, "-m", "conformance", "check", str(gold), str(cand), "--json", str(tmp_path / "r.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "backend" in proc.stdout and "numpy-f32" in proc.stdout and "0 failed: PASS" in proc.stdout
    assert json.loads((tmp_path / "r.json").read_text())["verdict"] == "pass"
