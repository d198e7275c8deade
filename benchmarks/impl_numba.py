"""The Numba CUDA kernels as benchmark callables: each op's launchers, and numba_impl's NumbaGPT2.

The backend's variant (benchmarks/backends.py) picks the configuration: "" = float32 kernels,
eager; "graphs" = the same, each model step recorded once and replayed as a CUDA graph;
"3xtf32" = the matmuls on the tensor cores (kernels/matmul_3xtf32.py).

Inputs go to the device once, as flat float32 arrays (the layout the kernels take); the
outputs and scratch of every op are allocated once too, so a timed call is the kernel
launches and nothing else. Kernels that accumulate (the LayerNorm and matmul backwards add
into their gradients) keep doing so across rounds: the time does not depend on the values,
and the correctness check reads the first call, which starts from zeros.
"""

from __future__ import annotations

import numpy as np

from numba_impl._compat import SIMULATOR, cuda
from numba_impl.kernels.attention import (
    attention_backward_flash,
    attention_backward_naive,
    attention_forward_flash,
    attention_forward_naive,
)
from numba_impl.kernels.crossentropy import crossentropy
from numba_impl.kernels.gelu import gelu_backward, gelu_forward
from numba_impl.kernels.layernorm import layernorm_backward, layernorm_forward
from numba_impl.kernels.matmul import matmul_backward, matmul_forward
from numba_impl.kernels.rmsnorm import rmsnorm_backward, rmsnorm_forward
from numba_impl.kernels.rope import rope_backward, rope_forward, rope_tables
from numba_impl.kernels.swiglu import swiglu_backward, swiglu_forward
from numba_impl.model import HEAD_K_CHUNK, NumbaGPT2

LR = 1e-4
MODEL_ATTENTION = "flash"


def synchronize() -> None:
    cuda.synchronize()


def device_name() -> str:
    if SIMULATOR:
        return "Numba CUDA simulator (on the CPU)"
    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)


def _device(a: np.ndarray):
    if a.dtype.kind in "iu":
        return cuda.to_device(np.ascontiguousarray(a, dtype=np.int32).ravel())
    return cuda.to_device(np.ascontiguousarray(a, dtype=np.float32).ravel())


def _zeros(n: int):
    return cuda.to_device(np.zeros(n, dtype=np.float32))


def _host(d, shape) -> np.ndarray:
    return d.copy_to_host().reshape(shape).astype(np.float64)


def _matmul_module(variant: str):
    """The module whose matmul / matmul_forward / matmul_backward launchers the variant uses."""
    if variant == "3xtf32":
        from numba_impl.kernels import matmul_3xtf32

        return matmul_3xtf32
    from numba_impl.kernels import matmul

    return matmul


class _Op:
    """One op's device buffers and its forward / backward launches (shapes as in benchmarks/cases.py)."""

    def __init__(self, inputs, attention: str | None = None, variant: str = ""):
        self.variant = variant
        self.i = inputs
        self.d = {k: _device(v) for k, v in inputs.arrays.items()}
        B, T, C, NH, V, N = inputs.B, inputs.T, inputs.C, inputs.NH, inputs.V, inputs.N
        op = inputs.op
        shapes = {  # name -> element count of each work buffer (outputs and scratch, not inputs)
            "matmul": {"out": N * 4 * C, "dx": N * C, "dw": C * 4 * C, "db": 4 * C},
            "layernorm": {"out": N * C, "mean": N, "rstd": N, "dx": N * C, "dw": C, "db": C},
            "gelu": {"out": N * 4 * C, "dx": N * 4 * C},
            "crossentropy": {"losses": N, "dlogits": N * V},
            "rmsnorm": {"out": N * C, "rstd": N, "dx": N * C, "dw": C},
            "swiglu": {"out": N * inputs.H, "dx": N * 2 * inputs.H},
            "rope": {
                "out": inputs.arrays["qkv"].size if op == "rope" else 0,
                "dx": inputs.arrays.get("qkv", []).size if op == "rope" else 0,
            },  # fmt: skip
        }
        if op.startswith("attention"):
            self.kind = attention or ("naive" if op == "attention-naive" else "flash")
            BNHT = B * NH * T
            extra = {"preatt": BNHT * T, "att": BNHT * T, "datt": BNHT * T, "dpreatt": BNHT * T}
            if self.kind == "flash":
                extra = {"lse": BNHT, "delta": BNHT}
            shapes[op] = {"out": B * T * C, "dx": B * T * 3 * C, **extra}
        self.sizes = shapes[op]
        self.w = {k: _zeros(n) for k, n in self.sizes.items()}
        if op == "rope":  # the model's tables: float64 angles, rounded once, on the device
            self.HS = inputs.arrays["qkv"].shape[-1] // (NH + 2 * inputs.NKV)
            self.cos, self.sin = (cuda.to_device(t.ravel()) for t in rope_tables(T, self.HS, inputs.theta))

    @property
    def work_bytes(self) -> int:
        """Bytes of the outputs and scratch the op needs beyond its inputs (float32)."""
        return 4 * sum(self.sizes.values())

    def forward(self):
        i, d, w = self.i, self.d, self.w
        B, T, C, NH, V, N = i.B, i.T, i.C, i.NH, i.V, i.N
        op = i.op
        if op == "matmul":
            forward = _matmul_module(self.variant).matmul_forward if self.variant else matmul_forward
            forward(w["out"], d["x"], d["w"], d["b"], N, C, 4 * C)
        elif op == "layernorm":
            layernorm_forward(w["out"], w["mean"], w["rstd"], d["x"], d["w"], d["b"], N, C, i.eps)
        elif op == "gelu":
            gelu_forward(w["out"], d["x"], N * 4 * C)
        elif op == "crossentropy":
            crossentropy(w["losses"], w["dlogits"], d["logits"], d["targets"], N, V, 1.0 / N, with_grad=False)
            return w["losses"]
        elif op == "rmsnorm":
            rmsnorm_forward(w["out"], w["rstd"], d["x"], d["w"], N, C, i.eps)
        elif op == "swiglu":
            swiglu_forward(w["out"], d["fc"], N, i.H)
        elif op == "rope":
            rope_forward(w["out"], d["qkv"], self.cos, self.sin, B, T, NH, i.NKV, self.HS)
        elif self.kind == "naive":
            attention_forward_naive(w["out"], w["preatt"], w["att"], d["qkv"], B, T, C, NH)
        else:
            attention_forward_flash(w["out"], w["lse"], d["qkv"], B, T, C, NH)
        return w["out"]

    def backward(self):
        i, d, w = self.i, self.d, self.w
        B, T, C, NH, V, N = i.B, i.T, i.C, i.NH, i.V, i.N
        op = i.op
        if op == "matmul":
            backward = _matmul_module(self.variant).matmul_backward if self.variant else matmul_backward
            backward(w["dx"], w["dw"], w["db"], d["dout"], d["x"], d["w"], N, C, 4 * C)
        elif op == "layernorm":
            layernorm_backward(w["dx"], w["dw"], w["db"], d["dout"], d["x"], d["w"], w["mean"], w["rstd"], N, C)
        elif op == "gelu":
            gelu_backward(w["dx"], d["x"], d["dout"], N * 4 * C)
        elif op == "crossentropy":  # one fused kernel: loss and dlogits together
            crossentropy(w["losses"], w["dlogits"], d["logits"], d["targets"], N, V, 1.0 / N, with_grad=True)
            return w["dlogits"]
        elif op == "rmsnorm":
            rmsnorm_backward(w["dx"], w["dw"], d["dout"], d["x"], d["w"], w["rstd"], N, C)
        elif op == "swiglu":
            swiglu_backward(w["dx"], d["fc"], d["dout"], N, i.H)
        elif op == "rope":
            rope_backward(w["dx"], d["dout"], self.cos, self.sin, B, T, NH, i.NKV, self.HS)
        elif self.kind == "naive":
            attention_backward_naive(w["dx"], w["datt"], w["dpreatt"], d["dout"], w["att"], d["qkv"], B, T, C, NH)
        else:
            attention_backward_flash(w["dx"], w["delta"], d["dout"], w["out"], w["lse"], d["qkv"], B, T, C, NH)
        return w["dx"]

    def out_shape(self, direction):
        i = self.i
        if i.op == "crossentropy":
            return (i.B, i.T) if direction == "forward" else (i.B, i.T, i.V)
        if i.op == "swiglu":
            return (i.N, 2 * i.H) if direction == "backward" else (i.N, i.H)
        first = i.arrays["qkv" if i.op.startswith("attention") or i.op == "rope" else "x"].shape
        if direction == "backward" or i.op in ("rmsnorm", "rope"):
            return first
        return {"matmul": (i.N, 4 * i.C), "layernorm": first, "gelu": first}.get(i.op, (i.B, i.T, i.C))


def device_time(launches, n_launches: int, rounds: int, warmup: int, graph: bool = True) -> dict:
    """Device time per call: n_launches calls (cycling over `launches`) recorded in one CUDA graph
    (numba_impl/graph.py), the replays timed with CUDA events on the graph's stream."""
    from numba_impl._compat import launch_stream
    from numba_impl.graph import CapturedGraph, graphs_unavailable

    why = graphs_unavailable()
    if why:
        raise RuntimeError(why)
    stream = cuda.stream()
    with launch_stream(stream):
        for launch in launches:  # compile, load and allocate scratch before the capture
            launch()
    stream.synchronize()

    def record():
        with launch_stream(stream):
            for i in range(n_launches):
                launches[i % len(launches)]()

    graph = CapturedGraph(stream, record)
    for _ in range(warmup):
        graph.replay()
    stream.synchronize()
    times = []
    for _ in range(rounds):
        start, end = cuda.event(), cuda.event()
        start.record(stream=stream)
        graph.replay()
        end.record(stream=stream)
        end.synchronize()
        times.append(cuda.event_elapsed_time(start, end) / 1e3 / n_launches)
    return {"device_time_s": float(np.median(times)), "device_time_min_s": float(min(times)),
            "device_time_method": f"CUDA graph of {n_launches} launches, median of {rounds} replays"}  # fmt: skip


def make_op(backend, inputs, direction):
    """(callable, to_numpy) for `inputs.op` in `direction` ("forward" | "backward")."""
    op = _Op(inputs, variant=backend.variant)
    shape = op.out_shape(direction)
    if direction == "forward":
        to_numpy = lambda r: _host(r, shape)
        if inputs.op == "crossentropy":  # per-row losses -> their mean, the loss
            to_numpy = lambda r: np.asarray(_host(r, shape).mean())
        return op.forward, to_numpy
    op.forward()
    return op.backward, lambda r: _host(r, shape)


def op_launches(backend, inputs, direction, n_sets: int):
    """n_sets independent copies of the op (inputs, outputs, scratch), each as one callable."""
    ops = [_Op(inputs, variant=backend.variant) for _ in range(n_sets)]
    for op in ops:
        op.forward()  # the backward's saved state (the forward's outputs)
    return [op.forward if direction == "forward" else op.backward for op in ops]


def attention_fwd_bwd(backend, inputs, variant):
    """One forward + backward of attention ("naive" | "tiled" = flash); `.work_bytes` on the callable."""
    op = _Op(inputs, attention="naive" if variant == "naive" else "flash")

    def run():
        op.forward()
        return op.backward()

    run.work_bytes = op.work_bytes
    return run


def make_model(backend, params, config, idx, targets, task):
    """(callable, loss_of) for one whole-model `task`: "forward" | "forward-backward" | "train-step".

    Results stay on the device: no logits are copied back inside a timed call.
    """
    B, T = idx.shape
    options = {"cuda_graphs": backend.variant == "graphs"}
    if backend.variant == "3xtf32":
        options["matmul"] = "3xtf32"
    m = NumbaGPT2(params, config, max_batch=B, max_seq=T, attention=MODEL_ATTENTION, **options)
    if task == "forward":  # logits and losses stay on the GPU
        run = lambda: m.forward_device(idx, targets)
        return run, lambda _: float(m.losses[: B * T].copy_to_host().astype(np.float64).mean())

    def forward_backward():
        m.forward_backward_device(idx, targets)

    if task == "forward-backward":
        return forward_backward, lambda _: m.loss()

    def train_step():  # forward, backward, AdamW: one graph replay with cuda_graphs
        m.step_device(idx, targets, lr=LR)

    return train_step, lambda _: m.loss()


def make_matmul(backend, M, N, K, layout, k_chunk, a_host, b_host):
    """(callable, to_numpy) of out(M, N) = A @ B for one matmul shape, A and B stored as `layout`
    says (benchmarks/cases.py MATMUL_SHAPES); k_chunk as the model uses it (the head's backward)."""
    run = matmul_launches(backend, M, N, K, layout, k_chunk, a_host, b_host, 1)[0]
    return run, lambda r: r.copy_to_host().reshape(M, N)


def matmul_launches(backend, M, N, K, layout, k_chunk, a_host, b_host, n_sets: int):
    """n_sets independent copies of the product (A, B, out), each as one callable returning its out."""
    module = _matmul_module(backend.variant)
    head_chunk = HEAD_K_CHUNK if k_chunk else None
    launches = []
    for _ in range(n_sets):
        a, b = cuda.to_device(a_host.ravel()), cuda.to_device(b_host.ravel())
        out = cuda.device_array(M * N, np.float32)

        def run(a=a, b=b, out=out):
            module.matmul(out, a, b, M, N, K, layout, k_chunk=head_chunk)
            return out

        launches.append(run)
    return launches
