"""GPT-2's MLP with the GELU fused into its matmuls: two Triton kernels (--mlp-impl triton).

    x       (M, C)   the MLP's input rows (M = B*T), bf16 or fp16 (the autocast dtype)
    w_fc    (H, C)   c_fc.weight (nn.Linear's (out, in) layout), b_fc (H,)
    w_proj  (C, H)   c_proj.weight, b_proj (C,)
  ->
    y       (M, C)   c_proj(gelu(c_fc(x)))

The plain MLP (model.py's MLP.forward) is three steps, and so is its backward:

    forward                              backward (dy = dL/dy)
    h = x w_fc^T + b_fc    matmul        dg = dy w_proj                      matmul
    g = gelu(h)            pointwise     dh = dg * gelu'(h)                  pointwise
    y = g w_proj^T + b_proj matmul       db_fc = sum_rows dh                 reduction
                                         dW_proj, db_proj, dW_fc, dx         matmuls, reductions

The pointwise steps each read and write (M, H) activations, 4x the width of the residual stream. On an
H200 at GPT-2 124M's shapes (M = 65,536 rows per micro-step, H = 3,072) they are bound by memory, while
the matmuls beside them are bound by arithmetic (docs/training.md, "Measured"). So each is moved into
the matmul next to it, as llm.c does with cuBLASLt's GELU epilogues:

    linear_gelu_forward      h = x w_fc^T + b_fc, then g = gelu(h) on the same tile, before either
                             leaves the chip; both are stored (h for the backward, g for c_proj)
    matmul_gelu_backward     dg = dy w_proj, then dh = dg * gelu'(h) on the same tile, and the tile's
                             column sums of dh (db_fc's share of this tile's rows)

The other matmuls stay cuBLAS's (torch's F.linear and mm). The arithmetic is the plain path's: h and
dg are rounded to the autocast dtype before the GELU and its derivative are applied in float32, so only
the matmuls' summation order differs. GELU is the tanh form, the derivative written out:

    gelu(h)  = 0.5 h (1 + t),   t = tanh(u),   u = sqrt(2/pi) (h + 0.044715 h^3)
    gelu'(h) = 0.5 (1 + t) + 0.5 h (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 h^2)

Each kernel is the tiled matmul of Triton's tutorial: program (pid_m, pid_n) owns a (BLOCK_M, BLOCK_N)
tile of the output, walks K in BLOCK_K steps with a float32 accumulator, and programs are grouped GROUP_M
row tiles at a time so that neighbouring programs share their B tiles in L2. On a GPU triton.autotune
times CONFIGS at the first call for each shape and keeps the fastest; in Triton's interpreter
(TRITON_INTERPRET=1, how CI runs it on CPU tensors) one small configuration runs.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

try:  # CUDA builds of torch ship triton; CPU builds do not need it
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton
except ImportError as e:  # pragma: no cover - the message says what to install
    triton = None
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"

DTYPES = (torch.bfloat16, torch.float16)  # the activations' dtypes the kernels take (autocast's)
SQRT_2_OVER_PI = 0.7978845608028654
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


def unavailable_reason(device: torch.device | str) -> str | None:
    """None when the kernels can run on `device`; else why not (one line, for an error message)."""
    if triton is None:
        return f"--mlp-impl triton needs the triton package (CUDA builds of torch include it): {_IMPORT_ERROR}"
    device = torch.device(device)
    if device.type == "cuda" or (device.type == "cpu" and _interpreting()):
        return None
    return (
        f"--mlp-impl triton runs on a CUDA GPU, not on {device.type} "
        "(on the CPU only under TRITON_INTERPRET=1, Triton's interpreter, set before triton is imported)"
    )


def _interpreting() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_linear_gelu_forward_kernel.fn, InterpretedFunction)


if triton is not None:
    # (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages); the interpreter ignores warps and stages
    if INTERPRETING:
        CONFIGS = [(16, 32, 16, 2, 4, 1)]
    else:
        CONFIGS = [  # compiled for sm_90a, none of these spills registers (the 128 x 256 tiles do)
            (128, 128, 64, 8, 8, 3),
            (128, 128, 64, 8, 8, 4),
            (128, 128, 64, 8, 8, 5),
            (64, 256, 64, 8, 8, 4),
        ]
    _UPCAST = tl.constexpr(INTERPRETING)  # globals a kernel reads must be constexpr
    _K = tl.constexpr(SQRT_2_OVER_PI)
    SLOT = min(c[0] for c in CONFIGS)  # rows per partial sum of db_fc (matmul_gelu_backward)
    _AUTOTUNE = [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": g}, num_warps=w, num_stages=s)
        for m, n, k, g, w, s in CONFIGS
    ]

    @triton.jit
    def _tanh(u):
        # tanh(u) = 1 - 2 / (exp(2u) + 1), exact at both ends (exp(2u) -> 0 gives -1)
        return 1.0 - 2.0 / (tl.exp(tl.minimum(2.0 * u, 80.0)) + 1.0)  # exp(80) ~ 5.5e34: no overflow, t = 1

    @triton.jit
    def _tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
        """This program's tile (pid_m, pid_n): row tiles taken GROUP_M at a time, column tiles within."""
        pid = tl.program_id(0)
        tiles_m = tl.cdiv(M, BLOCK_M)
        tiles_n = tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * tiles_n
        first_m = (pid // per_group) * GROUP_M
        group_m = min(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % group_m
        pid_n = (pid % per_group) // group_m
        return pid_m, pid_n

    @triton.jit
    def _matmul_tile(
        a_ptr, b_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, pid_m, pid_n,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr,
    ):  # fmt: skip
        """acc (BLOCK_M, BLOCK_N) float32 = A[tile rows, :] @ B[:, tile columns], A (M, K), B (K, N)."""
        # rows and columns past the edge are wrapped around (read, never stored): no masks in the loop
        rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
        cols = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
        ks = tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + rows[:, None] * stride_am + ks[None, :] * stride_ak  # (BLOCK_M, BLOCK_K)
        b_ptrs = b_ptr + ks[:, None] * stride_bk + cols[None, :] * stride_bn  # (BLOCK_K, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=ks[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=ks[:, None] < k_left, other=0.0)
            if UPCAST:  # Triton's interpreter (numpy has no bf16) multiplies bf16 tiles wrongly; fp32 it does right
                a, b = a.to(tl.float32), b.to(tl.float32)
            acc = tl.dot(a, b, acc)
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk
        return acc

    @triton.autotune(configs=_AUTOTUNE, key=["M", "N", "K"])
    @triton.jit
    def _linear_gelu_forward_kernel(
        x_ptr,  # (M, K) the MLP's input
        w_ptr,  # (N, K) c_fc.weight, read as its transpose (K, N)
        b_ptr,  # (N,) c_fc.bias (not read without HAS_BIAS)
        h_ptr,  # (M, N) out: x w^T + b, rounded to x's dtype
        g_ptr,  # (M, N) out: gelu(h)
        M, N, K,
        stride_xm, stride_xk, stride_wn, stride_wk, stride_hm, stride_gm,
        HAS_BIAS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):  # fmt: skip
        pid_m, pid_n = _tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = _matmul_tile(x_ptr, w_ptr, M, N, K, stride_xm, stride_xk, stride_wk, stride_wn, pid_m, pid_n,
                           BLOCK_M, BLOCK_N, BLOCK_K, _UPCAST)  # fmt: skip
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        h = acc.to(h_ptr.dtype.element_ty)  # rounded as the plain path's matmul output is
        hf = h.to(tl.float32)
        g = 0.5 * hf * (1.0 + _tanh(_K * (hf + 0.044715 * hf * hf * hf)))
        inside = (rows[:, None] < M) & (cols[None, :] < N)
        tl.store(h_ptr + rows[:, None] * stride_hm + cols[None, :], h, mask=inside)
        tl.store(g_ptr + rows[:, None] * stride_gm + cols[None, :], g.to(g_ptr.dtype.element_ty), mask=inside)

    @triton.autotune(configs=_AUTOTUNE, key=["M", "N", "K"])
    @triton.jit
    def _matmul_gelu_backward_kernel(
        dy_ptr,  # (M, K) dL/dy, the MLP's output gradient
        w_ptr,  # (K, N) c_proj.weight
        h_ptr,  # (M, N) the saved pre-activation
        dh_ptr,  # (M, N) out: (dy w) * gelu'(h), in h's dtype
        db_ptr,  # (cdiv(M, SLOT), N) out, float32: column sums of dh over each SLOT rows (only with DBIAS)
        M, N, K,
        stride_dym, stride_dyk, stride_wk, stride_wn, stride_hm, stride_dhm,
        DBIAS: tl.constexpr,
        SLOT: tl.constexpr,  # rows per partial sum: the smallest BLOCK_M of CONFIGS, so every config writes all
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):  # fmt: skip
        pid_m, pid_n = _tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = _matmul_tile(dy_ptr, w_ptr, M, N, K, stride_dym, stride_dyk, stride_wk, stride_wn, pid_m, pid_n,
                           BLOCK_M, BLOCK_N, BLOCK_K, _UPCAST)  # fmt: skip
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        inside = (rows[:, None] < M) & (cols[None, :] < N)
        dg = acc.to(dh_ptr.dtype.element_ty).to(tl.float32)  # rounded as the plain path's matmul output is
        h = tl.load(h_ptr + rows[:, None] * stride_hm + cols[None, :], mask=inside, other=0.0).to(tl.float32)
        t = _tanh(_K * (h + 0.044715 * h * h * h))
        dgelu = 0.5 * (1.0 + t) + 0.5 * h * (1.0 - t * t) * _K * (1.0 + 3.0 * 0.044715 * h * h)
        dh = (dg * dgelu).to(dh_ptr.dtype.element_ty)
        tl.store(dh_ptr + rows[:, None] * stride_dhm + cols[None, :], dh, mask=inside)
        if DBIAS:
            # column sums over each SLOT rows of the tile (the rows past M, wrapped around, count 0): the same
            # cdiv(M, SLOT) partial sums whatever BLOCK_M the autotuner picked
            dh_in = tl.where(inside, dh.to(tl.float32), 0.0)
            sums = tl.sum(tl.reshape(dh_in, (BLOCK_M // SLOT, SLOT, BLOCK_N)), axis=1)  # (BLOCK_M // SLOT, BLOCK_N)
            slots = pid_m * (BLOCK_M // SLOT) + tl.arange(0, BLOCK_M // SLOT)
            tl.store(db_ptr + slots[:, None] * N + cols[None, :], sums,
                     mask=(slots[:, None] * SLOT < M) & (cols[None, :] < N))  # fmt: skip

    def _grid(M: int, N: int):
        return lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    @triton_op("gpt2_three_ways::linear_gelu_forward", mutates_args={})
    def _linear_gelu_forward(
        x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        M, K = x.shape
        N = w.shape[0]
        h = x.new_empty((M, N))
        g = x.new_empty((M, N))
        wrap_triton(_linear_gelu_forward_kernel)[_grid(M, N)](
            x, w, x if b is None else b, h, g, M, N, K,
            x.stride(0), x.stride(1), w.stride(0), w.stride(1), h.stride(0), g.stride(0),
            HAS_BIAS=b is not None,
        )  # fmt: skip
        return h, g

    @triton_op("gpt2_three_ways::matmul_gelu_backward", mutates_args={})
    def _matmul_gelu_backward(
        dy: torch.Tensor, w: torch.Tensor, h: torch.Tensor, need_bias_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        M, K = dy.shape
        N = w.shape[1]
        dh = h.new_empty((M, N))
        partial = torch.empty((triton.cdiv(M, SLOT) if need_bias_grad else 0, N), dtype=torch.float32,
                              device=dy.device)  # fmt: skip
        wrap_triton(_matmul_gelu_backward_kernel)[_grid(M, N)](
            dy, w, h, dh, partial, M, N, K,
            dy.stride(0), dy.stride(1), w.stride(0), w.stride(1), h.stride(0), dh.stride(0),
            DBIAS=need_bias_grad, SLOT=SLOT,
        )  # fmt: skip
        return dh, partial


def linear_gelu_forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, g) = (x w^T + b, gelu(h)) for x (M, C), w (H, C), b (H,) or None; both (M, H) in x's dtype."""
    return _linear_gelu_forward(x, w, b)


def matmul_gelu_backward(
    dy: torch.Tensor, w: torch.Tensor, h: torch.Tensor, need_bias_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dh, db) = ((dy w) * gelu'(h), the column sums of dh in float32, or None) for dy (M, C), w (C, H),
    h (M, H)."""
    dh, partial = _matmul_gelu_backward(dy, w, h, need_bias_grad)
    return dh, (partial.sum(0) if need_bias_grad else None)


class FusedMLP(torch.autograd.Function):
    """y = c_proj(gelu(c_fc(x))) for x (M, C): forward and backward with the two fused kernels above and
    cuBLAS for the rest. All inputs in one dtype (bf16 or fp16); the gradients come back in it."""

    @staticmethod
    def forward(ctx, x, w_fc, b_fc, w_proj, b_proj):
        h, g = linear_gelu_forward(x, w_fc, b_fc)  # (M, H) each
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
        dh, db_fc = matmul_gelu_backward(dy, w_proj, h, has_b_fc)  # (M, H), (H,) float32
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
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    if dtype not in DTYPES:
        raise ValueError(
            f"--mlp-impl triton computes in {[str(d) for d in DTYPES]} (bf16 autocast), not {dtype}; "
            "use --mlp-impl torch for a float32 model"
        )
    shape = x.shape
    cast = [None if t is None else t.to(dtype) for t in (x.reshape(-1, shape[-1]), w_fc, b_fc, w_proj, b_proj)]
    with torch.autocast(x.device.type, enabled=False):
        y = FusedMLP.apply(*cast)
    return y.reshape(*shape[:-1], y.shape[-1])
