"""The softmax cross-entropy of a chunk of logits and its gradient, one Triton kernel per chunk.

    z        (R, Vp)  a chunk of the head's logits (bf16 under autocast, or float32); row stride
                      free, columns contiguous; columns V.. are the vocabulary's padding
    targets  (R,)     int64 ids in [0, V), or -1: the row is ignored
    n_valid  ()       float32: the number of scored rows in the whole batch (the mean's divisor)
  ->
    loss     (R,)     float32: logsumexp(z[r, :V]) - z[r, t_r] on scored rows, 0 on ignored ones
    dz       (R, Vp)  z's dtype: (softmax(z[r, :V]) - onehot(t_r)) / n_valid, computed in float32;
                      0 on ignored rows and on the pad columns

This is the per-chunk step of torch_impl/chunked_loss.py (--loss-impl chunked-triton). There,
torch.compile fuses the same arithmetic into its own kernels, which run at about 1.4 TB/s on an H200
(docs/training.md, "Measured"). In the two-pass kernel one program takes one row at a time and goes over it
twice:

    pass 1   m, s = running max and running sum of exp(z - m), BLOCK columns at a time
             (when the max grows from m to m', the sum so far is rescaled by exp(m - m'))
             lse = m + log(s)
    pass 2   dz = (exp(z - lse) - onehot) * scale, written BLOCK columns at a time

A row of 50,304 bf16 logits is 100 KB, so the second pass can read it back from L2 instead of memory,
as long as the rows in flight on the whole GPU fit there. A program per row would put as many rows in
flight as fit in the SMs (with 4 warps, up to 16 programs on each of an H200's 132 SMs: 2,112 rows or
211 MB, four times its 50 MB of L2). The kernel can therefore run on a persistent grid: PROGRAMS_PER_SM
programs per SM, each looping over every P-th row, keep P rows in flight. Measured, that did not pay:
on an H200 one program per row (PROGRAMS_PER_SM = 0) was the fastest, 0.717 ms per (8192, 50304) chunk
against 0.759 ms for the best persistent grid and 1.115 ms for torch.compile's kernels. At 2.3 TB/s
(the logits read once, dz written once) it is still short of the memory's bandwidth: the rows in flight
do not fit in L2, so pass 2 reads each row from memory again.

The whole-row kernel reads each row from memory once. Measured on an H200 it is slower, so it is off
(WHOLE_ROWS = False): 1.075 ms per chunk at its best against the two-pass kernel's 0.723 ms
(docs/training.md, "Measured"); one program fills an SM, so nothing hides its loads' latency behind
another's arithmetic. It is kept, and tested, for the sweep to time on other GPUs.

One program takes one row and holds all of it in registers, as three power-of-two pieces (row_pieces:
32768 + 16384 + 2048 = 51,200 columns for GPT-2's 50,304), from the load to the store of dz:

    m    = max of the row (bf16 compares exactly)          one reduction per piece
    lse  = m + log(sum of exp(z - m))                      one more
    dz   = (exp(z - lse) - onehot) * scale                 stored; exp computed again: the float32
                                                           copies would not fit beside the bf16 row

At 16 warps a thread holds 100 bf16 values in 50 registers; compiled for sm_90a it uses 128 registers
and no local memory (tests/torch_impl/test_cross_entropy_triton.py checks that with ptxas), so one program
fills an SM's register file. The mask is cols < Vp, so the loads are 16-byte vectors when Vp is a
multiple of 8 (GPT-2's 50,304 is); the columns V..Vp are set to -inf after the load. Rows whose pieces
hold more than WHOLE_ROW_MAX values, logits wider than 2 bytes, and the forward without a gradient take
the two-pass kernel.

Triton compiles the kernel for the GPU that runs it. On a machine without one, TRITON_INTERPRET=1
(set before triton is imported; the tests session of noxfile.py sets it there) runs the same kernel
in Triton's interpreter on CPU tensors, which is how CI tests it.
"""

from __future__ import annotations

import torch

from torch_impl.devices import triton_unavailable_reason

try:  # CUDA builds of torch ship triton; CPU builds do not need it
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton
except ImportError as e:  # pragma: no cover - the message says what to install
    triton = _cross_entropy_rows_kernel = _cross_entropy_whole_rows_kernel = None
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"
else:
    _IMPORT_ERROR = None

# The launch configuration, the fastest of scripts/loss_kernel_sweep.py's on an H200
# (docs/results/loss-kernel-sweep-h200-374579a.json; docs/training.md, "Measured")
BLOCK = 2048  # columns a program holds at a time (a power of two)
NUM_WARPS = 4  # warps per program
PROGRAMS_PER_SM = 0  # the persistent grid's programs per streaming multiprocessor; 0: one program per row
DTYPES = (torch.bfloat16, torch.float16, torch.float32)  # the logits' dtypes the kernel takes
WHOLE_ROWS = False  # True: the gradient through the whole-row kernel where a row fits (slower on an H200)
WHOLE_ROW_MAX = 51200  # values (2-byte logits) a whole-row program holds without spilling at WHOLE_ROW_NUM_WARPS
WHOLE_ROW_NUM_WARPS = 16


def row_pieces(Vp: int) -> tuple[int, int, int]:
    """Three powers of two P0 >= P1 >= P2 whose sum covers Vp columns with little left over: P0 and P1 the
    largest that fit, P2 the rest rounded up (1 where nothing is left; its one column masked)."""
    p0 = 1 << (Vp.bit_length() - 1)
    rest = Vp - p0
    p1 = 1 << (rest.bit_length() - 1) if rest else 1
    rest = max(rest - p1, 0)
    return p0, p1, (1 << (rest - 1).bit_length()) if rest else 1


def uses_whole_rows(z: torch.Tensor, need_grad: bool) -> bool:
    """Whether cross_entropy_rows takes z through the whole-row kernel (module docstring)."""
    return WHOLE_ROWS and need_grad and z.element_size() <= 2 and sum(row_pieces(z.shape[1])) <= WHOLE_ROW_MAX


def programs(device: torch.device, rows: int) -> int:
    """The grid's size: one program per row on a GPU, or PROGRAMS_PER_SM per SM when that is set (never
    more than the rows); in the interpreter a few programs, so that each one loops over several rows."""
    if device.type != "cuda":
        return max(1, min(rows, 4))
    if PROGRAMS_PER_SM == 0:
        return max(1, rows)
    return max(1, min(rows, PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count))


def unavailable_reason(device: torch.device | str) -> str | None:
    """None when the kernel can run on `device`; else why not (one line, for an error message)."""
    return triton_unavailable_reason("--loss-impl chunked-triton", _cross_entropy_rows_kernel, _IMPORT_ERROR, device)


if triton is not None:

    @triton.jit
    def _cross_entropy_rows_kernel(
        z_ptr,  # (R, Vp) logits
        targets_ptr,  # (R,) int64, -1 = ignored
        n_valid_ptr,  # () float32
        loss_ptr,  # (R,) float32, out
        dz_ptr,  # (R, Vp) out, z's dtype (not touched unless WRITE_GRAD)
        z_row_stride,
        dz_row_stride,
        R,  # rows
        V,  # real columns
        Vp,  # all columns, V <= Vp
        BLOCK: tl.constexpr,
        WRITE_GRAD: tl.constexpr,
    ):
        # program p takes rows p, p + P, p + 2P, ... of the P programs launched (programs(): on a GPU one per
        # row, so each takes one; on a persistent grid P rows are in flight, which pass 2 may find in L2)
        for row in range(tl.program_id(0), R, tl.num_programs(0)):
            z_row = z_ptr + tl.cast(row, tl.int64) * z_row_stride
            target = tl.load(targets_ptr + row)
            valid = target != -1

            # pass 1: the log-sum-exp of the V real columns (the pad columns are left out: probability 0)
            m = float("-inf")  # running max
            s = 0.0  # running sum of exp(z - m)
            for start in range(0, V, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                x = tl.load(z_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
                m_new = tl.maximum(m, tl.max(x, axis=0))
                s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
                m = m_new
            lse = m + tl.log(s)

            z_target = tl.load(z_row + tl.where(valid, target, 0)).to(tl.float32)
            tl.store(loss_ptr + row, tl.where(valid, lse - z_target, 0.0))

            if WRITE_GRAD:
                # pass 2: d loss / d z = (softmax - onehot) / n_valid; ignored rows and pad columns get 0
                scale = tl.where(valid, 1.0 / tl.load(n_valid_ptr), 0.0)
                dz_row = dz_ptr + tl.cast(row, tl.int64) * dz_row_stride
                for start in range(0, Vp, BLOCK):
                    cols = start + tl.arange(0, BLOCK)
                    x = tl.load(z_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
                    p = tl.exp(x - lse)  # exactly 0 on the pad columns (x = -inf)
                    g = (p - tl.where(cols == target, 1.0, 0.0)) * scale
                    tl.store(dz_row + cols, g.to(dz_ptr.dtype.element_ty), mask=cols < Vp)

    @triton.jit
    def _load_piece(z_row, start, V, Vp, P: tl.constexpr):
        """Columns start..start+P of a row as loaded (pad columns and past Vp: -inf) and their max."""
        cols = start + tl.arange(0, P)
        x = tl.load(z_row + cols, mask=cols < Vp, other=float("-inf"))  # mask on Vp: loads stay vectorized
        x = tl.where(cols < V, x, float("-inf"))  # the pad columns: probability 0
        return x, tl.max(x, axis=0)

    @triton.jit
    def _store_piece_grad(dz_row, x, start, lse, target, scale, Vp, P: tl.constexpr):
        """dz = (softmax - onehot) * scale for one piece; exactly 0 on the pad columns (x = -inf)."""
        cols = start + tl.arange(0, P)
        g = (tl.exp(x.to(tl.float32) - lse) - tl.where(cols == target, 1.0, 0.0)) * scale
        tl.store(dz_row + cols, g.to(dz_row.dtype.element_ty), mask=cols < Vp)

    @triton.jit
    def _cross_entropy_whole_rows_kernel(
        z_ptr,
        targets_ptr,
        n_valid_ptr,
        loss_ptr,
        dz_ptr,  # as _cross_entropy_rows_kernel's
        z_row_stride,
        dz_row_stride,
        V,
        Vp,
        P0: tl.constexpr,
        P1: tl.constexpr,
        P2: tl.constexpr,  # row_pieces(Vp)
    ):
        # program r takes row r, all of it held in registers as three pieces from the load to the store
        row = tl.program_id(0)
        z_row = z_ptr + tl.cast(row, tl.int64) * z_row_stride
        target = tl.load(targets_ptr + row)
        valid = target != -1
        x0, m0 = _load_piece(z_row, 0, V, Vp, P0)
        x1, m1 = _load_piece(z_row, P0, V, Vp, P1)
        x2, m2 = _load_piece(z_row, P0 + P1, V, Vp, P2)
        m = tl.maximum(tl.maximum(m0, m1), m2).to(tl.float32)
        s = tl.sum(tl.exp(x0.to(tl.float32) - m), axis=0)
        s += tl.sum(tl.exp(x1.to(tl.float32) - m), axis=0)
        s += tl.sum(tl.exp(x2.to(tl.float32) - m), axis=0)
        lse = m + tl.log(s)
        z_target = tl.load(z_row + tl.where(valid, target, 0)).to(tl.float32)
        tl.store(loss_ptr + row, tl.where(valid, lse - z_target, 0.0))
        scale = tl.where(valid, 1.0 / tl.load(n_valid_ptr), 0.0)  # ignored rows: no gradient (whole rows)
        dz_row = dz_ptr + tl.cast(row, tl.int64) * dz_row_stride
        _store_piece_grad(dz_row, x0, 0, lse, target, scale, Vp, P0)
        _store_piece_grad(dz_row, x1, P0, lse, target, scale, Vp, P1)
        _store_piece_grad(dz_row, x2, P0 + P1, lse, target, scale, Vp, P2)

    @triton_op("gpt2_three_ways::cross_entropy_rows", mutates_args={})
    def _cross_entropy_rows(
        z: torch.Tensor, targets: torch.Tensor, n_valid: torch.Tensor, vocab_size: int, need_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        R, Vp = z.shape
        loss = torch.empty(R, dtype=torch.float32, device=z.device)
        dz = torch.empty_like(z) if need_grad else z.new_empty((0, Vp))
        if uses_whole_rows(z, need_grad):
            P0, P1, P2 = row_pieces(Vp)
            wrap_triton(_cross_entropy_whole_rows_kernel)[(R,)](
                z, targets, n_valid, loss, dz, z.stride(0), dz.stride(0), vocab_size, Vp,
                P0=P0, P1=P1, P2=P2, num_warps=WHOLE_ROW_NUM_WARPS,
            )  # fmt: skip
            return loss, dz
        wrap_triton(_cross_entropy_rows_kernel)[(programs(z.device, R),)](
            z, targets, n_valid, loss, dz, z.stride(0), dz.stride(0) if need_grad else 0, R, vocab_size, Vp,
            BLOCK=BLOCK, WRITE_GRAD=need_grad, num_warps=NUM_WARPS,
        )  # fmt: skip
        return loss, dz


def cross_entropy_rows(
    z: torch.Tensor, targets: torch.Tensor, n_valid: torch.Tensor, vocab_size: int, need_grad: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(loss (R,) float32, dz (R, Vp) in z's dtype, or None without need_grad) for one chunk of logits;
    shapes and formulas in the module docstring."""
    reason = unavailable_reason(z.device)
    if reason:
        raise RuntimeError(reason)
    if z.dtype not in DTYPES:
        raise ValueError(
            f"--loss-impl chunked-triton computes in float32 and takes {[str(d) for d in DTYPES]} logits, "
            f"not {z.dtype}; use --loss-impl chunked for a {z.dtype} model"
        )
    if z.dim() != 2 or targets.shape != z.shape[:1] or not 0 < vocab_size <= z.shape[1]:
        raise ValueError(f"z {tuple(z.shape)}, targets {tuple(targets.shape)}, vocab_size {vocab_size}: need "
                         "z (R, Vp), targets (R,) and 0 < vocab_size <= Vp")  # fmt: skip
    if z.stride(1) != 1:
        z = z.contiguous()
    loss, dz = _cross_entropy_rows(
        z, targets.long(), n_valid.to(device=z.device, dtype=torch.float32), vocab_size, need_grad
    )
    return loss, (dz if need_grad else None)
