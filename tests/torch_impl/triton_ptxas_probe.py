"""Compile torch_impl/cross_entropy_triton.py's kernels for sm_90a (H100/H200) without a GPU and print
ptxas's resource report (registers, stack, spills): the two-pass kernel in both of its forms (with and
without the gradient), and the whole-row kernel for GPT-2's padded head (50,304 columns) at its warps.
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

WHOLE_ROW_SIGNATURE = {
    "z_ptr": "*bf16", "targets_ptr": "*i64", "n_valid_ptr": "*fp32", "loss_ptr": "*fp32", "dz_ptr": "*bf16",
    "z_row_stride": "i32", "dz_row_stride": "i32", "V": "i32", "Vp": "i32",
    "P0": "constexpr", "P1": "constexpr", "P2": "constexpr",
}  # fmt: skip
# what the launch specializes on the GPU: pointers, the row strides and Vp = 50,304 are multiples of 16
ALIGNED = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(WHOLE_ROW_SIGNATURE)
           if name in ("z_ptr", "dz_ptr", "z_row_stride", "dz_row_stride", "Vp")}  # fmt: skip
assert sum(ce.row_pieces(50304)) <= ce.WHOLE_ROW_MAX

FORMS = [
    (f"WRITE_GRAD={write_grad}", ASTSource(ce._cross_entropy_rows_kernel, SIGNATURE,
                                           {"BLOCK": ce.BLOCK, "WRITE_GRAD": write_grad}), ce.NUM_WARPS)
    for write_grad in (True, False)
] + [
    ("whole rows", ASTSource(ce._cross_entropy_whole_rows_kernel, WHOLE_ROW_SIGNATURE,
                             dict(zip(("P0", "P1", "P2"), ce.row_pieces(50304), strict=True)), attrs=ALIGNED),
     ce.WHOLE_ROW_NUM_WARPS),
]  # fmt: skip

for name, src, num_warps in FORMS:
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(kernel.asm["ptx"])
        f.flush()
        report = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", f.name, "-o", "/dev/null"],
                                capture_output=True, text=True)  # fmt: skip
    print(f"{name}:\n{report.stdout}{report.stderr}")
    if report.returncode:
        sys.exit(report.returncode)
