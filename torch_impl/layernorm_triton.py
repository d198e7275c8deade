"""A residual add and the LayerNorm after it as one op, whose backward is one Triton kernel (--norm-impl triton).

    x       (M, C)  the residual stream before the add (M = B*T rows), float32: the parameters' dtype
    delta   (M, C)  what attention or the MLP adds to it: its c_proj's matmul, bf16 under autocast
    b_proj  (C,)    c_proj's bias (float32, or None), added here rather than in the matmul
    weight  (C,)    the LayerNorm's; bias (C,) or None
  ->
    x_new   (M, C)  x + delta + b_proj, float32: the residual stream after the add
    y       (M, C)  layer_norm(x_new) * weight + bias, in the autocast dtype when autocast is on (the
                    next matmul's input), else in x_new's

model.py's blocks are x = x + attn(ln_1(x)), then x = x + mlp(ln_2(x)). Every LayerNorm but block 0's
ln_1 comes straight after a residual add: ln_2 after attention's, the next block's ln_1 (or ln_f) after
the MLP's. With dy = dL/dy and dres = dL/dx_new (the gradient that comes back along the residual stream),
the backward of the pair is

    xhat     = (x_new - mean) * rstd                                     mean, rstd: the forward's, per row
    dxhat    = dy * weight
    dx_new   = dres + rstd * (dxhat - mean_c(dxhat) - xhat * mean_c(dxhat * xhat))    mean_c: over C
    dL/dx    = dx_new,   dL/ddelta = dx_new in delta's dtype (the input of c_proj's backward matmuls)
    dweight  = sum_rows dy * xhat,   dbias = sum_rows dy,   db_proj = sum_rows dx_new

The plain model under torch.compile runs this as three kernels per LayerNorm (docs/training.md,
"Measured"): dx_new, fused with dy's cast to float32 and the add of dres; a second that finishes the
column sums for dweight and dbias, split over blocks of rows; and the cast of dx_new to bf16 for
c_proj; c_proj's bias gradient is a fourth, a column sum over the bf16 copy. Each reads (M, C) tensors
the one before has just read. Here one kernel reads x_new, dy and dres once and writes dx_new, its copy
in delta's dtype, and each program's column sums for dweight, dbias and db_proj.

c_proj's bias is added in float32 with the residual (x + delta + b_proj) where the plain model adds it
in bf16 in the matmul's epilogue and rounds (x + bf16(x W + b_proj)): a rounding step of bf16 apart at
most, and its gradient sums dx_new in float32 where the plain one sums dx_new's bf16 copy.

Under torch.compile it is for bf16 autocast, as the trainer runs it (the trainer refuses --norm-impl
triton for a float32 run): compiled without autocast, where y and x_new are both float32, torch 2.11 on an
H200 handed the backward zeros for dy (and so dweight = dbias = 0, dx_new = dres), with or without
aten's native_layer_norm in the forward; why is not established, so that case is refused, not worked
around. Without torch.compile it computes float32 too (CI tests it so).

The forward stays torch's (aten's native_layer_norm, which torch.compile fuses with the add and the cast
as before); it returns y already in the autocast dtype, so that dy comes back in that dtype and the
kernel casts it as it reads it. The arithmetic is the plain path's: float32 throughout, dy as the
matmul gave it, the same formula as torch's layer_norm backward; only the order of the float32 sums
differs.

Program p of the kernel owns ROWS rows, taken BLOCK_M rows at a time, each row whole (BLOCK_C, a power of
two >= C, columns). It adds each (BLOCK_M, BLOCK_C) tile of dy * xhat, dy and dx_new into a float32
tile of the same shape and sums those tiles' columns once, at the end (summing each tile's columns as it
comes costs a reduction across the program's warps per tile); the sums go to row p of (cdiv(M, ROWS), C)
float32 buffers, summed afterwards in a fixed order (the same dweight on every run). Triton compiles it
for the GPU that runs it; in Triton's interpreter (TRITON_INTERPRET=1, how CI runs it) the same kernel
runs on CPU tensors.
"""

from __future__ import annotations

import torch

from torch_impl.devices import triton_unavailable_reason

try:  # CUDA builds of torch ship triton; CPU builds do not need it
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton
except ImportError as e:  # pragma: no cover - the message says what to install
    triton = _layernorm_backward_kernel = None
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"
else:
    _IMPORT_ERROR = None

# The launch configuration: the fastest of scripts/layernorm_kernel_sweep.py's 48 on an H200, 0.258 ms per
# (65,536 x 768) backward with c_proj's bias gradient, against inductor's 0.385 ms for the same
# (docs/results/layernorm-kernel-sweep-h200-315bece.json)
ROWS = 64  # rows per program
BLOCK_M = 2  # rows held at a time
NUM_WARPS = 4


def unavailable_reason(device: torch.device | str) -> str | None:
    """None when the kernel can run on `device`; else why not (one line, for an error message)."""
    return triton_unavailable_reason("--norm-impl triton", _layernorm_backward_kernel, _IMPORT_ERROR, device)


if triton is not None:

    @triton.jit
    def _layernorm_backward_kernel(
        dy_ptr,  # (M, C) dL/dy, any float dtype
        x_ptr,  # (M, C) float32, x_new
        mean_ptr, rstd_ptr,  # (M,) float32, the forward's
        w_ptr,  # (C,) float32
        dres_ptr,  # (M, C) float32, dL/dx_new along the residual stream (read only with HAS_DRES)
        dx_ptr,  # (M, C) float32 out: dx_new
        dlow_ptr,  # (M, C) out: dx_new in delta's dtype (written only with WRITE_LOW)
        dw_ptr, db_ptr,  # (cdiv(M, ROWS), C) float32 out: column sums of dy * xhat and of dy, per program
        dp_ptr,  # (cdiv(M, ROWS), C) float32 out: column sums of dx_new, per program (only with SUM_DX)
        M, C,
        stride_dy, stride_x, stride_dres, stride_dx, stride_dlow,
        HAS_DRES: tl.constexpr, WRITE_LOW: tl.constexpr, SUM_DX: tl.constexpr,
        ROWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        tl.static_assert(ROWS % BLOCK_M == 0)  # else the last tile would reach into the next program's rows
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK_C)
        in_c = cols < C
        w = tl.load(w_ptr + cols, mask=in_c, other=0.0).to(tl.float32)
        dw_acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)  # the tiles of dy * xhat, added up
        db_acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)  # of dy
        dp_acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)  # of dx_new
        for start in range(pid * ROWS, min(pid * ROWS + ROWS, M), BLOCK_M):
            rows = start + tl.arange(0, BLOCK_M)
            in_r = rows < M
            inside = in_r[:, None] & in_c[None, :]
            r64 = rows.to(tl.int64)[:, None]
            x = tl.load(x_ptr + r64 * stride_x + cols[None, :], mask=inside, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + r64 * stride_dy + cols[None, :], mask=inside, other=0.0).to(tl.float32)
            mean = tl.load(mean_ptr + rows, mask=in_r, other=0.0)
            rstd = tl.load(rstd_ptr + rows, mask=in_r, other=0.0)
            xhat = tl.where(inside, (x - mean[:, None]) * rstd[:, None], 0.0)  # (BLOCK_M, BLOCK_C)
            dxhat = dy * w[None, :]
            mean_dxhat = tl.sum(dxhat, axis=1) / C  # (BLOCK_M,)
            mean_dxhat_xhat = tl.sum(dxhat * xhat, axis=1) / C
            dx = (dxhat - mean_dxhat[:, None] - xhat * mean_dxhat_xhat[:, None]) * rstd[:, None]
            if HAS_DRES:
                dx += tl.load(dres_ptr + r64 * stride_dres + cols[None, :], mask=inside, other=0.0)
            tl.store(dx_ptr + r64 * stride_dx + cols[None, :], dx, mask=inside)
            if WRITE_LOW:
                tl.store(dlow_ptr + r64 * stride_dlow + cols[None, :], dx.to(dlow_ptr.dtype.element_ty), mask=inside)
            dw_acc += dy * xhat  # masked rows and columns loaded 0: they add 0
            db_acc += dy
            if SUM_DX:
                dp_acc += dx  # 0 in masked rows (dy, dres and rstd loaded 0); masked columns are not stored
        tl.store(dw_ptr + pid * C + cols, tl.sum(dw_acc, axis=0), mask=in_c)
        tl.store(db_ptr + pid * C + cols, tl.sum(db_acc, axis=0), mask=in_c)
        if SUM_DX:
            tl.store(dp_ptr + pid * C + cols, tl.sum(dp_acc, axis=0), mask=in_c)

    @triton_op("gpt2_three_ways::layernorm_backward", mutates_args={})
    def _layernorm_backward(
        dy: torch.Tensor,
        x: torch.Tensor,
        mean: torch.Tensor,
        rstd: torch.Tensor,
        weight: torch.Tensor,
        dres: torch.Tensor | None,
        low_dtype: torch.dtype,
        sum_dx: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """dy, x, dres (M, C), mean, rstd (M,), weight (C,) -> dx (M, C) float32, dlow (M, C) in low_dtype
        ((0, C) when that is x's dtype), dw, db and dp (tiles, C) float32, per program (dp (0, C) without
        sum_dx)."""
        M, C = x.shape
        dx = torch.empty_like(x)
        write_low = low_dtype != x.dtype
        dlow = torch.empty((M, C) if write_low else (0, C), dtype=low_dtype, device=x.device)
        tiles = triton.cdiv(M, ROWS)
        dw = torch.empty((tiles, C), dtype=torch.float32, device=x.device)
        db = torch.empty((tiles, C), dtype=torch.float32, device=x.device)
        dp = torch.empty((tiles if sum_dx else 0, C), dtype=torch.float32, device=x.device)
        has_dres = dres is not None
        dres_ = dres if has_dres else dx  # never read without HAS_DRES
        wrap_triton(_layernorm_backward_kernel)[(tiles,)](
            dy, x, mean, rstd, weight, dres_, dx, dlow, dw, db, dp, M, C,
            dy.stride(0), x.stride(0), dres_.stride(0), dx.stride(0), dlow.stride(0) if write_low else C,
            HAS_DRES=has_dres, WRITE_LOW=write_low, SUM_DX=sum_dx, ROWS=ROWS, BLOCK_M=BLOCK_M,
            BLOCK_C=triton.next_power_of_2(C), num_warps=NUM_WARPS,
        )  # fmt: skip
        return dx, dlow, dw, db, dp


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def layernorm_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    weight: torch.Tensor,
    dres: torch.Tensor | None = None,
    low_dtype: torch.dtype | None = None,
    sum_dx: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(dx_new, dx_new in low_dtype, dweight, dbias, db_proj) for dy, x (M, C), mean, rstd (M,) and
    weight (C,); dres (M, C) float32 is added to dx_new when given. The second is dx_new itself when
    low_dtype is x's dtype (or None). dweight, dbias and db_proj = sum_rows dx_new (None without sum_dx)
    are float32."""
    M, C = x.shape
    if dy.shape != (M, C) or (dres is not None and dres.shape != (M, C)) or weight.shape != (C,):
        raise ValueError(
            f"dy {tuple(dy.shape)}, x {tuple(x.shape)}, weight {tuple(weight.shape)}"
            + ("" if dres is None else f", dres {tuple(dres.shape)}")
            + ": need dy, x (and dres) of one (M, C) shape and weight (C,)"
        )
    if x.dtype != torch.float32 or (dres is not None and dres.dtype != torch.float32):
        raise ValueError(
            f"x ({x.dtype}) and dres ({None if dres is None else dres.dtype}) hold the residual stream: need float32"
        )
    low_dtype = x.dtype if low_dtype is None else low_dtype
    dx, dlow, dw, db, dp = _layernorm_backward(
        _rows(dy), _rows(x), mean.reshape(M).contiguous(), rstd.reshape(M).contiguous(), weight.contiguous(),
        None if dres is None else _rows(dres), low_dtype, sum_dx,
    )  # fmt: skip
    return dx, (dlow if low_dtype != x.dtype else dx), dw.sum(0), db.sum(0), (dp.sum(0) if sum_dx else None)


class ResidualLayerNorm(torch.autograd.Function):
    """(x + delta + b_proj, layer_norm of it in out_dtype) for x, delta (M, C), b_proj (C,) or None: the
    forward as torch's ops, the backward the kernel above."""

    @staticmethod
    def forward(ctx, x, delta, b_proj, weight, bias, eps, out_dtype):
        x_new = x + delta  # (M, C) float32: delta is promoted
        if b_proj is not None:
            x_new = x_new + b_proj
        y, mean, rstd = torch.ops.aten.native_layer_norm(x_new, [x_new.shape[-1]], weight, bias, eps)
        ctx.save_for_backward(x_new, mean, rstd, weight)
        ctx.delta_dtype, ctx.has_b_proj, ctx.has_bias = delta.dtype, b_proj is not None, bias is not None
        return x_new, y.to(out_dtype)

    @staticmethod
    def backward(ctx, dres, dy):
        # Both gradients are tensors: autograd fills an unused output's (ln_f's x_new) with zeros.
        x_new, mean, rstd, weight = ctx.saved_tensors
        dx, ddelta, dw, db, db_proj = layernorm_backward(
            dy, x_new, mean, rstd, weight, dres, ctx.delta_dtype, ctx.has_b_proj
        )
        return dx, ddelta, db_proj, dw, (db if ctx.has_bias else None), None, None


def residual_layernorm(
    x: torch.Tensor, delta: torch.Tensor, norm: torch.nn.LayerNorm, b_proj: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_new, norm(x_new)), x_new = x + delta + b_proj, for x, delta (..., C), an nn.LayerNorm and b_proj
    (C,) float32 or None; the second in the autocast dtype when autocast is on (the dtype the next
    matmul casts it to), else in x_new's."""
    reason = unavailable_reason(x.device)
    if reason:
        raise RuntimeError(reason)
    if x.dtype != torch.float32:
        raise ValueError(
            f"--norm-impl triton keeps the residual stream in float32 (the parameters' dtype), not {x.dtype}"
        )
    if b_proj is not None and b_proj.shape != (x.shape[-1],):
        raise ValueError(f"b_proj {tuple(b_proj.shape)}: need ({x.shape[-1]},), one bias per channel")
    on = torch.is_autocast_enabled(x.device.type)
    out_dtype = torch.get_autocast_dtype(x.device.type) if on else torch.promote_types(x.dtype, delta.dtype)
    shape, C = x.shape, x.shape[-1]
    with torch.autocast(x.device.type, enabled=False):
        x_new, y = ResidualLayerNorm.apply(
            x.reshape(-1, C), delta.reshape(-1, C), b_proj, norm.weight, norm.bias, norm.eps, out_dtype
        )
    return x_new.reshape(shape), y.reshape(shape)
