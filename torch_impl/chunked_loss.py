"""The output head and its cross-entropy in one pass over row chunks, never holding all the logits.

    loss = mean over valid rows n of  logsumexp_v(h[n] . W[v]) - h[n] . W[targets[n]]

    h        (N, C)   ln_f's output, N = B*T rows
    W        (Vp, C)  the head's matrix (wte when tied), Vp >= V rows; rows V.. are padding
    targets  (N,)     ids in [0, V), or -1: the row is ignored (not scored, no gradient)

The plain path (`GPT2.forward` with loss_impl="full") computes logits = h W^T (N, Vp) in bf16 under
autocast, a float32 copy of their V columns for F.cross_entropy, and the float32 log-softmax that
autograd keeps for the backward: at B=64, T=1024 (N = 65,536 rows, V = 50,257) 6.6 GB, 13.2 GB and
13.2 GB (arithmetic: values x bytes), written and read again in the backward. This path never holds
more than one chunk of them. For each chunk of R rows it computes, in the forward,

    z   = h_r W^T                           (R, Vp)  in the matmul dtype (bf16 under autocast)
    z[:, V:] = -inf                         the pad columns: probability 0, no gradient to the pad rows
    lse = logsumexp(z.float())              (R,)     float32 (float64 for a float64 model)
    loss_sum += sum over valid rows of lse - z[target]
    dz  = (softmax(z) - onehot(target)) / n_valid, zero on ignored rows      (R, Vp)  float32
    dh_r  = dz W                            (R, C)
    dW   += dz^T h_r                        (Vp, C)  accumulated in float32 over the chunks

and keeps only dh (N, C) and dW (Vp, C) for the backward, which scales them by the incoming gradient
of the loss (a scalar). The arithmetic is the plain path's: the same three matmuls per chunk (logits
forward, dh, dW), the softmax in float32; dz is cast to the matmul dtype for the two gradient
matmuls as autocast does in the plain path's backward. Only the order of summation in dW (chunk by
chunk, in float32) differs, so the two paths agree to rounding (tests/torch_impl/test_chunked_loss.py).

Who computes each chunk's loss and dz (rows_kernel): "torch", the lines of _cross_entropy_rows_torch,
which torch.compile fuses into its own kernels; or "triton", one kernel of our own that goes over each row
of z in two passes (torch_impl/cross_entropy_triton.py; --loss-impl chunked-triton; float32 and bf16
models only). Both compute the same float32 formulas; only the order of the logsumexp's sums differs
(rounding).

Under torch.no_grad (evaluation) only the loss is computed: one matmul per chunk, no dz, dh, dW.
The gradient is computed in the forward, so the loss may be differentiated once (as a training step
does): the backward of a second .backward() on the same graph would reuse the same dh, dW, which is
right, but a double backward (gradients of gradients) is not supported.
"""

from __future__ import annotations

import torch

from torch_impl.cross_entropy_triton import cross_entropy_rows

ROWS_KERNELS = ("torch", "triton")  # who computes each chunk's loss and dz (the forward's rows_kernel)
DEFAULT_CHUNK_ROWS = 8192  # rows per chunk: (8192 x 50304) float32 scratch = 1.6 GB on a GPT-2 head


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """mean cross-entropy of h W^T against targets (see the module docstring), gradients computed in the forward."""

    @staticmethod
    def forward(ctx, h, W, targets, vocab_size: int, chunk_rows: int, need_grad: bool, rows_kernel: str):
        # h (N, C), W (Vp, C) in the matmul dtype; targets (N,) int64 with -1 = ignored; need_grad False
        # (evaluation under torch.no_grad): the loss alone, one matmul per chunk instead of three;
        # rows_kernel: "torch" (the chunk's loss and dz written in torch ops, fused by torch.compile) or
        # "triton" (one kernel of our own, torch_impl/cross_entropy_triton.py)
        N = h.shape[0]
        acc = torch.promote_types(h.dtype, torch.float32)  # the softmax and the sums: float32 at least
        valid = targets != -1  # (N,)
        n_valid = valid.sum().clamp(min=1).to(acc)
        loss_sum = torch.zeros((), dtype=acc, device=h.device)
        dh = torch.empty_like(h) if need_grad else None  # (N, C)
        dW = torch.zeros(W.shape, dtype=acc, device=W.device) if need_grad else None  # (Vp, C)
        cols = torch.arange(W.shape[0], device=h.device)  # (Vp,)
        for r0 in range(0, N, chunk_rows):
            h_r, t_r, ok = h[r0 : r0 + chunk_rows], targets[r0 : r0 + chunk_rows], valid[r0 : r0 + chunk_rows]
            z = h_r @ W.t()  # (R, Vp) in the matmul dtype
            if rows_kernel == "triton":
                loss_rows, dz = cross_entropy_rows(z, t_r, n_valid, vocab_size, need_grad)  # (R,), (R, Vp)
            else:
                loss_rows, dz = _cross_entropy_rows_torch(z, t_r, ok, n_valid, cols, vocab_size, acc, need_grad)
            loss_sum += loss_rows.sum()
            if not need_grad:
                continue
            dh[r0 : r0 + chunk_rows] = dz @ W  # (R, C)
            dW += (dz.t() @ h_r).to(acc)  # (Vp, C)
        if need_grad:
            ctx.save_for_backward(dh, dW.to(W.dtype))
        return loss_sum / n_valid

    @staticmethod
    def backward(ctx, grad_loss):
        dh, dW = ctx.saved_tensors
        return dh * grad_loss.to(dh.dtype), dW * grad_loss.to(dW.dtype), None, None, None, None, None


def _cross_entropy_rows_torch(z, t_r, ok, n_valid, cols, vocab_size: int, acc: torch.dtype, need_grad: bool):
    """One chunk's (loss per row (R,), dz (R, Vp) in z's dtype or None), in torch ops: the formulas of the
    module docstring; z (R, Vp) logits, t_r (R,) targets, ok (R,) t_r != -1, cols (Vp,) 0..Vp-1."""
    # Written without in-place steps so that torch.compile fuses what follows into two passes
    # over z (the logsumexp reduction, then dz), z never copied to float32 in memory.
    zf = torch.where(cols < vocab_size, z.to(acc), float("-inf"))  # (R, Vp) pad columns: -inf
    lse = torch.logsumexp(zf, dim=1)  # (R,)
    safe_t = torch.where(ok, t_r, 0)  # a gather index for every row; ignored rows drop out below
    z_target = zf.gather(1, safe_t[:, None])[:, 0]  # (R,)
    loss_rows = torch.where(ok, lse - z_target, 0.0)
    if not need_grad:
        return loss_rows, None
    p = torch.exp(zf - lse[:, None])  # softmax (R, Vp); exactly 0 on the pad columns
    onehot = (cols == safe_t[:, None]).to(acc)  # (R, Vp)
    scale = (ok.to(acc) / n_valid)[:, None]  # (R, 1) ignored rows: no gradient
    return loss_rows, ((p - onehot) * scale).to(z.dtype)  # (R, Vp)


def chunked_linear_cross_entropy(
    h: torch.Tensor,
    W: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    rows_kernel: str = "torch",
) -> torch.Tensor:
    """Mean cross-entropy of the head's logits h W^T (pad columns >= vocab_size excluded) against targets
    (-1 = ignored), without materialising the (N, Vp) logits. h (..., C), W (Vp, C), targets (...).

    Under autocast, h and W are cast to the autocast dtype here (as F.linear would), and the chunk loop
    runs outside autocast with the dtypes made explicit."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if rows_kernel not in ROWS_KERNELS:
        raise ValueError(f"rows_kernel must be one of {ROWS_KERNELS}, got {rows_kernel!r}")
    C = h.shape[-1]
    h = h.reshape(-1, C)
    targets = targets.reshape(-1).long()
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        h, W = h.to(dtype), W.to(dtype)
    elif h.dtype != W.dtype:
        raise ValueError(f"h is {h.dtype} but W is {W.dtype}: the head's matmul needs one dtype")
    need_grad = torch.is_grad_enabled() and (h.requires_grad or W.requires_grad)
    with torch.autocast(device_type, enabled=False):
        return ChunkedLinearCrossEntropy.apply(h, W, targets, vocab_size, chunk_rows, need_grad, rows_kernel)
