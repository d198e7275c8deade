"""`python -m conformance export`: golden files from the float64 reference, one per conformance case.

    python -m conformance export                              # every CI-sized case -> conformance-golden/
    python -m conformance export --full --out kit/            # plus the 124M-shape cases
    python -m conformance export --cases tiny-B1-T7,tiny-llama
    python -m conformance export --candidate torch-cpu-f32    # a candidate file of one of our backends, for
                                                              # every golden file in --out (what a candidate
                                                              # looks like; `python -m conformance check` scores it)

A golden file is what any GPT-2 implementation, in any language, needs to know tensor by tensor
whether its forward, backward and optimizer step are right: the case's tokens, the float64
reference's logits, loss, every parameter gradient, every named activation, the AdamW trajectory and
the greedy tokens, with the config, the weights' identity and the ceilings in its metadata. The
format is docs/golden-format.md (complete without this file); the names, in short:

    input.idx, input.targets        int64 (B, T); targets -1 = ignored
    logits (B, T, V), loss ()       float64
    grad.<param>                    float64, every parameter of weights.layout.param_shapes(config)
    act.<activation>                float64, every name of weights.layout.activation_names(config)
    adamw.loss (steps,)             the loss before each step
    adamw.param.<param>             the parameters after the last step
    adamw.step<k>.param.<param>     after step k = 1 .. steps - 1 (cases whose weights are inline)
    generate.tokens                 int64 (B, T + n), greedy, every token recomputed from scratch
    generate.tokens_kv_cache        int64 (B, T + n), greedy with a KV cache
    weight.<param>                  float64, the case's weights (cases of <= INLINE_MAX_VALUES values)

Every number is the suite's own: the reference is `NumpyBackend(np.float64)`, the tokens are
`conformance.suite.case_batch(case)`, the weights `conformance.cases.params_for(case)`, and the AdamW
and generation settings those of conformance/cases.py and backends.py, so that a golden file and
`python -m conformance.report` judge the same thing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conformance import tensorfile
from conformance.backends import ADAMW_DEFAULTS, Backend, NumpyBackend, by_name, registry
from conformance.cases import ADAMW_STEPS, CASES, GENERATE_TOKENS, TRAIN_STEPS, Case, CaseUnavailable, params_for
from conformance.suite import REFERENCE, case_batch
from conformance.tolerances import CEILINGS, LOCALIZE
from weights import GPT2Config, activation_names, load, num_params, param_shapes, save
from weights.config import ConfigError
from weights.errors import ArgumentParser, UsageError, UserError, run_cli
from weights.hub import sha256_of
from weights.provenance import provenance

FORMAT = "gpt2-conformance-golden"
CANDIDATE_FORMAT = "gpt2-conformance-candidate"
FORMAT_VERSION = "1"

# Cases of at most this many parameter values (the tiny configs: ~10k) carry their weights inside the
# golden file and the parameters after every AdamW step; larger ones (the real 50,257-token vocabulary:
# 3.3M values, 124M) carry their weights beside it and only the parameters after the last step. In
# float64 the trajectory of 124M would be 10 x 1 GB; the last step is what the ceilings judge.
INLINE_MAX_VALUES = 1_000_000

# The metadata keys every golden file has (docs/golden-format.md); "adamw" and "generate" are there
# when the case has those checks.
REQUIRED_METADATA = ("format", "format_version", "case", "config", "checks", "weights", "ceilings", "provenance")


# ------------------------------------------------------------------------------------- file names
def golden_path(out: Path, case: str) -> Path:
    return Path(out) / f"{case}.golden.safetensors"


def weights_dir(out: Path, case: str) -> Path:
    return Path(out) / f"{case}.weights"


def candidate_path(out: Path, case: str, implementation: str) -> Path:
    return Path(out) / f"{case}.{implementation}.candidate.safetensors"


def decayed(config: GPT2Config, decay="matrices") -> list[str]:
    """The parameters AdamW decays under the decay set `decay` (docs/contract.md): "matrices" the 2-D ones
    (embeddings, weight matrices), "all" every one, or a list of names. Written into the golden file so that
    an implementation outside this project needs no rule to read it."""
    shapes = param_shapes(config)
    if decay == "matrices":
        return [name for name, shape in shapes.items() if len(shape) == 2]
    if decay == "all":
        return list(shapes)
    unknown = sorted(set(decay) - set(shapes))
    if isinstance(decay, str) or unknown:
        raise ValueError(f"decay set {decay!r}: not 'matrices', 'all' or a list of parameter names {unknown}")
    return [name for name in shapes if name in set(decay)]


def params_sha256(params: dict[str, np.ndarray], config: GPT2Config) -> str:
    """sha256 of every parameter's float32 bytes (little-endian, C order), in param_shapes(config) order:
    the weights' identity, whatever file they travel in."""
    h = hashlib.sha256()
    for name in param_shapes(config):
        h.update(np.asarray(params[name], dtype="<f4", order="C").tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------- export
def weights_identity(case: Case, params: dict[str, np.ndarray]) -> dict:
    if case.weights == "synthetic":
        ident = {"source": "synthetic", "seed": 0, "generator": "weights.synthetic(config, seed=0)"}
    else:
        ident = {
            "source": "trained",
            "recipe": f"conformance.cases._trained: {TRAIN_STEPS} AdamW steps of torch_impl (float32, CPU) "
            "from weights.synthetic(config, seed=0) on Tiny Shakespeare",
        }
    ident["label"] = case.label
    ident["params_sha256"] = params_sha256(params, case.config)
    return ident


def export_case(case: Case, out: Path, log=print, all_steps: bool = False) -> Path:
    """Write golden_path(out, case.name) (and, for large cases, weights_dir beside it); returns its path.
    `all_steps`: store the parameters after every AdamW step for large cases too (float64: ~1 GB a step
    at 124M, and k AdamW steps recomputed for each k)."""
    ref = NumpyBackend(np.float64)
    config = case.config
    Path(out).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log(f"  {case.name}: weights ({case.weights}) and tokens", flush=True)
    params = params_for(case)  # float32 arrays; CaseUnavailable when data or torch are missing
    for name, p in params.items():
        if p.dtype != np.float32:  # the weights travel as float32 (weights.save): they must be float32 values
            raise RuntimeError(f"{case.name}: parameter {name} is {p.dtype}, expected float32")
    idx, targets = case_batch(case)
    inline = num_params(config) <= INLINE_MAX_VALUES
    tensors: dict[str, np.ndarray] = {
        "input.idx": np.asarray(idx, np.int64),
        "input.targets": np.asarray(targets, np.int64),
    }
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "case": case.name,
        "config": json.dumps(config.to_hf_dict()),
        "checks": json.dumps(list(case.checks)),
        "batch": json.dumps({"B": case.B, "T": case.T, "tokens": case.tokens}),
        "reference": REFERENCE,
        "ceilings": json.dumps(CEILINGS),
        "localize": json.dumps(LOCALIZE),
    }

    def step(what):
        log(f"  {case.name}: {what} ({time.perf_counter() - t0:.1f}s)", flush=True)

    if "forward_backward" in case.checks:
        step("forward and backward")
        logits, loss, grads = ref.forward_backward(params, config, idx, targets)
        tensors["logits"], tensors["loss"] = logits, np.asarray(loss, np.float64)
        tensors.update({f"grad.{n}": grads[n] for n in param_shapes(config)})
        step("named activations")
        acts = ref.activations(params, config, idx)
        tensors.update({f"act.{n}": acts[n] for n in activation_names(config)})
    if "adamw" in case.checks:
        step(f"{ADAMW_STEPS} AdamW steps")
        hp = case.adamw_hp  # the contract's AdamW, or the case's own (llm.c's for *-llmc-*)
        losses, final = ref.adamw(params, config, idx, targets, ADAMW_STEPS, hp)
        tensors["adamw.loss"] = np.asarray(losses, np.float64)
        tensors.update({f"adamw.param.{n}": final[n] for n in param_shapes(config)})
        stored = list(range(1, ADAMW_STEPS)) if inline or all_steps else []
        for k in stored:  # the same call the suite makes, stopped after k steps: bitwise the same trajectory
            _, p_k = ref.adamw(params, config, idx, targets, k, hp)
            tensors.update({f"adamw.step{k}.param.{n}": p_k[n] for n in param_shapes(config)})
        meta["adamw"] = json.dumps(
            {**hp, "steps": ADAMW_STEPS, "stored_steps": stored, "decayed": decayed(config, hp["decay"])}
        )
    if "generate" in case.checks or "kv_cache" in case.checks:
        step(f"{GENERATE_TOKENS} greedy tokens, with and without the KV cache")
        full = np.asarray(ref.generate(params, config, idx, GENERATE_TOKENS, use_cache=False), np.int64)
        cached = np.asarray(ref.generate(params, config, idx, GENERATE_TOKENS, use_cache=True), np.int64)
        if not np.array_equal(full, cached):  # the reference's own KV cache: a bug here, not a golden value
            raise RuntimeError(f"{case.name}: the reference's KV-cache tokens differ from its recomputed ones")
        tensors["generate.tokens"], tensors["generate.tokens_kv_cache"] = full, cached
        meta["generate"] = json.dumps({"max_new_tokens": GENERATE_TOKENS, "temperature": 0.0, "greedy": True})

    ident = weights_identity(case, params)
    if inline:
        tensors.update({f"weight.{n}": np.asarray(params[n], np.float64) for n in param_shapes(config)})
        ident["stored"] = "inline"
    else:
        step("weights beside the golden file")
        path = save(params, config, weights_dir(out, case.name))
        ident.update(stored="file", file=str(path.relative_to(out)), sha256=sha256_of(path))
    meta["weights"] = json.dumps(ident)
    meta["provenance"] = json.dumps(provenance())
    dest = golden_path(out, case.name)
    tensorfile.write(dest, {k: np.asarray(v) for k, v in tensors.items()}, meta)
    step(f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB, {len(tensors)} tensors)")
    return dest


# ------------------------------------------------------------------------------------- reading
@dataclass
class Golden:
    """A golden file, read and validated: the metadata parsed, the tensors on demand (float64)."""

    path: Path
    file: tensorfile.TensorFile
    case: str
    config: GPT2Config
    checks: list[str]
    weights: dict
    ceilings: dict
    adamw: dict | None
    generate: dict | None
    provenance: dict

    def names(self) -> list[str]:
        return self.file.names()

    def __contains__(self, name: str) -> bool:
        return name in self.file

    def array(self, name: str) -> np.ndarray:
        return self.file.array(name)

    def params(self) -> dict[str, np.ndarray] | None:
        """The case's weights as float32 arrays: inline (weight.*) or the file beside, its sha256 checked.
        None when the golden file carries neither (a hand-made golden file may not)."""
        shapes = param_shapes(self.config)
        if all(f"weight.{n}" in self.file for n in shapes):
            return {n: np.asarray(self.array(f"weight.{n}"), np.float32) for n in shapes}
        if "file" not in self.weights:
            return None
        path = self.path.parent / self.weights["file"]
        if not path.is_file():
            raise UserError(f"{self.path}: its weights file {path} is missing (metadata 'weights')")
        want = self.weights.get("sha256")
        if want and sha256_of(path) != want:
            raise UserError(f"{path}: sha256 differs from the one in {self.path.name}'s metadata ({want[:12]}...)")
        if str(self.weights.get("format", "")).startswith("llm.c model"):  # a debug state's golden file
            from conformance.llmc import read_model

            params, config = read_model(path)
        else:
            params, config = load(path, dtype=np.float32)
        if config != self.config:
            raise UserError(f"{path}: its config.json differs from the config in {self.path.name}'s metadata")
        return params


def _json_meta(path: Path, meta: dict, key: str, optional: bool = False):
    if key not in meta:
        if optional:
            return None
        raise UserError(f"{path}: not a golden file of format {FORMAT_VERSION}: metadata key {key!r} is missing")
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: metadata {key!r} is not JSON ({e})") from None


def open_golden(path: str | Path) -> Golden:
    """Read and validate a golden file; every problem is a UserError (exit 2) naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such golden file")
    f = tensorfile.TensorFile(path)
    meta = f.metadata
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not a golden file (metadata 'format' is {meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path}: golden format_version {meta.get('format_version')!r} is not readable here "
            f"(this checker reads version {FORMAT_VERSION}; docs/golden-format.md, versioning)"
        )
    for key in REQUIRED_METADATA:
        if key not in meta:
            raise UserError(f"{path}: not a golden file of format {FORMAT_VERSION}: metadata key {key!r} is missing")
    try:
        config = GPT2Config.from_hf_dict(_json_meta(path, meta, "config"), source=f"{path} metadata 'config'")
    except ConfigError as e:
        raise UserError(str(e)) from None
    ceilings = _json_meta(path, meta, "ceilings")
    if not (isinstance(ceilings, dict) and all(isinstance(ceilings.get(p), dict) for p in ("fp32", "bf16"))):
        raise UserError(f"{path}: metadata 'ceilings' must hold the rows 'fp32' and 'bf16'")
    for row, values in ceilings.items():
        for check, value in values.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise UserError(f"{path}: metadata 'ceilings' {row}.{check}: {value!r} is not a number or null")
    checks = _json_meta(path, meta, "checks")
    if not (isinstance(checks, list) and all(isinstance(c, str) for c in checks)):
        raise UserError(f"{path}: metadata 'checks' must be a list of check names, got {checks!r}")
    for key in ("adamw", "generate"):
        value = _json_meta(path, meta, key, optional=True)
        if value is not None and not isinstance(value, dict):
            raise UserError(f"{path}: metadata {key!r} must be an object, got {value!r}")
    g = Golden(
        path,
        f,
        meta["case"],
        config,
        checks,
        _json_meta(path, meta, "weights"),
        ceilings,
        _json_meta(path, meta, "adamw", optional=True),
        _json_meta(path, meta, "generate", optional=True),
        _json_meta(path, meta, "provenance"),
    )
    for check, value in (("adamw", g.adamw), ("generate", g.generate)):
        if check in g.checks and value is None:
            raise UserError(f"{path}: the case has the {check} check but no metadata {check!r}")
    _validate(g)
    return g


def expected_shape(name: str, config: GPT2Config, B: int, T: int, golden: Golden) -> tuple[int, ...] | None:
    """The shape docs/golden-format.md gives `name` (None: an activation, whose width the file says)."""
    shapes = param_shapes(config)
    for prefix in ("grad.", "weight.", "adamw.param."):
        if name.startswith(prefix):
            return shapes.get(name[len(prefix) :], ())
    if name.startswith("adamw.step"):
        return shapes.get(name.split(".param.", 1)[-1], ())
    fixed = {"input.idx": (B, T), "input.targets": (B, T), "logits": (B, T, config.vocab_size), "loss": ()}
    if name in fixed:
        return fixed[name]
    if name == "adamw.loss":
        return (int((golden.adamw or {}).get("steps", -1)),)
    if name.startswith("generate."):
        return (B, T + int((golden.generate or {}).get("max_new_tokens", -1)))
    return None


def _validate(g: Golden) -> None:
    """Every tensor of a golden file has a documented name and shape (a hand-made file is checked too)."""
    if "input.idx" not in g.file:
        raise UserError(f"{g.path}: not a golden file: tensor 'input.idx' is missing")
    e = g.file.entries["input.idx"]
    if len(e.shape) != 2:
        raise UserError(f"{g.path}: tensor 'input.idx' has shape {e.shape}, expected (B, T)")
    B, T = e.shape
    acts = set(activation_names(g.config))
    params = set(param_shapes(g.config))
    for name, e in g.file.entries.items():
        known = (
            name in ("input.idx", "input.targets", "logits", "loss", "adamw.loss")
            or name.startswith("generate.tokens")
            or (name.startswith("act.") and name[4:] in acts)
            or any(name.startswith(p) and name[len(p) :] in params for p in ("grad.", "weight.", "adamw.param."))
            or (name.startswith("adamw.step") and name.split(".param.", 1)[-1] in params)
        )
        if not known:
            raise UserError(f"{g.path}: tensor {name!r} is not a golden tensor name of this config")
        want = expected_shape(name, g.config, B, T, g)
        if name.startswith("act."):
            if e.shape[:2] != (B, T):
                raise UserError(f"{g.path}: tensor {name!r} has shape {e.shape}, expected (B, T, .) = ({B}, {T}, .)")
        elif want is not None and e.shape != want:
            raise UserError(f"{g.path}: tensor {name!r} has shape {e.shape}, expected {want}")


# ------------------------------------------------------------------------------------- candidates
def candidate_tensors(golden: Golden, backend: Backend, checks=None, log=print) -> dict[str, np.ndarray]:
    """What `backend` computes for the golden file's case, under the golden names: a candidate's tensors.

    Only what a foreign implementation would have: the golden file's tokens and weights (not the suite's
    own), its AdamW and generation settings. `checks` limits which of the golden file's checks run.
    """
    params = golden.params()
    if params is None:
        raise UserError(f"{golden.path}: carries no weights, so no candidate can be computed for it")
    config = golden.config
    idx, targets = np.array(golden.array("input.idx")), np.array(golden.array("input.targets"))
    todo = [c for c in golden.checks if checks is None or c in checks]
    dtype = np.float64 if backend.precision == "fp64" else np.float32
    out: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()

    def step(what):
        log(f"  {golden.case} on {backend.name}: {what} ({time.perf_counter() - t0:.1f}s)", flush=True)

    if "forward_backward" in todo:
        step("forward and backward")
        logits, loss, grads = backend.forward_backward(params, config, idx, targets)
        out["logits"], out["loss"] = np.asarray(logits, dtype), np.asarray(float(loss), dtype)
        out.update({f"grad.{n}": np.asarray(g, dtype) for n, g in grads.items()})
        step("named activations")
        try:
            out.update({f"act.{n}": np.asarray(a, dtype) for n, a in backend.activations(params, config, idx).items()})
        except NotImplementedError as e:
            step(f"no activations ({e})")
    if "adamw" in todo:
        hp = {k: golden.adamw[k] for k in ADAMW_DEFAULTS if k != "decay"}
        hp["decay"] = golden.adamw.get("decay", golden.adamw["decayed"])  # a set's name, else its names
        step(f"{golden.adamw['steps']} AdamW steps")
        losses, final = backend.adamw(params, config, idx, targets, int(golden.adamw["steps"]), hp)
        out["adamw.loss"] = np.asarray(losses, dtype)
        out.update({f"adamw.param.{n}": np.asarray(p, dtype) for n, p in final.items()})
    if "generate" in todo or "kv_cache" in todo:
        n = int(golden.generate["max_new_tokens"])
        step(f"{n} greedy tokens")
        out["generate.tokens"] = np.asarray(backend.generate(params, config, idx, n, use_cache=False), np.int64)
        try:
            out["generate.tokens_kv_cache"] = np.asarray(
                backend.generate(params, config, idx, n, use_cache=True), np.int64
            )
        except NotImplementedError as e:
            step(f"no KV cache ({e})")
    return out


def write_candidate(golden: Golden, backend: Backend, dest: Path, checks=None, log=print) -> Path:
    tensors = candidate_tensors(golden, backend, checks, log)
    meta = {
        "format": CANDIDATE_FORMAT,
        "format_version": FORMAT_VERSION,
        "case": golden.case,
        "implementation": backend.name,
        "precision": "fp32" if backend.precision == "fp64" else backend.precision,
        "provenance": json.dumps(provenance()),
    }
    tensorfile.write(dest, tensors, meta)
    log(f"  wrote {dest} ({len(tensors)} tensors)", flush=True)
    return dest


# ------------------------------------------------------------------------------------- the command
def _choose_cases(args) -> tuple[list[Case], bool]:
    """(cases, named): named=True when the user listed them (then each one must work)."""
    if args.cases:
        wanted = args.cases.split(",")
        unknown = [w for w in wanted if w not in {c.name for c in CASES}]
        if unknown:
            raise UsageError(f"--cases: unknown case(s) {unknown}; known: {', '.join(c.name for c in CASES)}")
        return [c for c in CASES if c.name in wanted], True
    return [c for c in CASES if not c.full or args.full], False


def main(argv=None) -> int:
    """The command line; bad flags or files are one line (`error: ...`) and exit status 2."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    ap = ArgumentParser(
        prog="python -m conformance export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cases", default="", help="comma-separated case names (default: every CI-sized case)")
    ap.add_argument("--full", action="store_true", help="include the 124M-shape cases (gigabytes each)")
    ap.add_argument("--out", default="conformance-golden", help="folder for the golden files (created)")
    ap.add_argument(
        "--all-steps",
        action="store_true",
        help="store the parameters after every AdamW step for the large cases too (default: only the tiny "
        "cases; float64, ~1 GB a step at 124M)",
    )
    ap.add_argument(
        "--candidate",
        metavar="BACKEND",
        help="instead: write a candidate file of this backend for each golden file in --out",
    )
    ap.add_argument(
        "--checks",
        default="",
        help="with --candidate: which of forward_backward,adamw,generate,kv_cache to run (default: all of the case's)",
    )
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    cases, named = _choose_cases(args)
    if args.candidate:
        return _candidates(args, out, cases, named)
    out.mkdir(parents=True, exist_ok=True)
    print(f"golden files of {len(cases)} case(s) from {REFERENCE} -> {out}/", flush=True)
    written = 0
    for case in cases:
        try:
            export_case(case, out, all_steps=args.all_steps)
            written += 1
        except CaseUnavailable as e:
            if named:
                raise UserError(f"--cases {case.name}: cannot be made on this machine ({e})") from None
            print(f"  {case.name}: skipped ({e})", flush=True)
    if not written:  # nothing to check against: say so, not "0 golden file(s)" and exit status 0
        raise UserError(f"--out {out}: no golden file written, every case was skipped on this machine (above)")
    print(f"{written} golden file(s) in {out}/", flush=True)
    return 0


def _candidates(args, out: Path, cases: list[Case], named: bool) -> int:
    try:
        backend = by_name(args.candidate)
    except KeyError:
        known = ", ".join(b.name for b in registry())
        raise UsageError(f"--candidate {args.candidate}: unknown backend; known: {known}") from None
    ok, why = backend.available()
    if not ok:
        raise UsageError(f"--candidate {backend.name}: cannot run on this machine ({why})")
    checks = args.checks.split(",") if args.checks else None
    allowed = ("forward_backward", "adamw", "generate", "kv_cache")
    if checks and not set(checks) <= set(allowed):
        unknown = sorted(set(checks) - set(allowed))
        raise UsageError(f"--checks: unknown check(s) {unknown}; known: {', '.join(allowed)}")
    if not named:  # every golden file there is
        cases = [c for c in cases if golden_path(out, c.name).is_file()] or cases
    written = 0
    for case in cases:
        path = golden_path(out, case.name)
        if not path.is_file():
            raise UserError(
                f"{path}: no golden file for case {case.name}: run `python -m conformance export "
                f"--cases {case.name} --out {out}` first"
            )
        golden = open_golden(path)
        ok, why = backend.supports(golden.config, int(np.prod(golden.file.entries["input.idx"].shape)))
        if not ok:
            if named:
                raise UsageError(f"--candidate {backend.name}: cannot run case {case.name} here ({why})")
            print(f"  {case.name}: skipped ({why})", flush=True)
            continue
        write_candidate(golden, backend, candidate_path(out, case.name, backend.name), checks)
        written += 1
    if not written:
        raise UserError(
            f"--candidate {backend.name}: no candidate file written, {backend.name} can run none of the cases (above)"
        )
    print(f"{written} candidate file(s) of {backend.name} in {out}/", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
