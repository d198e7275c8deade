"""Compile torch_impl/cross_entropy_triton.py's kernel for sm_90a (H100/H200) without a GPU and print
ptxas's resource report (registers, stack, spills) for both of its forms (with and without the gradient).
Run by tests/torch_impl/test_cross_entropy_triton.py, in a process without TRITON_INTERPRET."""

from __future__ import annotations

import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

from torch_impl import cross_entropy_triton as ce

SIGNATURE = {
    "z_ptr": "*bf16", "targets_ptr": "*i64", "n_valid_ptr": "*fp32", "loss_ptr": "*fp32", "dz_ptr": "*bf16",
    "z_row_stride": "i32", "dz_row_stride": "i32", "R": "i32", "V": "i32", "Vp": "i32",
    "BLOCK": "constexpr", "WRITE_GRAD": "constexpr",
}  # fmt: skip

for write_grad in (True, False):
    src = ASTSource(ce._cross_entropy_rows_kernel, SIGNATURE, {"BLOCK": ce.BLOCK, "WRITE_GRAD": write_grad})
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": ce.NUM_WARPS})
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(kernel.asm["ptx"])
        f.flush()
        report = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", f.name, "-o", "/dev/null"],
                                capture_output=True, text=True)  # fmt: skip
    print(f"WRITE_GRAD={write_grad}:\n{report.stdout}{report.stderr}")
    if report.returncode:
        sys.exit(report.returncode)
