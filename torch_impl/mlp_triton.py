"""GPT-2's MLP with the backward of its GELU and of c_fc's bias in one Triton kernel (--mlp-impl triton).

    x       (M, C)   the MLP's input rows (M = B*T), bf16 or fp16 (the autocast dtype)
    w_fc    (H, C)   c_fc.weight (nn.Linear's (out, in) layout), b_fc (H,)
    w_proj  (C, H)   c_proj.weight, b_proj (C,)
  ->
    y       (M, C)   c_proj(gelu(c_fc(x)))

The plain MLP (model.py's MLP.forward) under torch.compile runs its backward (dy = dL/dy) as

    dg = dy w_proj                         cuBLAS                   reads dy, writes dg (M, H)
    dh = dg * gelu'(h)                     inductor, pointwise      reads dg and h, writes dh (M, H)
    db_fc = sum_rows dg * gelu'(h)         inductor, a reduction    reads dg and h again
    dW_proj, db_proj, dW_fc, dx            cuBLAS and reductions

On an H200 at GPT-2 124M's shapes (M = 65,536 rows per micro-step, H = 3,072) the two inductor kernels
are bound by memory, and the second reads the two (M, H) tensors the first has just read
(docs/training.md, "Measured"). Here one kernel does both:

    gelu_backward_bias_grad   dh = dg * gelu'(h), and each program's column sums of dh (db_fc's share
                              of its rows), in one pass over dg and h

and GELU's forward is a second kernel:

    gelu_forward              g = gelu(h), one pass over h, in place of inductor's kernel for F.gelu
                              (scripts/mlp_kernel_sweep.py times the two; docs/training.md, "Measured")

The matmuls stay cuBLAS's. The arithmetic is the plain path's: h and dg are the matmuls' outputs in the
autocast dtype, gelu and gelu' are computed in float32 and rounded to the autocast dtype, and db_fc sums
the rounded dh in float32. GELU is the tanh form; it and its derivative, written out:

    gelu(h)  = 0.5 h (1 + t),   t = tanh(u),   u = sqrt(2/pi) (h + 0.044715 h^3)
             = h s,                           s = sigmoid(2u) = (1 + t) / 2 = 1 / (1 + exp(-2u))
    gelu'(h) = 0.5 (1 + t) + 0.5 h (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 h^2)
             = s + 2 h s (1 - s) sqrt(2/pi) (1 + 3 * 0.044715 h^2)

(the forms in s are the ones computed: they lose no digits where h << 0 and t is -1 to float32).

A first form of this module (commit 03c8552) went further, as llm.c does with cuBLASLt's epilogues: c_fc's
matmul applied GELU to its tile before storing it, and the matmul dg = dy w_proj applied gelu' to its
tile, both Triton matmuls. On the H200 each was slower than cuBLAS's matmul and inductor's separate pass
together, at each of the four configurations its autotuner held (docs/training.md, "Measured"), so the
matmuls went back to cuBLAS.

Program (pid_m, pid_n) of the backward kernel owns ROWS rows and BLOCK_N columns, taken BLOCK_M rows at
a time. It adds each (BLOCK_M, BLOCK_N) tile of dh into a float32 tile of the same shape, and sums that
tile's columns once, at the end (summing each tile's columns as it comes costs a reduction across the
program's warps per tile); the sums go to row pid_m of a (cdiv(M, ROWS), H) float32 buffer, summed
afterwards (fixed order: the same db_fc on every run). Triton compiles both kernels for the GPU that
runs them; in Triton's interpreter (TRITON_INTERPRET=1, how CI runs them) they run on CPU tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from torch_impl.devices import fused_op_dtype, triton_unavailable_reason

try:  # CUDA builds of torch ship triton; CPU builds do not need it
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton
except ImportError as e:  # pragma: no cover - the message says what to install
    triton = _gelu_backward_bias_grad_kernel = _gelu_forward_kernel = None
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"
else:
    _IMPORT_ERROR = None

DTYPES = (torch.bfloat16, torch.float16)  # the activations' dtypes the kernel takes (autocast's)
SQRT_2_OVER_PI = 0.7978845608028654
# The launch configurations: the fastest of scripts/mlp_kernel_sweep.py's on an H200, the backward's 0.330 ms
# against inductor's 0.405 ms, the forward's 0.193 ms against inductor's 0.235 ms
# (docs/results/mlp-kernel-sweep-h200-315bece.json)
ROWS = 1024  # rows per program
BLOCK_M = 16  # rows held at a time
BLOCK_N = 128  # columns per program (a power of two)
NUM_WARPS = 8
GELU_BLOCK = 1024  # the forward kernel: elements per program
GELU_NUM_WARPS = 2


def unavailable_reason(device: torch.device | str) -> str | None:
    """None when the kernel can run on `device`; else why not (one line, for an error message)."""
    return triton_unavailable_reason("--mlp-impl triton", _gelu_backward_bias_grad_kernel, _IMPORT_ERROR, device)


if triton is not None:
    _K = tl.constexpr(SQRT_2_OVER_PI)  # globals a kernel reads must be constexpr

    @triton.jit
    def _gelu_backward_bias_grad_kernel(
        dg_ptr,  # (M, N) dL/dg, g = gelu(h)
        h_ptr,  # (M, N) the pre-activation
        dh_ptr,  # (M, N) out: dg * gelu'(h), in h's dtype
        db_ptr,  # (cdiv(M, ROWS), N) out, float32: column sums of dh over each program's rows (only with DBIAS)
        M, N,
        stride_dg, stride_h, stride_dh,
        DBIAS: tl.constexpr, ROWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        tl.static_assert(ROWS % BLOCK_M == 0)  # else the last tile would reach into the next program's rows
        pid_m, pid_n = tl.program_id(0), tl.program_id(1)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # the tiles of dh, added up
        for start in range(pid_m * ROWS, min(pid_m * ROWS + ROWS, M), BLOCK_M):
            rows = start + tl.arange(0, BLOCK_M)
            inside = (rows[:, None] < M) & (cols[None, :] < N)
            r64 = rows.to(tl.int64)[:, None]
            dg = tl.load(dg_ptr + r64 * stride_dg + cols[None, :], mask=inside, other=0.0).to(tl.float32)
            h = tl.load(h_ptr + r64 * stride_h + cols[None, :], mask=inside, other=0.0).to(tl.float32)
            # with t = tanh(u): 1 + t = 2 s and 1 - t = 2 (1 - s), s = sigmoid(2u), so nothing cancels
            # where h << 0 (1 + t computed from t would lose every digit there)
            e = tl.exp(tl.minimum(-2.0 * _K * (h + 0.044715 * h * h * h), 80.0))  # exp(-2u), at most ~5.5e34
            s = 1.0 / (1.0 + e)  # (1 + t) / 2
            dgelu = s + 2.0 * h * s * (e * s) * _K * (1.0 + 3.0 * 0.044715 * h * h)
            dh = (dg * dgelu).to(dh_ptr.dtype.element_ty)
            tl.store(dh_ptr + r64 * stride_dh + cols[None, :], dh, mask=inside)
            if DBIAS:
                acc += dh.to(tl.float32)  # masked rows loaded 0: they add 0
        if DBIAS:
            tl.store(db_ptr + pid_m * N + cols, tl.sum(acc, axis=0), mask=cols < N)

    @triton.jit
    def _gelu_forward_kernel(
        h_ptr,  # (n,) the pre-activation, contiguous
        g_ptr,  # (n,) out: gelu(h), in h's dtype
        n,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < n
        h = tl.load(h_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        e = tl.exp(tl.minimum(-2.0 * _K * (h + 0.044715 * h * h * h), 80.0))  # exp(-2u), as in the backward
        tl.store(g_ptr + offs, (h / (1.0 + e)).to(g_ptr.dtype.element_ty), mask=inside)  # h s

    @triton_op("gpt2_three_ways::gelu_forward", mutates_args={})
    def _gelu_forward(h: torch.Tensor) -> torch.Tensor:
        g = torch.empty_like(h)
        wrap_triton(_gelu_forward_kernel)[(triton.cdiv(h.numel(), GELU_BLOCK),)](
            h, g, h.numel(), BLOCK=GELU_BLOCK, num_warps=GELU_NUM_WARPS
        )
        return g

    @triton_op("gpt2_three_ways::gelu_backward_bias_grad", mutates_args={})
    def _gelu_backward_bias_grad(
        dg: torch.Tensor, h: torch.Tensor, need_bias_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        M, N = h.shape
        dh = torch.empty_like(h)
        tiles_m = triton.cdiv(M, ROWS)
        partial = torch.empty((tiles_m if need_bias_grad else 0, N), dtype=torch.float32, device=h.device)
        wrap_triton(_gelu_backward_bias_grad_kernel)[(tiles_m, triton.cdiv(N, BLOCK_N))](
            dg, h, dh, partial, M, N, dg.stride(0), h.stride(0), dh.stride(0),
            DBIAS=need_bias_grad, ROWS=ROWS, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=NUM_WARPS,
        )  # fmt: skip
        return dh, partial


def gelu_forward(h: torch.Tensor) -> torch.Tensor:
    """g = gelu(h), the tanh form, in h's dtype (computed in float32), for h of any shape."""
    return _gelu_forward(h.contiguous())


def gelu_backward_bias_grad(
    dg: torch.Tensor, h: torch.Tensor, need_bias_grad: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dh, db) = (dg * gelu'(h) in h's dtype, the column sums of dh in float32, or None) for dg, h (M, H)
    with contiguous rows."""
    if dg.shape != h.shape or dg.dim() != 2 or dg.dtype != h.dtype:
        raise ValueError(f"dg {tuple(dg.shape)} {dg.dtype} and h {tuple(h.shape)} {h.dtype}: need one (M, H) "
                         "shape and dtype")  # fmt: skip
    dg, h = (t if t.stride(1) == 1 else t.contiguous() for t in (dg, h))
    dh, partial = _gelu_backward_bias_grad(dg, h, need_bias_grad)
    return dh, (partial.sum(0) if need_bias_grad else None)


class FusedMLP(torch.autograd.Function):
    """y = c_proj(gelu(c_fc(x))) for x (M, C): the forward as model.py's lines with GELU the kernel above,
    the backward written out with the kernel above for GELU and db_fc. All inputs in one dtype (bf16 or
    fp16); so are the gradients."""

    @staticmethod
    def forward(ctx, x, w_fc, b_fc, w_proj, b_proj):
        h = F.linear(x, w_fc, b_fc)  # (M, H)
        g = gelu_forward(h)  # (M, H)
        y = F.linear(g, w_proj, b_proj)  # (M, C)
        ctx.save_for_backward(x, w_fc, h, g, w_proj)
        ctx.has_bias = (b_fc is not None, b_proj is not None)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w_fc, h, g, w_proj = ctx.saved_tensors
        has_b_fc, has_b_proj = ctx.has_bias
        dy = dy.contiguous()
        dw_proj = dy.t() @ g  # (C, H)
        db_proj = dy.sum(0) if has_b_proj else None  # (C,)
        dg = dy @ w_proj  # (M, H)
        dh, db_fc = gelu_backward_bias_grad(dg, h, has_b_fc)  # (M, H), (H,) float32
        dw_fc = dh.t() @ x  # (H, C)
        dx = dh @ w_fc  # (M, C)
        return dx, dw_fc, (db_fc.to(dh.dtype) if has_b_fc else None), dw_proj, db_proj


def fused_mlp(
    x: torch.Tensor, w_fc: torch.Tensor, b_fc: torch.Tensor | None, w_proj: torch.Tensor, b_proj: torch.Tensor | None
) -> torch.Tensor:
    """c_proj(gelu(c_fc(x))) for x (..., C), the weights in nn.Linear's layout; under autocast the inputs
    are cast to its dtype, as F.linear's would be (their gradients flow back through the casts)."""
    reason = unavailable_reason(x.device)
    if reason:
        raise RuntimeError(reason)
    dtype = fused_op_dtype("--mlp-impl", x, DTYPES)
    shape = x.shape
    cast = [None if t is None else t.to(dtype) for t in (x.reshape(-1, shape[-1]), w_fc, b_fc, w_proj, b_proj)]
    with torch.autocast(x.device.type, enabled=False):
        y = FusedMLP.apply(*cast)
    return y.reshape(*shape[:-1], y.shape[-1])
