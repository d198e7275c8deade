"""Token + position embedding: out[b, t, :] = wte[idx[b, t], :] + wpe[t, :].

Shapes (all arrays flat, row-major):
    idx   (B, T) int32       out   (B, T, C)
    wte   (V, C)             wpe   (maxT, C), or None with rotary positions (config.position "rope"):
                             then out[b, t, :] = wte[idx[b, t], :] and there is no dwpe (the
                             positions enter in attention, kernels/rope.py)

Backward is a scatter-add: every position adds its gradient row into the row of its token
in dwte (and of its position in dwpe). Two versions:
- naive: one thread per (b, t, c), ``atomic.add`` into dwte / dwpe (order of the adds, and so
  the last bits of the result, vary from run to run);
- sorted: the host groups positions by token id (a stable argsort of idx), then one thread per
  (token, c) sums its group in a fixed order and adds once: deterministic, no atomics.
  dwpe is summed over the batch by one thread per (t, c), also without atomics.
- chained: the same groups, the same sums in the same order (bit-identical to sorted), but found
  on the device: one thread per position links it to the next position with the same token, and
  marks the first one; then one thread per (first position, c) walks its chain. No host work and a
  fixed launch shape, so a CUDA graph can capture it (the model uses this one).
"""

from __future__ import annotations

import numpy as np

from numba_impl._compat import block_size, ceil_div, cuda, float32, kernel


@kernel
def encoder_forward_kernel(out, idx, wte, wpe, BT, T, C):
    i = cuda.grid(1)
    if i < BT * C:
        row = i // C
        c = i % C
        t = row % T
        out[i] = wte[idx[row] * C + c] + wpe[t * C + c]


@kernel
def token_embedding_kernel(out, idx, wte, BT, C):
    """The forward without a position table: out[row, c] = wte[idx[row], c]."""
    i = cuda.grid(1)
    if i < BT * C:
        row = i // C
        out[i] = wte[idx[row] * C + i - row * C]


def encoder_forward(out, idx, wte, wpe, B, T, C):
    """out (B, T, C) = wte[idx] + wpe[:T]; wpe None (rope): wte[idx]."""
    n = B * T * C
    threads = block_size(256, 32)
    if wpe is None:
        token_embedding_kernel[ceil_div(n, threads), threads](out, idx, wte, B * T, C)
        return
    encoder_forward_kernel[ceil_div(n, threads), threads](out, idx, wte, wpe, B * T, T, C)


# ----------------------------------------------------------------------------- backward, naive
@kernel
def encoder_backward_atomic_kernel(dwte, dwpe, dout, idx, BT, T, C):
    i = cuda.grid(1)
    if i < BT * C:
        row = i // C
        c = i % C
        t = row % T
        g = dout[i]
        cuda.atomic.add(dwte, idx[row] * C + c, g)
        cuda.atomic.add(dwpe, t * C + c, g)


@kernel
def wte_backward_atomic_kernel(dwte, dout, idx, BT, C):
    """The naive scatter-add without a position table: dwte[idx[row]] += dout[row] (atomics)."""
    i = cuda.grid(1)
    if i < BT * C:
        row = i // C
        cuda.atomic.add(dwte, idx[row] * C + i - row * C, dout[i])


def encoder_backward_naive(dwte, dwpe, dout, idx, B, T, C):
    """dwte[idx[b,t]] += dout[b,t]; dwpe[t] += dout[b,t] (atomics; accumulates into dwte/dwpe).
    dwpe None (no position table): dwte only."""
    n = B * T * C
    threads = block_size(256, 32)
    if dwpe is None:
        wte_backward_atomic_kernel[ceil_div(n, threads), threads](dwte, dout, idx, B * T, C)
        return
    encoder_backward_atomic_kernel[ceil_div(n, threads), threads](dwte, dwpe, dout, idx, B * T, T, C)


# ----------------------------------------------------------------------------- backward, sorted
@kernel
def wte_backward_sorted_kernel(dwte, dout, order, group_start, group_token, n_groups, C):
    """One thread per (group, c): group g holds positions order[group_start[g]:group_start[g+1]],
    all with token group_token[g]."""
    i = cuda.grid(1)
    if i < n_groups * C:
        g = i // C
        c = i % C
        acc = float32(0.0)
        for j in range(group_start[g], group_start[g + 1]):
            acc += dout[order[j] * C + c]
        dwte[group_token[g] * C + c] += acc


@kernel
def wpe_backward_kernel(dwpe, dout, B, T, C):
    """One thread per (t, c): dwpe[t, c] += sum over b of dout[b, t, c]."""
    i = cuda.grid(1)
    if i < T * C:
        acc = float32(0.0)
        for b in range(B):
            acc += dout[b * T * C + i]
        dwpe[i] += acc


def token_groups(idx_host: np.ndarray):
    """Host side of the sorted scatter: (order, group_start, group_token) as int32 arrays.

    order lists the flat positions sorted by token id (stable, so each group is in position
    order); group g spans order[group_start[g]:group_start[g+1]] and has token group_token[g]."""
    flat = np.ascontiguousarray(idx_host, dtype=np.int64).ravel()
    order = np.argsort(flat, kind="stable")
    tokens = flat[order]
    starts = np.flatnonzero(np.r_[True, tokens[1:] != tokens[:-1]])
    group_start = np.r_[starts, flat.size].astype(np.int32)
    return order.astype(np.int32), group_start, tokens[starts].astype(np.int32)


def encoder_backward_sorted(dwte, dwpe, dout, order, group_start, group_token, n_groups, B, T, C):
    """Deterministic scatter-add (accumulates into dwte/dwpe; dwpe None: dwte only); the groups come
    from `token_groups`."""
    threads = block_size(256, 32)
    wte_backward_sorted_kernel[ceil_div(n_groups * C, threads), threads](
        dwte, dout, order, group_start, group_token, n_groups, C
    )
    if dwpe is not None:
        wpe_backward_kernel[ceil_div(T * C, threads), threads](dwpe, dout, B, T, C)


# ----------------------------------------------------------------------------- backward, chained
@kernel
def token_chains_kernel(next_pos, is_first, idx, BT):
    """One thread per position p: next_pos[p] = the next position q > p with idx[q] == idx[p] (BT if
    none); is_first[p] = 1 if no earlier position has that token. O(BT) reads per thread: BT^2 in all
    (16.8 M int compares at B*T = 4096, microseconds on a GPU)."""
    p = cuda.grid(1)
    if p < BT:
        token = idx[p]
        first = 1
        for q in range(p):
            if idx[q] == token:
                first = 0
                break
        nxt = BT
        for q in range(p + 1, BT):
            if idx[q] == token:
                nxt = q
                break
        next_pos[p] = nxt
        is_first[p] = first


@kernel
def wte_backward_chained_kernel(dwte, dout, idx, next_pos, is_first, BT, C):
    """One thread per (position, c); the first position of each token sums its chain in position order."""
    i = cuda.grid(1)
    if i < BT * C:
        p = i // C
        c = i % C
        if is_first[p]:
            acc = float32(0.0)
            q = p
            while q < BT:
                acc += dout[q * C + c]
                q = next_pos[q]
            dwte[idx[p] * C + c] += acc


def encoder_backward_chained(dwte, dwpe, dout, idx, next_pos, is_first, B, T, C):
    """Deterministic scatter-add (accumulates into dwte/dwpe; dwpe None: dwte only) with the grouping
    done on the device. next_pos, is_first: int32 scratch of >= B*T elements."""
    BT = B * T
    threads = block_size(256, 32)
    token_chains_kernel[ceil_div(BT, threads), threads](next_pos, is_first, idx, BT)
    wte_backward_chained_kernel[ceil_div(BT * C, threads), threads](dwte, dout, idx, next_pos, is_first, BT, C)
    if dwpe is not None:
        wpe_backward_kernel[ceil_div(T * C, threads), threads](dwpe, dout, B, T, C)
