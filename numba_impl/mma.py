"""The tensor-core instruction, from Numba: one warp-wide TF32 matrix multiply-accumulate.

numba-cuda has no API for the tensor cores, so this module emits the one PTX instruction we need,

    mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32   D(16x8) = A(16x8) @ B(8x8) + C(16x8)

as LLVM inline assembly inside an ``@intrinsic``: the whole kernel that calls it is still one Numba
function, and ``cuda.compile_ptx`` produces its complete PTX on a machine without a GPU (so ptxas
can check it in CI). Everything else of a tensor-core matmul (tiling, loads, loops, epilogues)
stays in Python (kernels/matmul_3xtf32.py).

The 32 threads of a warp compute one 16x8x8 product together; each holds a few elements of each
matrix (its "fragment"). With lane = threadIdx.x % 32, g = lane // 4 (0..7) and t = lane % 4 (0..3),
the PTX ISA's layout for .tf32 m16n8k8 is:

    A (16 x 8, row-major "row"):   a0 = A[g, t]     a1 = A[g + 8, t]     a2 = A[g, t + 4]   a3 = A[g + 8, t + 4]
    B (8 x 8, column-major "col"): b0 = B[t, g]     b1 = B[t + 4, g]
    C, D (16 x 8):                 c0 = C[g, 2t]    c1 = C[g, 2t + 1]    c2 = C[g + 8, 2t]  c3 = C[g + 8, 2t + 1]

TF32 is float32 with the mantissa cut to 10 bits (8 exponent bits, 1 + 10 significant bits). The
tensor core reads the top 19 bits of each A and B register: a float32 passed in is effectively
truncated. `tf32_round` rounds properly (to nearest, ties away from zero: ``cvt.rna.tf32.f32``) and
clears the 13 low bits, so that ``x - tf32_round(x)`` is the exact remainder: the 3xTF32 split is
hi = tf32_round(x), lo = tf32_round(x - hi).

Products of two TF32 values (11 x 11 significant bits) are exact in float32; the sum into the
float32 accumulator is the tensor core's own (not IEEE round-to-nearest for every addition).

Fragment reads. `load_f32x2(arr, i)` / `load_f32x4(arr, i)` (numba_impl/vector.py's load2 / load4)
read arr[i : i + 2] / arr[i : i + 4] of a float32 array as one 8- / 16-byte load (``ld.v2.f32`` /
``ld.v4.f32``; in shared memory ``ld.shared``), so that a lane gets two or four of its fragment
values with one instruction. The caller guarantees that i is a multiple of 2 / 4 and that the array
is 16-byte aligned (``cuda.shared.array(..., alignment=16)``): the load asserts that alignment to
the compiler, and a misaligned address faults.

In the CUDA simulator (CI) all helpers are Python (the loads are plain reads that check the index
rule); `tf32_round` rounds the bits with NumPy, and `mma_tf32_m16n8k8` has each of the warp's 32
simulated threads publish its fragment in a per-block buffer, wait at a barrier, rebuild A, B and
C, compute its own four outputs, and wait again (two barriers per call, every thread of the block
must call it; blocks are whole warps).
"""

from __future__ import annotations

import numpy as np

from numba_impl._compat import SIMULATOR, WARP
from numba_impl.vector import load2 as load_f32x2
from numba_impl.vector import load4 as load_f32x4

MMA_PTX = (
    "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
    "{$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};"
)
TF32_LOW_BITS_MASK = 0xFFFFE000  # TF32 keeps the sign, the 8 exponent bits and the top 10 mantissa bits


if SIMULATOR:
    import threading

    def tf32_round(x):
        """x rounded to TF32 (nearest, ties away from zero), returned as a float32 with 13 zero low bits."""
        bits = np.float32(x).view(np.uint32)
        bits = np.uint32((int(bits) + 0x1000) & TF32_LOW_BITS_MASK)
        return bits.view(np.float32)

    def _tf32_truncate(values):
        """What the tensor core reads of a float32 register: the top 19 bits."""
        return (np.asarray(values, np.float32).view(np.uint32) & np.uint32(TF32_LOW_BITS_MASK)).view(np.float32)

    def mma_tf32_m16n8k8(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        """Simulator version of the warp-wide D = A @ B + C (see the module docstring for the layout).
        Products are exact (float64), the sum of the 8 products and C is rounded once to float32."""
        thread = threading.current_thread()
        block = thread._manager.__dict__
        exchange = block.setdefault("mma_exchange", np.zeros((1024, 10), dtype=np.float32))
        tid = thread.threadIdx.x
        exchange[tid] = (a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)
        thread.syncthreads()
        warp = exchange[tid & ~(WARP - 1) :][:WARP].astype(np.float32)
        A = np.zeros((16, 8), np.float32)
        B = np.zeros((8, 8), np.float32)
        C = np.zeros((16, 8), np.float32)
        for lane in range(WARP):
            g, t = lane // 4, lane % 4
            v = warp[lane]
            A[g, t], A[g + 8, t], A[g, t + 4], A[g + 8, t + 4] = v[0:4]
            B[t, g], B[t + 4, g] = v[4:6]
            C[g, 2 * t], C[g, 2 * t + 1], C[g + 8, 2 * t], C[g + 8, 2 * t + 1] = v[6:10]
        thread.syncthreads()  # the exchange buffer may be reused by the next call
        lane = tid % WARP
        g, t = lane // 4, lane % 4
        A64 = _tf32_truncate(A).astype(np.float64)
        B64 = _tf32_truncate(B).astype(np.float64)
        D = (A64 @ B64 + C).astype(np.float32)
        return D[g, 2 * t], D[g, 2 * t + 1], D[g + 8, 2 * t], D[g + 8, 2 * t + 1]

else:
    from llvmlite import ir
    from numba import types
    from numba.cuda.extending import intrinsic

    _f32 = ir.FloatType()
    _i32 = ir.IntType(32)

    @intrinsic
    def tf32_round(typingctx, x):
        """x rounded to TF32 (cvt.rna.tf32.f32: nearest, ties away from zero), low 13 bits cleared, as float32."""
        if x != types.float32:
            return None

        def codegen(context, builder, sig, args):
            cvt = ir.InlineAsm(ir.FunctionType(_i32, [_f32]), "cvt.rna.tf32.f32 $0, $1;", "=r,f")
            bits = builder.and_(builder.call(cvt, [args[0]]), ir.Constant(_i32, TF32_LOW_BITS_MASK))
            return builder.bitcast(bits, _f32)

        return types.float32(types.float32), codegen

    @intrinsic
    def mma_tf32_m16n8k8(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        """(d0, d1, d2, d3) = this lane's fragment of D = A @ B + C, one warp-wide m16n8k8 TF32 mma.

        All ten arguments are float32: the A and B fragments (already TF32 values, see `tf32_round`)
        and the C fragment; the layout is in the module docstring. Every lane of the warp must call it."""
        if any(arg != types.float32 for arg in (a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)):
            return None
        result = types.UniTuple(types.float32, 4)

        def codegen(context, builder, sig, args):
            fnty = ir.FunctionType(ir.LiteralStructType([_f32] * 4), [_i32] * 6 + [_f32] * 4)
            mma = ir.InlineAsm(fnty, MMA_PTX, "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f")
            operands = [builder.bitcast(v, _i32) for v in args[:6]] + list(args[6:])
            out = builder.call(mma, operands)
            values = [builder.extract_value(out, i) for i in range(4)]
            return context.make_tuple(builder, sig.return_type, values)

        return result(*([types.float32] * 10)), codegen


__all__ = ["MMA_PTX", "load_f32x2", "load_f32x4", "mma_tf32_m16n8k8", "tf32_round"]
