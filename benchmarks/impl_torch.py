"""PyTorch as benchmark callables: torch's own kernels per op, and torch_impl.model.GPT2 whole.

Per op, the torch calls GPT-2 needs (F.layer_norm, F.gelu(approximate="tanh"), torch.addmm,
torch_impl's math / SDPA attention, F.cross_entropy): what torch's kernels cost. bfloat16
backends feed bfloat16 tensors to the ops, and run the model in float32 parameters under
torch.autocast(bfloat16) (mixed precision, as training runs it). float32 keeps torch's
default of full-precision float32 matmuls (no TF32).

Backward callables reuse one autograd graph (retain_graph=True) and time the backward alone.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch
import torch.nn.functional as F

from torch_impl.model import GPT2, apply_rope, attention_math, attention_sdpa
from torch_impl.optim import adamw_groups

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
LR = 1e-4
MODEL_ATTENTION = "sdpa"


def synchronize() -> None:
    torch.cuda.synchronize()


def device_name() -> str:
    return torch.cuda.get_device_name()


def _attention(qkv: torch.Tensor, n_head: int, kernel) -> torch.Tensor:
    """qkv (B, T, 3C) -> (B, T, C) through q, k, v of shape (B, NH, T, HS)."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    q, k, v = qkv.view(B, T, 3, n_head, C // n_head).permute(2, 0, 3, 1, 4)
    return kernel(q, k, v).transpose(1, 2).reshape(B, T, C)


def _op_function(inputs):
    """op -> (function of the float tensors, names of its differentiable inputs)."""
    C, NH, eps = inputs.C, inputs.NH, inputs.eps
    return {
        "matmul": (lambda t: torch.addmm(t["b"], t["x"], t["w"]), ("x", "w", "b")),
        "layernorm": (lambda t: F.layer_norm(t["x"], (C,), t["w"], t["b"], eps), ("x", "w", "b")),
        "gelu": (lambda t: F.gelu(t["x"], approximate="tanh"), ("x",)),
        "attention-naive": (lambda t: _attention(t["qkv"], NH, attention_math), ("qkv",)),
        "attention-tiled": (lambda t: _attention(t["qkv"], NH, attention_sdpa), ("qkv",)),
        # As the model computes its loss: logits upcast to float32 at least.
        "crossentropy": (
            lambda t: F.cross_entropy(t["logits"].reshape(-1, inputs.V).float(), t["targets"].reshape(-1)),
            ("logits",),
        ),
        "rmsnorm": (lambda t: F.rms_norm(t["x"], (C,), t["w"], eps), ("x", "w")),
        "swiglu": (lambda t: F.silu(t["fc"][..., : inputs.H]) * t["fc"][..., inputs.H :], ("fc",)),
        "rope": (lambda t: _rope(t["qkv"], inputs), ("qkv",)),
    }[inputs.op]


def _rope(qkv: torch.Tensor, inputs) -> torch.Tensor:
    """qkv (B, T, (NH + 2 NKV) HS) with its q and k heads rotated by position (torch_impl.model.apply_rope)."""
    B, T, W = qkv.shape
    NH, NKV = inputs.NH, inputs.NKV
    HS = W // (NH + 2 * NKV)
    heads = qkv.view(B, T, NH + 2 * NKV, HS).transpose(1, 2)  # (B, heads, T, HS)
    cos, sin = _rope_tables(T, HS, inputs.theta, str(qkv.device))
    qk = apply_rope(heads[:, : NH + NKV], cos, sin)
    return torch.cat([qk, heads[:, NH + NKV :]], dim=1).transpose(1, 2).reshape(B, T, W)


@functools.lru_cache(maxsize=8)
def _rope_tables(T: int, HS: int, theta: float, device: str):
    """cos, sin (T, HS/2) of the angles t * theta^(-2i/HS), in float64 and then rounded (made once, as a model does)."""
    i = torch.arange(HS // 2, dtype=torch.float64, device=device)
    angle = torch.arange(T, dtype=torch.float64, device=device)[:, None] * theta ** (-2.0 * i / HS)
    return angle.cos().float(), angle.sin().float()


def _tensors(inputs, backend, requires_grad: tuple[str, ...] = ()):
    dtype = DTYPES[backend.dtype]
    out = {}
    for k, v in inputs.arrays.items():
        if v.dtype.kind in "iu":
            out[k] = torch.from_numpy(v.astype(np.int64)).to(backend.device)
        else:
            out[k] = torch.from_numpy(v).to(device=backend.device, dtype=dtype).requires_grad_(k in requires_grad)
    return out


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def device_time(launches, n_launches: int, rounds: int, warmup: int, graph: bool = True) -> dict:
    """Device time per call: n_launches calls (cycling over `launches`) recorded in one CUDA graph
    (torch.cuda.CUDAGraph), the replays timed with CUDA events. graph=False: the n_launches calls
    queued back to back between two CUDA events (for autograd's backward, which is not captured here)."""
    if not graph:
        return _events_time(launches, n_launches, rounds, warmup)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the default stream, as torch's graph capture asks
        for _ in range(2):
            for launch in launches:
                launch()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(n_launches):
            launches[i % len(launches)]()
    for _ in range(warmup):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / n_launches)
    del graph
    return {"device_time_s": float(np.median(times)), "device_time_min_s": float(min(times)),
            "device_time_method": f"CUDA graph of {n_launches} launches, median of {rounds} replays"}  # fmt: skip


def _events_time(launches, n_launches: int, rounds: int, warmup: int) -> dict:
    for _ in range(warmup):
        for launch in launches:
            launch()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(n_launches):
            launches[i % len(launches)]()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / n_launches)
    return {"device_time_s": float(np.median(times)), "device_time_min_s": float(min(times)),
            "device_time_method": f"CUDA events around {n_launches} back-to-back calls, median of {rounds}: "
                                  "the host's launch cost is hidden only where the kernels take longer"}  # fmt: skip


def make_op(backend, inputs, direction):
    """(callable, to_numpy) for `inputs.op` in `direction` ("forward" | "backward")."""
    fn, diff = _op_function(inputs)
    if direction == "forward":
        t = _tensors(inputs, backend)

        def forward():
            with torch.no_grad():
                return fn(t)

        return forward, _to_numpy
    t = _tensors(inputs, backend, requires_grad=diff)
    out = fn(t)
    grad_out = None if out.dim() == 0 else t["dout"].to(out.dtype)
    wrt = [t[k] for k in diff]
    return (lambda: torch.autograd.grad(out, wrt, grad_out, retain_graph=True)[0]), _to_numpy


def op_launches(backend, inputs, direction, n_sets: int):
    """n_sets independent copies of the op's tensors, each as one callable (forward, or the backward
    through its own retained autograd graph)."""
    return [make_op(backend, inputs, direction)[0] for _ in range(n_sets)]


def attention_fwd_bwd(backend, inputs, variant):
    """One forward + backward of attention ("naive" = math, "tiled" = SDPA)."""
    kernel = attention_math if variant == "naive" else attention_sdpa
    t = _tensors(inputs, backend, requires_grad=("qkv",))

    def run():
        out = _attention(t["qkv"], inputs.NH, kernel)
        return torch.autograd.grad(out, [t["qkv"]], t["dout"].to(out.dtype))[0]

    return run


def cuda_peak_bytes(fn) -> int:
    """Peak CUDA memory torch allocated while fn ran, beyond what was allocated before (inputs)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def make_model(backend, params, config, idx, targets, task):
    """(callable, loss_of) for one whole-model `task`: "forward" | "forward-backward" | "train-step"."""
    device = backend.device
    model = GPT2.from_params(params, config, device=device, dtype=torch.float32, attention=MODEL_ATTENTION)
    idx_t = torch.from_numpy(idx.astype(np.int64)).to(device)
    targets_t = torch.from_numpy(targets.astype(np.int64)).to(device)
    autocast = (
        (lambda: torch.autocast(device_type=device, dtype=torch.bfloat16))
        if backend.dtype == "bfloat16"
        else contextlib.nullcontext
    )
    loss_of = lambda loss: float(loss)

    if task == "forward":

        def forward():
            with torch.no_grad(), autocast():
                return model(idx_t, targets_t)[1]

        return forward, loss_of

    def forward_backward():
        model.zero_grad(set_to_none=True)
        with autocast():
            _, loss = model(idx_t, targets_t)
        loss.backward()
        return loss.detach()

    if task == "forward-backward":
        return forward_backward, loss_of
    # AdamW as the contract states it: weight decay on 2-D tensors only (torch_impl/optim.py); fused on CUDA.
    opt = torch.optim.AdamW(
        adamw_groups(model.named_parameters(), 0.1),
        lr=LR, betas=(0.9, 0.95), eps=1e-8, fused=device == "cuda",
    )  # fmt: skip

    def train_step():
        loss = forward_backward()
        opt.step()
        return loss

    return train_step, loss_of


def make_matmul(backend, M, N, K, layout, k_chunk, a_host, b_host):
    """(callable, to_numpy) of out(M, N) = A @ B through torch.matmul (cuBLAS on CUDA), A and B stored
    as `layout` says; transposes are views, as in torch's linear layers. float32 stays IEEE float32
    (torch's default: no TF32). k_chunk is the Numba kernels' concern (cuBLAS sums K its own way)."""
    return matmul_launches(backend, M, N, K, layout, k_chunk, a_host, b_host, 1)[0], _to_numpy


def matmul_launches(backend, M, N, K, layout, k_chunk, a_host, b_host, n_sets: int):
    """n_sets independent copies of the product's operands, each as one callable (see `make_matmul`)."""
    dtype = DTYPES[backend.dtype]
    launches = []
    for _ in range(n_sets):
        a = torch.from_numpy(a_host).to(device=backend.device, dtype=dtype)
        b = torch.from_numpy(b_host).to(device=backend.device, dtype=dtype)
        op_a = a.T if layout[0] == "T" else a
        op_b = b.T if layout[1] == "T" else b
        launches.append(lambda op_a=op_a, op_b=op_b: torch.matmul(op_a, op_b))
    return launches


def matmul_reference(M, N, K, layout, a_host, b_host) -> np.ndarray | None:
    """A @ B in float64 on the GPU (cuBLAS DGEMM: milliseconds where NumPy would take seconds), or
    None without a CUDA GPU."""
    if not torch.cuda.is_available():
        return None
    a = torch.from_numpy(a_host).to(device="cuda", dtype=torch.float64)
    b = torch.from_numpy(b_host).to(device="cuda", dtype=torch.float64)
    out = torch.matmul(a.T if layout[0] == "T" else a, b.T if layout[1] == "T" else b)
    return out.cpu().numpy()


def make_device_copy(n_bytes: int):
    """A device-to-device copy of n_bytes (float32) through torch: the device's copy bandwidth, the
    ceiling of memory-bound kernels. The callable's `moved_bytes` counts bytes read + written."""
    n = n_bytes // 4
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)

    def run():
        return dst.copy_(src)

    run.moved_bytes = 2 * 4 * n
    return run
