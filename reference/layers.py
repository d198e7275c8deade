"""The layers of GPT-2 other than attention, each as a `*_forward` / `*_backward` pair, and the
layers the variants put in their place (docs/variants.md): RMSNorm for LayerNorm, SwiGLU (with
SiLU) for GELU, no position table, no biases, an untied head. RoPE is in rope.py.

Every function is plain NumPy on arrays of one float dtype (float32 or float64); the
output has the dtype of the input. Shapes use

    B  batch size          T  sequence length       C  channels (n_embd)
    V  vocabulary size     OC output channels of a linear layer
    H  the MLP's hidden width (4C for GPT-2)

A forward returns what its backward needs (besides its own inputs) explicitly: there is
no hidden state and no autograd. A backward takes the gradient of the loss with respect
to the forward's output (`dout`) and returns gradients for each input, in order.

Scalars in the math are Python floats on purpose: under NumPy 2's promotion rules a
Python float does not change an array's dtype, so float32 stays float32 end to end.
"""

from __future__ import annotations

import math

import numpy as np

IGNORE_INDEX = -1  # a target of -1 marks a position that does not count in the loss


# ----------------------------------------------------------------------------- embedding
def embedding_forward(wte: np.ndarray, wpe: np.ndarray | None, idx: np.ndarray, start: int = 0) -> np.ndarray:
    """Token + position embedding.

    wte (V, C), wpe (maxT, C) or None, idx (B, T) ints in [0, V)  ->  out (B, T, C)
    out[b, t] = wte[idx[b, t]] + wpe[start + t]
    (start > 0 only when generating with a KV cache: the tokens continue a cached prefix.)
    wpe None (rotary positions): out[b, t] = wte[idx[b, t]]; the positions enter in attention.
    """
    if wpe is None:
        return wte[idx]
    T = idx.shape[1]
    return wte[idx] + wpe[start : start + T]


def embedding_backward(
    dout: np.ndarray, idx: np.ndarray, vocab_size: int, n_ctx: int | None, dwte: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """dout (B, T, C), idx (B, T)  ->  dwte (V, C), dwpe (maxT, C) (None when n_ctx is None: no wpe)

    The forward is a gather, so the backward is a scatter-add: a token that appears several
    times collects the gradient of every occurrence (np.add.at accumulates repeated indices;
    plain fancy-index assignment would keep only one of them). Rows of wpe past T get zero.
    If `dwte` is given (the tied head's share of the gradient), the scatter-add accumulates
    into it in place instead of into a fresh (V, C) array of zeros. n_ctx None: the forward had
    no position table (wpe None), so there is no dwpe.
    """
    B, T, C = dout.shape
    if dwte is None:
        dwte = np.zeros((vocab_size, C), dtype=dout.dtype)
    np.add.at(dwte, idx.reshape(-1), dout.reshape(B * T, C))
    if n_ctx is None:
        return dwte, None
    dwpe = np.zeros((n_ctx, C), dtype=dout.dtype)
    dwpe[:T] = dout.sum(axis=0)
    return dwte, dwpe


# ----------------------------------------------------------------------------- layernorm
def layernorm_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, eps: float = 1e-5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LayerNorm over the last axis, biased variance (divide by C, as GPT-2 does).

    x (..., C), weight (C,), bias (C,) or None  ->  out (..., C), mean (..., 1), rstd (..., 1)
    out = (x - mean) * rstd * weight + bias,   rstd = 1 / sqrt(var + eps)
    (bias None, the variant bias=False: out = (x - mean) * rstd * weight.)
    """
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    out = xc * rstd * weight
    if bias is not None:
        out += bias
    return out, mean, rstd


def layernorm_backward(
    dout: np.ndarray, x: np.ndarray, weight: np.ndarray, mean: np.ndarray, rstd: np.ndarray, bias: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """dout (..., C), x (..., C), weight (C,), mean/rstd (..., 1)  ->  dx (..., C), dweight (C,), dbias (C,)

    With xhat = (x - mean) * rstd and g = dout * weight (the gradient reaching xhat):
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    the two subtracted terms being the paths through the mean and through the variance.
    bias=False: the forward had no bias, and dbias is None (dx and dweight do not depend on it).
    """
    C = x.shape[-1]
    xhat = (x - mean) * rstd
    g = dout * weight
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    dweight = (dout * xhat).reshape(-1, C).sum(axis=0)
    dbias = dout.reshape(-1, C).sum(axis=0) if bias else None
    return dx, dweight, dbias


# ----------------------------------------------------------------------------- rmsnorm
def rmsnorm_forward(x: np.ndarray, weight: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """RMSNorm over the last axis: LayerNorm without the mean and without a bias.

    x (..., C), weight (C,)  ->  out (..., C), rstd (..., 1)
    out = x * rstd * weight,   rstd = 1 / sqrt(mean(x^2) + eps)
    """
    rstd = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    out = x * rstd * weight
    return out, rstd


def rmsnorm_backward(
    dout: np.ndarray, x: np.ndarray, weight: np.ndarray, rstd: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """dout (..., C), x (..., C), weight (C,), rstd (..., 1)  ->  dx (..., C), dweight (C,)

    With xhat = x * rstd and g = dout * weight (the gradient reaching xhat):
        dx = rstd * (g - xhat * mean(g * xhat))
    LayerNorm's backward without its mean(g) term: there is no mean to pass a gradient through,
    only the mean square.
    """
    C = x.shape[-1]
    xhat = x * rstd
    g = dout * weight
    dx = rstd * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    dweight = (dout * xhat).reshape(-1, C).sum(axis=0)
    return dx, dweight


# ----------------------------------------------------------------------------- linear
def linear_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """A GPT-2 "Conv1D": the weight is stored (in, out), so y = x @ W + b.

    x (..., C), weight (C, OC), bias (OC,) or None  ->  out (..., OC)
    """
    out = x @ weight
    if bias is not None:
        out += bias
    return out


def linear_backward(
    dout: np.ndarray, x: np.ndarray, weight: np.ndarray, bias: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """dout (..., OC), x (..., C), weight (C, OC)  ->  dx (..., C), dweight (C, OC), dbias (OC,)

    Leading axes are flattened into one "row" axis, so dweight is a single matmul over all
    B*T rows: dweight = x_rowsᵀ @ dout_rows.
    bias=False: the forward had no bias (bias None), and dbias is None.
    """
    C, OC = weight.shape
    dx = dout @ weight.T
    dweight = x.reshape(-1, C).T @ dout.reshape(-1, OC)
    dbias = dout.reshape(-1, OC).sum(axis=0) if bias else None
    return dx, dweight, dbias


# ----------------------------------------------------------------------------- gelu
GELU_SCALE = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715


def gelu_forward(x: np.ndarray) -> np.ndarray:
    """GPT-2's GELU, the tanh approximation (not the exact erf form):

    x (...)  ->  out (...) = 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
    """
    return 0.5 * x * (1.0 + np.tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x)))


def gelu_backward(dout: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dout (...), x (...)  ->  dx (...)

    With u = sqrt(2/pi) (x + 0.044715 x^3) and th = tanh(u):
        d out / dx = 0.5 (1 + th) + 0.5 x (1 - th^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    """
    th = np.tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x))
    du_dx = GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x)
    return dout * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du_dx)


# ----------------------------------------------------------------------------- silu, swiglu
def sigmoid(x: np.ndarray) -> np.ndarray:
    """x (...)  ->  1 / (1 + exp(-x)) (...)

    For very negative x, exp(-x) overflows to inf and 1 / (1 + inf) = 0, the right limit; the
    overflow warning is silenced. (For x -> +inf, exp(-x) -> 0 and the result -> 1.)
    """
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def silu_forward(x: np.ndarray) -> np.ndarray:
    """SiLU ("swish"): x (...)  ->  out (...) = x * sigmoid(x)"""
    return x * sigmoid(x)


def silu_backward(dout: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dout (...), x (...)  ->  dx (...)

    With s = sigmoid(x), s' = s (1 - s):
        d out / dx = s + x s (1 - s) = s (1 + x (1 - s))
    """
    s = sigmoid(x)
    return dout * (s * (1.0 + x * (1.0 - s)))


def swiglu_forward(fc: np.ndarray) -> np.ndarray:
    """The gated MLP's nonlinearity, in place of GELU; fc is the fused output of c_fc = [gate | up].

    fc (..., 2H)  ->  out (..., H)
    a = fc[..., :H] (the gate),  u = fc[..., H:] (the up projection),  out = silu(a) * u
    """
    H = fc.shape[-1] // 2
    a, u = fc[..., :H], fc[..., H:]
    return silu_forward(a) * u


def swiglu_backward(dout: np.ndarray, fc: np.ndarray) -> np.ndarray:
    """dout (..., H), fc (..., 2H)  ->  dfc (..., 2H) = [da | du]

    out = silu(a) * u is a product, so each factor's gradient is dout times the other factor:
        du = dout * silu(a),   da = silu_backward(dout * u, a) = dout * u * s (1 + a (1 - s))
    """
    H = fc.shape[-1] // 2
    a, u = fc[..., :H], fc[..., H:]
    da = silu_backward(dout * u, a)
    du = dout * silu_forward(a)
    return np.concatenate([da, du], axis=-1)


# ----------------------------------------------------------------------------- residual
def residual_forward(x: np.ndarray, branch: np.ndarray) -> np.ndarray:
    """x (B, T, C), branch (B, T, C)  ->  out (B, T, C) = x + branch"""
    return x + branch


def residual_backward(dout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dout (B, T, C)  ->  dx, dbranch: an add passes its gradient unchanged to both inputs."""
    return dout, dout


# ----------------------------------------------------------------------------- head (tied or not)
def lm_head_forward(x: np.ndarray, wte: np.ndarray) -> np.ndarray:
    """The output head shares the token embedding: logits = x @ wteᵀ.

    x (B, T, C), wte (V, C)  ->  logits (B, T, V)
    An untied head (tied_head=False) is the same op with lm_head.weight (V, C) in place of wte.
    """
    return x @ wte.T


def lm_head_backward(dlogits: np.ndarray, x: np.ndarray, wte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dlogits (B, T, V), x (B, T, C), wte (V, C)  ->  dx (B, T, C), dwte_head (V, C)

    dwte_head is only the head's share of the wte gradient; the embedding's scatter-add
    is added to it by the model. (Untied: it is the whole gradient of lm_head.weight.)
    """
    V, C = wte.shape
    dx = dlogits @ wte
    dwte_head = dlogits.reshape(-1, V).T @ x.reshape(-1, C)
    return dx, dwte_head


# ----------------------------------------------------------------------------- softmax + cross-entropy
def softmax_forward(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis: logits (..., V) -> probs (..., V)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def crossentropy_forward(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy over the positions whose target is not IGNORE_INDEX (-1).

    logits (B, T, V), targets (B, T) ints in [0, V) or -1  ->  loss (float), probs (B, T, V)

    loss = mean over counted (b, t) of  -log softmax(logits[b, t])[targets[b, t]]
    The log-probability is computed as z - log(sum(exp(z))) with z = logits - max, which
    stays finite even where the softmax probability underflows to zero.
    """
    counted = targets != IGNORE_INDEX
    n = int(counted.sum())
    if n == 0:
        raise ValueError("targets: every position is -1 (ignored), so the mean loss is undefined")
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    sum_e = e.sum(axis=-1, keepdims=True)
    probs = e / sum_e
    safe_targets = np.where(counted, targets, 0)
    z_target = np.take_along_axis(z, safe_targets[..., None], axis=-1)[..., 0]
    nll = np.log(sum_e[..., 0]) - z_target  # (B, T)
    loss = float(nll[counted].sum() / n)
    return loss, probs


def crossentropy_backward(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """probs (B, T, V), targets (B, T)  ->  dlogits (B, T, V), for d loss (the mean) / d logits.

    For a counted position: (probs - onehot(target)) / n_counted; ignored positions get 0.
    """
    counted = targets != IGNORE_INDEX
    n = int(counted.sum())
    dlogits = probs * (counted[..., None] / n).astype(probs.dtype)
    b, t = np.nonzero(counted)
    dlogits[b, t, targets[b, t]] -= 1.0 / n
    return dlogits
