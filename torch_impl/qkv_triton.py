"""Attention's input projection, whose backward gathers dq, dk, dv and c_attn's bias gradient in one Triton
kernel (--qkv-impl triton).

    x       (M, C)   ln_1's output rows (M = B*T), bf16 or fp16 (the autocast dtype)
    w       (W, C)   c_attn.weight (nn.Linear's (out, in) layout), W = (NH + 2 NKV) HS; b (W,) or None
  ->
    q       (B, NH, T, HS)    views of qkv = x w^T + b (M, W): its first NH HS columns, split into heads
    k, v    (B, NKV, T, HS)   the next NKV HS columns, and the last

The plain attention (model.py's CausalSelfAttention.forward) splits c_attn's output into q, k, v with
views; its backward, under torch.compile, runs

    dqkv = cat(dq, dk, dv)                 inductor, pointwise   reads dq, dk, dv (B, heads, T, HS), writes
                                                                 dqkv (M, W), the heads merged back
    db = sum_rows dqkv                     inductor, a reduction reads dq, dk, dv again
    dw = dqkv^T x,  dx = dqkv w            cuBLAS

On an H200 at GPT-2 124M's shapes (M = 65,536 rows per micro-step, W = 2,304) the two inductor kernels are
bound by memory, and the second reads what the first has just read (docs/training.md, "Measured"). Here
one kernel does both:

    qkv_backward_gather   dqkv from dq, dk, dv, and each program's column sums of it (db's share of its
                          rows), in one pass over dq, dk and dv

The forward is F.linear, cuBLAS's matmul with the bias in its epilogue, as the plain path's; the matmuls
of the backward stay cuBLAS's. The arithmetic is the plain path's: dqkv is dq, dk, dv copied (nothing
rounds), and db sums it in float32, rounded to the autocast dtype as autograd's bias gradient is.

Column p HS + d of dqkv is element d of head p of the three tensors taken one after the other (q's NH
heads, then k's NKV, then v's): program (pid_m, p) owns ROWS rows of head p, taken BLOCK_M rows at a
time, each row's HS elements contiguous in both tensors (held as BLOCK_D, HS rounded up to a power of two,
the rest masked; GPT-2's HS is 64). dk and dv are read with one set of strides: when theirs differ, both
are first copied to contiguous tensors. It adds each
(BLOCK_M, HS) tile into a float32 tile of the same shape, sums that tile's columns once, at the end, and
writes them to row pid_m of a (cdiv(M, ROWS), W) float32 buffer, summed afterwards (fixed order: the same
db on every run). Triton compiles it for the GPU that runs it; in Triton's interpreter (TRITON_INTERPRET=1,
how CI runs it) the same kernel runs on CPU tensors.
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
    triton = _qkv_backward_gather_kernel = None
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"
else:
    _IMPORT_ERROR = None

DTYPES = (torch.bfloat16, torch.float16)  # the activations' dtypes the kernel takes (autocast's)
# The launch configuration (rows per program, rows held at a time, warps); scripts/qkv_kernel_sweep.py
# times the others
ROWS = 256
BLOCK_M = 32
NUM_WARPS = 4


def unavailable_reason(device: torch.device | str) -> str | None:
    """None when the kernel can run on `device`; else why not (one line, for an error message)."""
    return triton_unavailable_reason("--qkv-impl triton", _qkv_backward_gather_kernel, _IMPORT_ERROR, device)


if triton is not None:

    @triton.jit
    def _qkv_backward_gather_kernel(
        dq_ptr,  # (B, NH, T, HS) dL/dq, last dim contiguous
        dk_ptr, dv_ptr,  # (B, NKV, T, HS) dL/dk and dL/dv, one set of strides for both, last dim contiguous
        dqkv_ptr,  # (M, W) out, M = B T, W = (NH + 2 NKV) HS: the heads merged, q's columns, k's, v's
        db_ptr,  # (cdiv(M, ROWS), W) out, float32: column sums of dqkv over each program's rows (only with DBIAS)
        M, T, NH, NKV,
        sq_b, sq_h, sq_t,  # dq's strides (elements)
        skv_b, skv_h, skv_t,  # dk's and dv's
        stride_out,
        HS: tl.constexpr, DBIAS: tl.constexpr, ROWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        tl.static_assert(ROWS % BLOCK_M == 0)  # else the last tile would reach into the next program's rows
        pid_m, p = tl.program_id(0), tl.program_id(1)  # p: the head, counted across q, k and v
        # (the strides as int64 in every branch: the branches must yield one type, and a stride of 2^31
        # or more arrives as int64)
        if p < NH:
            src, head = dq_ptr, p
            s_b, s_h, s_t = sq_b.to(tl.int64), sq_h.to(tl.int64), sq_t.to(tl.int64)
        elif p < NH + NKV:
            src, head = dk_ptr, p - NH
            s_b, s_h, s_t = skv_b.to(tl.int64), skv_h.to(tl.int64), skv_t.to(tl.int64)
        else:
            src, head = dv_ptr, p - NH - NKV
            s_b, s_h, s_t = skv_b.to(tl.int64), skv_h.to(tl.int64), skv_t.to(tl.int64)
        d = tl.arange(0, BLOCK_D)
        in_d = d < HS
        W = (NH + 2 * NKV) * HS
        acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)  # the tiles of dqkv, added up
        for start in range(pid_m * ROWS, min(pid_m * ROWS + ROWS, M), BLOCK_M):
            rows = start + tl.arange(0, BLOCK_M)  # rows of dqkv: token t of sequence b is row b T + t
            inside = (rows[:, None] < M) & in_d[None, :]
            r64 = rows.to(tl.int64)
            src_row = (r64 // T) * s_b + (r64 % T) * s_t + head * s_h  # (BLOCK_M,)
            g = tl.load(src + src_row[:, None] + d[None, :], mask=inside, other=0.0)
            tl.store(dqkv_ptr + r64[:, None] * stride_out + p * HS + d[None, :], g, mask=inside)
            if DBIAS:
                acc += g.to(tl.float32)  # masked rows loaded 0: they add 0
        if DBIAS:
            tl.store(db_ptr + pid_m * W + p * HS + d, tl.sum(acc, axis=0), mask=in_d)

    @triton_op("gpt2_three_ways::qkv_backward_gather", mutates_args={})
    def _qkv_backward_gather(
        dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, need_bias_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, NH, T, HS = dq.shape
        NKV = dk.shape[1]
        M, W = B * T, (NH + 2 * NKV) * HS
        dqkv = torch.empty((M, W), dtype=dq.dtype, device=dq.device)
        tiles_m = triton.cdiv(M, ROWS)
        partial = torch.empty((tiles_m if need_bias_grad else 0, W), dtype=torch.float32, device=dq.device)
        wrap_triton(_qkv_backward_gather_kernel)[(tiles_m, NH + 2 * NKV)](
            dq, dk, dv, dqkv, partial, M, T, NH, NKV,
            dq.stride(0), dq.stride(1), dq.stride(2), dk.stride(0), dk.stride(1), dk.stride(2), dqkv.stride(0),
            HS=HS, DBIAS=need_bias_grad, ROWS=ROWS, BLOCK_M=BLOCK_M, BLOCK_D=triton.next_power_of_2(HS),
            num_warps=NUM_WARPS,
        )  # fmt: skip
        return dqkv, partial


def qkv_backward_gather(
    dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, need_bias_grad: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dqkv, db) for dq (B, NH, T, HS), dk and dv (B, NKV, T, HS) of one dtype: dqkv (M, W) = the heads
    merged and the three concatenated (what the backward of the split into heads computes), db (W,) its
    column sums in float32 (None without need_bias_grad)."""
    same_b_t_hs = dq.dim() == dk.dim() == 4 and (dq.shape[0], *dq.shape[2:]) == (dk.shape[0], *dk.shape[2:])
    if not same_b_t_hs or dk.shape != dv.shape:
        raise ValueError(
            f"dq {tuple(dq.shape)}, dk {tuple(dk.shape)}, dv {tuple(dv.shape)}: need dq (B, NH, T, HS) and dk, "
            "dv (B, NKV, T, HS)"
        )
    if not dq.dtype == dk.dtype == dv.dtype:
        raise ValueError(f"dq {dq.dtype}, dk {dk.dtype}, dv {dv.dtype}: need one dtype")
    dq = dq if dq.stride(3) == 1 else dq.contiguous()
    if dk.stride() != dv.stride() or dk.stride(3) != 1:  # the kernel reads dk and dv with one set of strides
        dk, dv = dk.contiguous(), dv.contiguous()
    dqkv, partial = _qkv_backward_gather(dq, dk, dv, need_bias_grad)
    return dqkv, (partial.sum(0) if need_bias_grad else None)


class QKVProjection(torch.autograd.Function):
    """(q, k, v) = c_attn(x) split into heads, for x (M, C) of B sequences of T tokens: the forward as
    model.py's lines, the backward written out with the kernel above. All inputs in one dtype (bf16 or
    fp16); so are the gradients."""

    @staticmethod
    def forward(ctx, x, w, b, T: int, n_head: int, n_kv_head: int):
        M, W = x.shape[0], w.shape[0]
        B, HS = M // T, W // (n_head + 2 * n_kv_head)
        qkv = F.linear(x, w, b)  # (M, W)
        q, k, v = qkv.split([n_head * HS, n_kv_head * HS, n_kv_head * HS], dim=1)
        ctx.save_for_backward(x, w)
        return (
            q.view(B, T, n_head, HS).transpose(1, 2),  # (B, NH, T, HS)
            k.view(B, T, n_kv_head, HS).transpose(1, 2),  # (B, NKV, T, HS)
            v.view(B, T, n_kv_head, HS).transpose(1, 2),
        )

    @staticmethod
    def backward(ctx, dq, dk, dv):
        x, w = ctx.saved_tensors
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        dqkv, db = qkv_backward_gather(dq, dk, dv, need_db)  # (M, W), (W,) float32 or None
        dw = dqkv.t() @ x if need_dw else None  # (W, C)
        dx = dqkv @ w if need_dx else None  # (M, C)
        return dx, dw, (db.to(dqkv.dtype) if need_db else None), None, None, None


def qkv_projection(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, n_head: int, n_kv_head: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q (B, NH, T, HS), k, v (B, NKV, T, HS)) = c_attn(x) split into heads, for x (B, T, C) and c_attn's
    weight (W, C) and bias (W,) or None; under autocast x, w and b are cast to its dtype, as F.linear's
    would be (their gradients flow back through the casts)."""
    reason = unavailable_reason(x.device)
    if reason:
        raise RuntimeError(reason)
    dtype = fused_op_dtype("--qkv-impl", x, DTYPES)
    B, T, C = x.shape
    if w.shape[1] != C or w.shape[0] % (n_head + 2 * n_kv_head) or (b is not None and b.shape != w.shape[:1]):
        raise ValueError(
            f"x {tuple(x.shape)}, w {tuple(w.shape)}, b {None if b is None else tuple(b.shape)}: need w "
            f"((NH + 2 NKV) HS, C) = (({n_head} + 2 x {n_kv_head}) HS, {C}) and b of w's rows"
        )
    cast = [None if t is None else t.to(dtype) for t in (x.reshape(B * T, C), w, b)]
    with torch.autocast(x.device.type, enabled=False):
        return QKVProjection.apply(*cast, T, n_head, n_kv_head)
