"""Fused softmax + cross-entropy over the vocabulary, forward and backward in one pass.

Shapes (flat, row-major; N = B*T rows):
    logits, dlogits  (N, V)
    targets          (N,) int32, -1 = ignore this position
    losses           (N,)  per-position loss (0 where ignored); the model's loss is their sum
                          over the kept positions divided by their count

With prob = softmax(logits[row]) computed as exp(x - max) / sum:
    losses[row]  = log(sum) + max - logits[row, target]
    dlogits[row] = (prob - onehot(target)) * dloss      (dloss = 1 / number of kept positions;
                                                         the whole row is 0 for an ignored one)
The backward is written only when `with_grad` is true (a forward-only pass skips it).

Three versions:
- naive: one thread per row, three passes over V;
- block: one block of threads per row, strided over V. The max and the sum of exponentials come
  from one pass ("online softmax": each thread keeps a running max m and a sum s of exp(x - m),
  rescaling s by exp(m_old - m_new) when the max grows; the block then combines the threads'
  pairs), so the row is read twice in all (once for the sums, once for dlogits), not three times.
- rows (the default): the block kernel's algorithm with more bytes in flight and fewer rows at a
  time. A thread of the block loads GROUP runs of 4 logits before it uses any (16-byte loads where
  the row's address allows: a row of 50,257 floats starts at any multiple of 4 bytes, so the first
  (-row*V) % 4 values and the last few are read one by one), folds the group's 16 values into its
  running (max, sum) with one rescale, and writes dlogits the same way. The grid is one block per
  multiprocessor walking rows (row = block, block + grid, ...): 132 rows of 201 KB in flight are
  26.5 MB, so the second read of each row finds it in the 60 MB L2, and the logits cross the
  memory bus once.

Bytes: the logits are read twice and dlogits written once (12 N V bytes with the gradient; 8 N V
reach device memory when the second read hits L2).
"""

from __future__ import annotations

import math

import numpy as np

from numba_impl._compat import block_max, block_size, block_sum, cuda, device, float32, kernel
from numba_impl.vector import VEC, aligned16, load4, store4

GROUP = 4  # runs of 4 logits a thread loads before it uses them (the rows kernel)
GROUP_VALUES = GROUP * VEC
ROWS_BLOCKS = 132  # blocks of the rows kernel: one per multiprocessor of an H100 / H200


@kernel
def crossentropy_naive_kernel(losses, dlogits, logits, targets, N, V, dloss, with_grad):
    row = cuda.grid(1)
    if row < N:
        base = row * V
        m = logits[base]
        for j in range(1, V):
            m = max(m, logits[base + j])
        total = float32(0.0)
        for j in range(V):
            total += math.exp(logits[base + j] - m)
        target = targets[row]
        if target >= 0:
            losses[row] = math.log(total) + m - logits[base + target]
        else:
            losses[row] = float32(0.0)
        if with_grad:
            scale = dloss / total if target >= 0 else float32(0.0)
            for j in range(V):
                g = math.exp(logits[base + j] - m) * scale
                if j == target:
                    g -= dloss
                dlogits[base + j] = g


@kernel
def crossentropy_block_kernel(losses, dlogits, logits, targets, N, V, dloss, with_grad):
    scratch = cuda.shared.array(32, float32)
    row = cuda.blockIdx.x
    base = row * V
    m = float32(-np.inf)  # this thread's running max ...
    s = float32(0.0)  # ... and sum of exp(x - m) over its elements
    for j in range(cuda.threadIdx.x, V, cuda.blockDim.x):
        x = logits[base + j]
        if x > m:
            s = s * math.exp(m - x) + float32(1.0)
            m = x
        else:
            s += math.exp(x - m)
    row_max = block_max(m, scratch)
    total = block_sum(s * math.exp(m - row_max) if s > float32(0.0) else float32(0.0), scratch)
    target = targets[row]
    if cuda.threadIdx.x == 0:
        losses[row] = math.log(total) + row_max - logits[base + target] if target >= 0 else float32(0.0)
    if with_grad:
        scale = dloss / total if target >= 0 else float32(0.0)
        for j in range(cuda.threadIdx.x, V, cuda.blockDim.x):
            g = math.exp(logits[base + j] - row_max) * scale
            if j == target:
                g -= dloss
            dlogits[base + j] = g


@device
def _fold(m, s, x):
    """The running (max m, sum s of exp(. - m)) of a thread after the values x (-inf = no value)."""
    g = x[0]
    for k in range(1, GROUP_VALUES):
        g = max(g, x[k])
    if g == float32(-np.inf):
        return m, s
    if g > m:
        s = s * math.exp(m - g)
        m = g
    for k in range(GROUP_VALUES):
        s += math.exp(x[k] - m)
    return m, s


def _rows_kernel(vec: bool):
    """The rows kernel; vec: the runs of 4 are 16-byte loads and stores (logits and dlogits 16-byte aligned)."""

    @device
    def load_run(x, k0, logits, i):
        if vec:
            x[k0], x[k0 + 1], x[k0 + 2], x[k0 + 3] = load4(logits, i)
        else:
            for u in range(VEC):
                x[k0 + u] = logits[i + u]

    @device
    def store_run(dlogits, i, x, k0, row_max, scale, target_j, dloss):
        for u in range(VEC):
            x[k0 + u] = math.exp(x[k0 + u] - row_max) * scale - (dloss if i + u == target_j else float32(0.0))
        if vec:
            store4(dlogits, i, x[k0], x[k0 + 1], x[k0 + 2], x[k0 + 3])
        else:
            for u in range(VEC):
                dlogits[i + u] = x[k0 + u]

    @kernel
    def crossentropy_rows_kernel(losses, dlogits, logits, targets, N, V, dloss, with_grad):
        scratch = cuda.shared.array(32, float32)
        x = cuda.local.array(GROUP_VALUES, float32)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        for row in range(cuda.blockIdx.x, N, cuda.gridDim.x):
            base = row * V
            head = min((VEC - base % VEC) % VEC, V)  # values before the first 16-byte aligned run of the row
            runs = (V - head) // VEC
            tail = head + runs * VEC  # values from here on are read one by one
            m = float32(-np.inf)
            s = float32(0.0)
            # the unaligned values at both ends: one per thread
            for k in range(GROUP_VALUES):
                x[k] = float32(-np.inf)
            if tid < head:
                x[0] = logits[base + tid]
            if tid < V - tail:
                x[1] = logits[base + tail + tid]
            m, s = _fold(m, s, x)
            # the runs of 4, GROUP per thread at a time, all loaded before any is used
            for r0 in range(tid, runs, GROUP * nt):
                for q in range(GROUP):
                    r = r0 + q * nt
                    if r < runs:
                        load_run(x, q * VEC, logits, base + head + r * VEC)
                    else:
                        for u in range(VEC):
                            x[q * VEC + u] = float32(-np.inf)
                m, s = _fold(m, s, x)
            row_max = block_max(m, scratch)
            total = block_sum(s * math.exp(m - row_max) if s > float32(0.0) else float32(0.0), scratch)
            target = targets[row]
            if tid == 0:
                losses[row] = math.log(total) + row_max - logits[base + target] if target >= 0 else float32(0.0)
            if with_grad:
                scale = dloss / total if target >= 0 else float32(0.0)
                target_j = base + target if target >= 0 else -1  # the element of the row that gets -dloss
                if tid < head:
                    j = base + tid
                    dlogits[j] = math.exp(logits[j] - row_max) * scale - (dloss if j == target_j else float32(0.0))
                if tid < V - tail:
                    j = base + tail + tid
                    dlogits[j] = math.exp(logits[j] - row_max) * scale - (dloss if j == target_j else float32(0.0))
                for r0 in range(tid, runs, GROUP * nt):
                    for q in range(GROUP):
                        r = r0 + q * nt
                        if r < runs:
                            load_run(x, q * VEC, logits, base + head + r * VEC)
                    for q in range(GROUP):
                        r = r0 + q * nt
                        if r < runs:
                            store_run(dlogits, base + head + r * VEC, x, q * VEC, row_max, scale, target_j, dloss)
            cuda.syncthreads()  # the scratch of block_max / block_sum is reused by the next row

    return crossentropy_rows_kernel


crossentropy_rows_kernel = _rows_kernel(vec=True)
crossentropy_rows_scalar_kernel = _rows_kernel(vec=False)
VERSIONS = ("rows", "block", "naive")


def crossentropy(losses, dlogits, logits, targets, N, V, dloss, with_grad=True, naive=False, version=None):
    """Per-row losses, and dlogits scaled by `dloss` when with_grad (dlogits may be any array otherwise).
    version: "rows" (the default), "block" or "naive" (also naive=True)."""
    dloss = np.float32(dloss)
    version = version or ("naive" if naive else "rows")
    if version not in VERSIONS:
        raise ValueError(f"crossentropy version must be one of {VERSIONS}, got {version!r}")
    args = (losses, dlogits, logits, targets, N, V, dloss, with_grad)
    if version == "naive":
        threads = block_size(128, 32)
        crossentropy_naive_kernel[(N + threads - 1) // threads, threads](*args)
    elif version == "block":
        crossentropy_block_kernel[N, block_size(1024, 32)](*args)
    else:
        vec = aligned16(logits) and aligned16(dlogits)
        fn = crossentropy_rows_kernel if vec else crossentropy_rows_scalar_kernel
        fn[min(N, block_size(ROWS_BLOCKS, 2)), block_size(1024, 32)](*args)
