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
- block: one block of threads per row, strided over V, block-wide max and sum reductions.
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
    m = float32(-np.inf)
    for j in range(cuda.threadIdx.x, V, cuda.blockDim.x):
        m = max(m, logits[base + j])
    m = block_max(m, scratch)
    total = float32(0.0)
    for j in range(cuda.threadIdx.x, V, cuda.blockDim.x):
        total += math.exp(logits[base + j] - m)
    total = block_sum(total, scratch)
    target = targets[row]
    if cuda.threadIdx.x == 0:
        losses[row] = math.log(total) + m - logits[base + target] if target >= 0 else float32(0.0)
    if with_grad:
        scale = dloss / total if target >= 0 else float32(0.0)
        for j in range(cuda.threadIdx.x, V, cuda.blockDim.x):
            g = math.exp(logits[base + j] - m) * scale
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
        crossentropy_block_kernel[N, block_size(512, 32)](losses, dlogits, logits, targets, N, V, dloss, with_grad)
