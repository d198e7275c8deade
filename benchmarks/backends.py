"""The backends a benchmark runs on, and the one place that says how to add one.

A backend is a name, a device, a dtype and a family; the family's module
(impl_numpy / impl_torch / impl_numba) turns (backend, op, inputs) into a callable to time.
Adding a backend = one `Backend(...)` line in BACKENDS (and, for a new family, one
impl_*.py module with `make_op` and `make_model`).

    numpy-f32, numpy-f64           the NumPy reference (reference/), on the CPU
    torch-cpu-f32, torch-cpu-bf16  torch's CPU kernels; bf16 = bfloat16 inputs / autocast
    torch-cuda-f32, torch-cuda-bf16
    numba-cuda-f32                 the Numba CUDA kernels (numba_impl/), float32 on the CUDA cores
    numba-cuda-f32-graphs          the same kernels, each whole-model step replayed as one CUDA graph
                                   (whole-model benchmarks only: the ops are numba-cuda-f32's)
    numba-cuda-3xtf32              the Numba model with its matmuls on the tensor cores (3xTF32:
                                   float32 accuracy from three TF32 products); whole model, the
                                   matmul op and the matmul shapes

A backend's `variant` selects one of these Numba configurations; `skip_reason(size, what)` says
which benchmarks (what = "model", "op:<op>", "attention", "matmul") a variant runs.
Ratios are taken against the torch float32 backend of the same device (BASELINES).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import platform


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    family: str  # "numpy" | "torch" | "numba": which impl_<family>.py builds its callables
    device: str  # "cpu" | "cuda"
    dtype: str  # "float32" | "float64" | "bfloat16": what the math runs in
    variant: str = ""  # Numba only: "" (eager float32), "graphs" or "3xtf32"

    def impl(self):
        """The module that builds this backend's callables (imported on first use)."""
        return importlib.import_module(f"benchmarks.impl_{self.family}")

    def skip_reason(self, size, what: str = "model") -> str | None:
        """Why this backend cannot run benchmark kind `what` at `size` here, or None when it can."""
        return _skip_reason(self.family, self.device, size.name, size.gpu_only) or _variant_skip(self.variant, what)

    def problem(self) -> str | None:
        """Why this backend cannot run here at all; "simulator" when Numba runs in the CUDA simulator."""
        return _family_problem(self.family, self.device)

    def sync(self) -> None:
        """Wait until the device has finished everything queued (a no-op on the CPU)."""
        if self.device == "cuda":
            self.impl().synchronize()

    def device_name(self) -> str:
        return self.impl().device_name() if self.device == "cuda" else cpu_name()


BACKENDS = [
    Backend("numpy-f32", "numpy", "cpu", "float32"),
    Backend("numpy-f64", "numpy", "cpu", "float64"),
    Backend("torch-cpu-f32", "torch", "cpu", "float32"),
    Backend("torch-cpu-bf16", "torch", "cpu", "bfloat16"),
    Backend("torch-cuda-f32", "torch", "cuda", "float32"),
    Backend("torch-cuda-bf16", "torch", "cuda", "bfloat16"),
    Backend("numba-cuda-f32", "numba", "cuda", "float32"),
    Backend("numba-cuda-f32-graphs", "numba", "cuda", "float32", variant="graphs"),
    Backend("numba-cuda-3xtf32", "numba", "cuda", "float32", variant="3xtf32"),
]
BY_NAME = {b.name: b for b in BACKENDS}

# The backend each device's ratios are taken against.
BASELINES = {"cpu": "torch-cpu-f32", "cuda": "torch-cuda-f32"}

# CPU backends at the GPU size would take minutes per call: not run.
CPU_SIZES = ("tiny", "124m-cpu")


@functools.cache
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def _family_problem(family: str, device: str) -> str | None:
    """Why a family/device cannot run at all here (None = it can), checked once per process."""
    if family == "numpy":
        return None
    if family == "torch":
        try:
            import torch
        except ImportError:
            return "torch is not installed"
        if device == "cuda" and not torch.cuda.is_available():
            return "needs a CUDA GPU; none is visible to torch"
        return None
    if family == "numba":
        try:
            from numba_impl._compat import SIMULATOR, cuda
        except ImportError as e:
            return f"numba_impl cannot be imported ({e})"
        if SIMULATOR:
            return "simulator"
        if not cuda.is_available():
            return "needs a CUDA GPU visible to Numba (NUMBA_ENABLE_CUDASIM=1 runs the tiny size in the simulator)"
        return None
    return f"unknown backend family {family!r}"


# Which benchmark kinds each Numba variant runs (the others would time the plain float32 kernels again).
VARIANT_RUNS = {"graphs": ("model",), "3xtf32": ("model", "op:matmul", "matmul")}


@functools.cache
def variant_problem(variant: str) -> str | None:
    """Why a Numba variant cannot run in this checkout (None = it can)."""
    if variant == "3xtf32":
        import inspect

        try:
            import numba_impl.kernels.matmul_3xtf32  # noqa: F401
            from numba_impl.model import NumbaGPT2
        except ImportError as e:
            return f"numba_impl has no 3xTF32 matmul here ({e})"
        if "matmul" not in inspect.signature(NumbaGPT2).parameters:
            return "NumbaGPT2 takes no matmul= option yet (the 3xTF32 backend is not wired into the model)"
    return None


def _variant_skip(variant: str, what: str) -> str | None:
    if not variant:
        return None
    if what not in VARIANT_RUNS.get(variant, ()):
        runs = ", ".join(VARIANT_RUNS[variant])
        return f"the {variant} variant runs {runs} only (elsewhere it would time the float32 kernels again)"
    return variant_problem(variant)


def numba_simulated() -> bool:
    return _family_problem("numba", "cuda") == "simulator"


def _skip_reason(family: str, device: str, size: str, gpu_only: bool) -> str | None:
    problem = _family_problem(family, device)
    if problem == "simulator":
        # The CUDA simulator runs one OS thread per GPU thread: fine for the tiny smoke size only.
        return None if size == "tiny" else "Numba runs in the CUDA simulator here: only the tiny size"
    if problem:
        return problem
    if device == "cpu" and size not in CPU_SIZES:
        return f"CPU backends are not run at {size} (minutes per call)"
    return None
