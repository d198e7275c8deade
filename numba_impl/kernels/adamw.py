"""AdamW update, as torch.optim.AdamW computes it, over one flat buffer of all parameters.

For element i, with step t >= 1 and bias corrections c1 = 1 - beta1^t, c2 = 1 - beta2^t:

    p = p * (1 - lr * wd)       only for i < n_decay: a launch covers a range of the buffer whose
                                decayed tensors come first (the model's default, one launch over the
                                whole buffer with its 2-D tensors first; numba_impl/model.py)
    m = beta1 m + (1 - beta1) g
    v = beta2 v + (1 - beta2) g^2
    p = p - lr * (m / c1) / (sqrt(v / c2) + eps)

One thread per element; memory-bound, no second version. All arithmetic float32.
"""

from __future__ import annotations

import math

import numpy as np

from numba_impl._compat import block_size, ceil_div, cuda, float32, kernel

# The hyperparameters live in a small device array, not in kernel arguments, so that a captured
# CUDA graph (numba_impl/graph.py) replays AdamW with each step's learning rate and bias corrections:
# the caller writes them before the launch (or the replay). Slots of `hyper`:
HYPER = ("lr", "beta1", "beta2", "eps", "weight_decay", "c1", "c2")


@kernel
def adamw_kernel(params, grads, m, v, N, n_decay, hyper):
    i = cuda.grid(1)
    if i < N:
        lr, beta1, beta2, eps, weight_decay = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4]
        c1, c2 = hyper[5], hyper[6]
        p = params[i]
        if i < n_decay:
            p = p * (float32(1.0) - lr * weight_decay)
        g = grads[i]
        mi = beta1 * m[i] + (float32(1.0) - beta1) * g
        vi = beta2 * v[i] + (float32(1.0) - beta2) * g * g
        m[i] = mi
        v[i] = vi
        params[i] = p - lr * (mi / c1) / (math.sqrt(vi / c2) + eps)


def adamw_hyperparameters(step, lr, beta1, beta2, eps, weight_decay) -> np.ndarray:
    """The float32 `hyper` array of step `step` (counting from 1): the slots of HYPER, with the bias
    corrections c1 = 1 - beta1^step, c2 = 1 - beta2^step computed in float64 and rounded once."""
    if step < 1:
        raise ValueError(f"AdamW step must count from 1, got {step}")
    return np.array([lr, beta1, beta2, eps, weight_decay, 1.0 - beta1**step, 1.0 - beta2**step], dtype=np.float32)


def adamw_launch(params, grads, m, v, N, n_decay, hyper):
    """Launch the update with the hyperparameters already in the device array `hyper` (no copies)."""
    threads = block_size(256, 32)
    adamw_kernel[ceil_div(N, threads), threads](params, grads, m, v, N, n_decay, hyper)


def adamw_update(params, grads, m, v, N, n_decay, step, lr, beta1, beta2, eps, weight_decay):
    """One AdamW step (step counts from 1) on flat float32 device buffers of N values."""
    hyper = cuda.to_device(adamw_hyperparameters(step, lr, beta1, beta2, eps, weight_decay))
    adamw_launch(params, grads, m, v, N, n_decay, hyper)
