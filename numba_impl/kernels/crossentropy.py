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

Two versions:
- naive: one thread per row, three passes over V;
- block: one block of threads per row, strided over V. The max and the sum of exponentials come
  from one pass ("online softmax": each thread keeps a running max m and a sum s of exp(x - m),
  rescaling s by exp(m_old - m_new) when the max grows; the block then combines the threads'
  pairs), so the row is read twice in all (once for the sums, once for dlogits), not three times.

Bytes: the logits are read twice and dlogits written once (12 N V bytes with the gradient); at
GPT-2's V = 50,257 a row is 201 KB, so a block's second read finds much of its row in L2.
"""

from __future__ import annotations

import math

import numpy as np

from numba_impl._compat import block_max, block_size, block_sum, cuda, float32, kernel


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


def crossentropy(losses, dlogits, logits, targets, N, V, dloss, with_grad=True, naive=False):
    """Per-row losses, and dlogits scaled by `dloss` when with_grad (dlogits may be any array otherwise)."""
    dloss = np.float32(dloss)
    if naive:
        threads = block_size(128, 32)
        crossentropy_naive_kernel[(N + threads - 1) // threads, threads](
            losses, dlogits, logits, targets, N, V, dloss, with_grad
        )
    else:
        crossentropy_block_kernel[N, block_size(1024, 32)](losses, dlogits, logits, targets, N, V, dloss, with_grad)
