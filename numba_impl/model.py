"""GPT-2 on the GPU, every op a Numba CUDA kernel: the model driver.

    m = NumbaGPT2(params, config, max_batch=4, max_seq=1024)
    logits, loss = m.forward(idx, targets=None)          # numpy in, numpy out
    logits, loss, grads = m.forward_backward(idx, targets)
    m.adamw_step(lr=1e-3)                                 # uses the gradients of the last backward
    m.adamw_step(lr=1e-4, decay="all")                    # weight decay on every tensor (llm.c's choice)
    params = m.to_params()

Everything lives on the device and is allocated once, in the constructor, for
(max_batch, max_seq): the parameters, their gradients and the AdamW moments as three flat
float32 buffers (each tensor a view into them, 2-D tensors first so that weight decay is one
range), every activation the backward needs, and the backward's scratch. A call with a smaller
(B, T) uses the leading part of each buffer.

AdamW's decay set (docs/contract.md: "matrices", "all" or a collection of names). The kernel decays
the leading n_decay values of the range it is launched on, so a decay set becomes a few launches,
each over a run of tensors whose decayed ones come first (`_adamw_launches`): "matrices" is one
launch over the whole buffer with n_decay = the 2-D tensors' values (exactly the launch of a model
without decay sets), "all" one launch with n_decay = everything, any other set one launch per run.

The forward pass, per block (x is the residual stream, (B, T, C); layer outputs kept for the backward):

    ln1  = layernorm(x)             qkv = ln1 @ W_attn + b          atty = attention(qkv)
    x1   = x + (atty @ W_proj + b)  ln2 = layernorm(x1)             fch  = ln2 @ W_fc + b
    gelu = gelu(fch)                x2  = x1 + (gelu @ W_mlp + b)

then lnf = layernorm(x_L), logits = lnf @ wte^T and the fused softmax + cross-entropy.

The variants of the config (docs/variants.md) swap single ops and size the buffers; GPT-2's config
runs exactly the kernels above, in the same order:

    position "rope"   no wpe in the embedding; rope = RoPE(qkv) (kernels/rope.py, the q and k heads
                      rotated into a buffer of their own, v copied), and attention reads rope; the
                      backward rotates attention's dqkv back in place
    norm "rmsnorm"    kernels/rmsnorm.py at every norm (rstd saved, no mean, no bias)
    mlp "swiglu"      fch = ln2 @ W_fc (N, 2H: [gate | up]), act = swiglu(fch) (kernels/swiglu.py) in
                      place of the matmul's fused GELU epilogue
    n_kv_head         grouped-query attention: qkv (N, (NH + 2 NKV) HS); the attention kernels read kv
                      head h // (NH/NKV) and sum the group's dk, dv
    bias False        bias=None / dbias=None in every matmul and LayerNorm
    tied_head False   logits = lnf @ lm_head^T; lm_head's gradient from the head, wte's from the embedding

The backward walks the same list in reverse. The gradient of the residual stream lives in one
buffer, `dresidual`: a residual add passes its gradient to both branches unchanged, so the branch
reads `dresidual` as its output gradient and the LayerNorm backward at the branch's start adds
its input gradient into `dresidual` (no copy, no separate residual-backward launch).

Kernel choice: kernels="fast" (tiled matmul, warp LayerNorm, block cross-entropy, chained
embedding scatter) or "naive" (the simple twin of each); attention="flash" or "naive";
matmul="fp32" (kernels/matmul.py, SIMT float32) or "3xtf32" (kernels/matmul_3xtf32.py, tensor
cores at float32 accuracy; with kernels="fast" only).

Launches and CUDA graphs. Every launch of the model goes on the model's own stream
(`self.stream`, through `_compat.launch_stream`), and a step is split into two halves:
`_upload_*` copies the step's inputs (token ids, targets, AdamW's hyperparameters) into fixed
device buffers, and `_launch_*` queues kernels that read only device buffers. The second half
is therefore the same sequence of launches with the same arguments every step of a given shape,
which is what a CUDA graph records: with cuda_graphs=True, `forward_backward_device`, `step` and
`forward_device` record their launches once per (B, T, kept targets) and replay them
(numba_impl/graph.py); without a GPU (the simulator) they run eagerly and `graph_note` says why.
"""

from __future__ import annotations

import warnings

import numpy as np

from numba_impl._compat import cuda, launch_stream, zero_fill
from numba_impl.graph import CapturedGraph, graphs_unavailable
from numba_impl.kernels import matmul as matmul_fp32
from numba_impl.kernels import matmul_3xtf32
from numba_impl.kernels.adamw import HYPER, adamw_hyperparameters, adamw_launch
from numba_impl.kernels.attention import (
    attention_backward_flash,
    attention_backward_naive,
    attention_forward_flash,
    attention_forward_naive,
)
from numba_impl.kernels.crossentropy import crossentropy
from numba_impl.kernels.encoder import encoder_backward_chained, encoder_backward_naive, encoder_forward
from numba_impl.kernels.gelu import gelu_backward
from numba_impl.kernels.layernorm import (
    layernorm_backward,
    layernorm_backward_naive,
    layernorm_forward,
    layernorm_forward_naive,
)
from numba_impl.kernels.rmsnorm import (
    rmsnorm_backward,
    rmsnorm_backward_naive,
    rmsnorm_forward,
    rmsnorm_forward_naive,
)
from numba_impl.kernels.rope import rope_backward, rope_forward, rope_tables
from numba_impl.kernels.swiglu import swiglu_backward, swiglu_forward
from weights import GPT2Config, param_shapes, validate_params
from weights.flops import training_flops_per_token
from weights.layout import block_activations

# The head's backward sums over the whole vocabulary: no float32 running sum longer than this
# (see `matmul`'s k_chunk; the fast kernel closes the chunks in registers, in one launch).
HEAD_K_CHUNK = 1024

KERNEL_SETS = ("fast", "naive")
ATTENTIONS = ("flash", "naive")
MATMULS = {"fp32": matmul_fp32, "3xtf32": matmul_3xtf32}  # the module whose matmul / _forward / _backward run

# Per-block activations the backward reads (multiples of B*T wide; "rope" only with rotary positions),
# and the contract's name of each (docs/contract.md; "act" is "gelu" or "swiglu").
_BLOCK_ACTS = {"ln1": "ln_1", "qkv": "qkv", "rope": "rope", "atty": "attn", "attproj": "attn_proj", "x1": "resid_1",
               "ln2": "ln_2", "fch": "fc", "act": None, "mlpproj": "mlp_proj", "x2": "resid_2"}  # fmt: skip


class NumbaGPT2:
    """GPT-2 forward, backward and AdamW on the GPU; see the module docstring."""

    def __init__(
        self,
        params: dict[str, np.ndarray],
        config: GPT2Config,
        max_batch: int = 1,
        max_seq: int | None = None,
        kernels: str = "fast",
        attention: str = "flash",
        cuda_graphs: bool = False,
        matmul: str = "fp32",
    ):
        validate_params(params, config)
        max_seq = config.n_ctx if max_seq is None else max_seq
        if not (isinstance(max_batch, int) and max_batch >= 1):
            raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
        if not (isinstance(max_seq, int) and 1 <= max_seq <= config.n_ctx):
            raise ValueError(f"max_seq must be an int in [1, n_ctx={config.n_ctx}], got {max_seq!r}")
        if kernels not in KERNEL_SETS:
            raise ValueError(f"kernels must be one of {KERNEL_SETS}, got {kernels!r}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if matmul not in MATMULS:
            raise ValueError(f"matmul must be one of {tuple(MATMULS)}, got {matmul!r}")
        if matmul == "3xtf32" and kernels == "naive":
            raise ValueError("matmul='3xtf32' needs kernels='fast' (the tensor-core matmul has no naive version)")
        self.mm = MATMULS[matmul]
        self.config = config
        self.max_batch, self.max_seq = max_batch, max_seq
        self.naive = kernels == "naive"
        self.attention = attention
        self.step_count = 0  # AdamW steps taken
        # The stream every launch of the model goes on (a created stream: graph capture needs one;
        # it synchronises with the default stream, so plain copies back to the host wait for it).
        self.stream = cuda.stream()
        self.cuda_graphs = bool(cuda_graphs)
        self._graphs: dict[tuple, CapturedGraph] = {}
        # Why graphs are not used although asked for (None: they are, or were not asked for).
        self.graph_note = graphs_unavailable() if self.cuda_graphs else None
        if self.graph_note:
            warnings.warn(self.graph_note, RuntimeWarning, stacklevel=2)

        # ---- parameters, gradients, AdamW moments: flat buffers, 2-D tensors first
        shapes = param_shapes(config)
        self.names = [n for n, s in shapes.items() if len(s) == 2] + [n for n, s in shapes.items() if len(s) == 1]
        self.shapes = shapes
        self.offsets: dict[str, tuple[int, int]] = {}
        offset = 0
        for name in self.names:
            size = int(np.prod(shapes[name]))
            self.offsets[name] = (offset, size)
            offset += size
        self.n_params = offset
        self.n_decay = sum(self.offsets[n][1] for n in self.names if len(shapes[n]) == 2)
        self._adamw_runs = ((0, self.n_params, self.n_decay),)  # the launches of the last AdamW step
        flat = np.empty(self.n_params, dtype=np.float32)
        for name in self.names:
            o, n = self.offsets[name]
            flat[o : o + n] = np.asarray(params[name], dtype=np.float32).ravel()
        self.d_params = cuda.to_device(flat)
        self.d_grads = cuda.device_array(self.n_params, dtype=np.float32)
        self.d_m = cuda.to_device(np.zeros(self.n_params, dtype=np.float32))
        self.d_v = cuda.to_device(np.zeros(self.n_params, dtype=np.float32))
        self.p = {n: self.d_params[o : o + s] for n, (o, s) in self.offsets.items()}
        self.g = {n: self.d_grads[o : o + s] for n, (o, s) in self.offsets.items()}

        # ---- the variants (docs/variants.md): which kernels, how wide
        self.rope = config.position == "rope"
        self.rms = config.norm == "rmsnorm"
        self.swiglu = config.mlp == "swiglu"
        self.head = "wte.weight" if config.tied_head else "lm_head.weight"  # logits = lnf @ head^T

        # ---- activations (max_batch * max_seq rows)
        L, C, V, NH = config.n_layer, config.n_embd, config.vocab_size, config.n_head
        W, H, FW = config.qkv_width, config.hidden, config.fc_width  # qkv (NH + 2 NKV) HS; MLP hidden; c_fc
        N = max_batch * max_seq
        widths = {"ln1": C, "qkv": W, "rope": W, "atty": C, "attproj": C, "x1": C, "ln2": C,
                  "fch": FW, "act": H, "mlpproj": C, "x2": C}  # fmt: skip
        self.widths = widths
        empty = lambda n: cuda.device_array(n, dtype=np.float32)
        self.acts = []
        stats = ("ln1_rstd", "ln2_rstd") if self.rms else ("ln1_mean", "ln1_rstd", "ln2_mean", "ln2_rstd")
        for _ in range(L):
            a = {k: empty(N * widths[k]) for k in _BLOCK_ACTS if k != "rope" or self.rope}
            for k in stats:
                a[k] = empty(N)
            if attention == "naive":
                a["preatt"] = empty(max_batch * NH * max_seq * max_seq)
                a["att"] = empty(max_batch * NH * max_seq * max_seq)
            else:
                a["lse"] = empty(max_batch * NH * max_seq)
            self.acts.append(a)
        self.encoded = empty(N * C)
        self.lnf, self.lnf_rstd = empty(N * C), empty(N)
        self.lnf_mean = None if self.rms else empty(N)
        self.logits = empty(N * V)
        self.losses = empty(N)
        self.d_idx = cuda.device_array(N, dtype=np.int32)
        self.d_targets = cuda.device_array(N, dtype=np.int32)
        self.d_hyper = cuda.to_device(np.zeros(len(HYPER), dtype=np.float32))  # AdamW's, written each step
        self.d_next_pos = cuda.device_array(N, dtype=np.int32)  # embedding backward: token chains
        self.d_is_first = cuda.device_array(N, dtype=np.int32)
        if self.rope:  # cos, sin (n_ctx, HS/2) of every position: float64 angles rounded once, on the device
            cos, sin = rope_tables(config.n_ctx, config.head_size, config.rope_theta)
            self.d_cos, self.d_sin = cuda.to_device(cos.ravel()), cuda.to_device(sin.ravel())

        # ---- backward scratch
        self.dlogits = empty(N * V)
        self.dresidual = empty(N * C)
        self.dln = empty(N * C)
        self.datty = empty(N * C)
        self.dqkv = empty(N * W)
        self.dfch = empty(N * FW)
        self.dact = empty(N * H)  # the gradient of the MLP's activation (gelu or swiglu)
        if attention == "naive":
            self.datt = empty(max_batch * NH * max_seq * max_seq)
            self.dpreatt = empty(max_batch * NH * max_seq * max_seq)
        else:
            self.delta = empty(max_batch * NH * max_seq)
        self._shape = None  # (B, T) of the last forward
        self._n_valid = 0

    # ------------------------------------------------------------------ input checks
    def _check_idx(self, idx) -> np.ndarray:
        idx = np.asarray(idx)
        if idx.ndim != 2:
            raise ValueError(f"idx must be a (B, T) array of token ids, got shape {idx.shape}")
        if not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"idx must hold integers, got dtype {idx.dtype}")
        B, T = idx.shape
        if not 1 <= B <= self.max_batch:
            raise ValueError(f"batch size B={B} is outside [1, max_batch={self.max_batch}]")
        if not 1 <= T <= self.max_seq:
            raise ValueError(
                f"sequence length T={T} is outside [1, max_seq={self.max_seq}] (n_ctx={self.config.n_ctx})"
            )
        bad = (idx < 0) | (idx >= self.config.vocab_size)
        if bad.any():
            b, t = np.argwhere(bad)[0]
            raise ValueError(
                f"token id {idx[b, t]} at idx[{b}, {t}] is outside [0, vocab_size={self.config.vocab_size})"
            )
        return idx.astype(np.int32)

    def _check_targets(self, targets, shape) -> np.ndarray:
        targets = np.asarray(targets)
        if targets.shape != shape:
            raise ValueError(f"targets has shape {targets.shape}, expected {shape} (the shape of idx)")
        if not np.issubdtype(targets.dtype, np.integer):
            raise ValueError(f"targets must hold integers, got dtype {targets.dtype}")
        bad = (targets < -1) | (targets >= self.config.vocab_size)
        if bad.any():
            b, t = np.argwhere(bad)[0]
            raise ValueError(
                f"target {targets[b, t]} at targets[{b}, {t}] is outside [0, vocab_size={self.config.vocab_size}) "
                "and is not -1 (ignore)"
            )
        if not (targets >= 0).any():
            raise ValueError("every target is -1 (ignored): the mean cross-entropy is undefined")
        return targets.astype(np.int32)

    # ------------------------------------------------------------------ forward
    def _upload_inputs(self, idx: np.ndarray, targets: np.ndarray | None) -> None:
        """Copy token ids (and targets) into the fixed device buffers the launches read."""
        N = idx.size
        self._shape = idx.shape
        self.d_idx[:N].copy_to_device(idx.ravel(), stream=self.stream)
        self._n_valid = 0
        if targets is not None:
            self.d_targets[:N].copy_to_device(targets.ravel(), stream=self.stream)
            self._n_valid = int((targets >= 0).sum())

    def _forward(self, idx: np.ndarray, targets: np.ndarray | None, with_grad: bool) -> None:
        """Runs the forward pass on the device (and the loss / dlogits when targets are given), eagerly."""
        self._upload_inputs(idx, targets)
        with launch_stream(self.stream):
            self._launch_forward(targets is not None, with_grad)

    def _norm_forward(self, out, mean, rstd, x, weight, bias, N) -> None:
        """The config's norm: LayerNorm (bias None without biases) or RMSNorm (mean unused)."""
        C, eps = self.config.n_embd, self.config.layer_norm_eps
        if self.rms:
            (rmsnorm_forward_naive if self.naive else rmsnorm_forward)(out, rstd, x, weight, N, C, eps)
        else:
            (layernorm_forward_naive if self.naive else layernorm_forward)(out, mean, rstd, x, weight, bias, N, C, eps)

    def _norm_backward(self, dinp, dweight, dbias, dout, x, weight, mean, rstd, N) -> None:
        """Backward of `_norm_forward`: accumulates into dinp, dweight (and dbias, None without one)."""
        C = self.config.n_embd
        if self.rms:
            (rmsnorm_backward_naive if self.naive else rmsnorm_backward)(dinp, dweight, dout, x, weight, rstd, N, C)
        else:
            ln_backward = layernorm_backward_naive if self.naive else layernorm_backward
            ln_backward(dinp, dweight, dbias, dout, x, weight, mean, rstd, N, C)

    def _launch_forward(self, with_loss: bool, with_grad: bool) -> None:
        """Queue the forward pass for the uploaded inputs (kernel launches only)."""
        cfg = self.config
        B, T = self._shape
        C, NH, NKV, HS, V, N = cfg.n_embd, cfg.n_head, cfg.kv_heads, cfg.head_size, cfg.vocab_size, B * T
        W, H, FW = cfg.qkv_width, cfg.hidden, cfg.fc_width
        naive, mm = self.naive, self.mm

        encoder_forward(self.encoded, self.d_idx, self.p["wte.weight"], self.p.get("wpe.weight"), B, T, C)
        x = self.encoded
        for i, a in enumerate(self.acts):
            p = lambda kind: self.p.get(f"h.{i}.{kind}")  # None: a tensor the config does not have
            self._norm_forward(a["ln1"], a.get("ln1_mean"), a["ln1_rstd"], x, p("ln_1.weight"), p("ln_1.bias"), N)
            mm.matmul_forward(a["qkv"], a["ln1"], p("attn.c_attn.weight"), p("attn.c_attn.bias"), N, C, W, naive)
            att_in = a["qkv"]
            if self.rope:  # q and k rotated by their positions into a["rope"] (v copied): attention reads that
                rope_forward(a["rope"], a["qkv"], self.d_cos, self.d_sin, B, T, NH, NKV, HS)
                att_in = a["rope"]
            if self.attention == "naive":
                attention_forward_naive(a["atty"], a["preatt"], a["att"], att_in, B, T, C, NH, n_kv_head=NKV)
            else:
                attention_forward_flash(a["atty"], a["lse"], att_in, B, T, C, NH, n_kv_head=NKV)
            # attproj = atty @ W + b and x1 = x + attproj in one kernel (the residual add in its epilogue)
            mm.matmul_forward(a["attproj"], a["atty"], p("attn.c_proj.weight"), p("attn.c_proj.bias"), N, C, C, naive,
                           residual=x, residual_out=a["x1"])  # fmt: skip
            self._norm_forward(a["ln2"], a.get("ln2_mean"), a["ln2_rstd"], a["x1"], p("ln_2.weight"), p("ln_2.bias"), N)
            if self.swiglu:  # fch = ln2 @ W_fc + b = [gate | up] (N, 2H), then act = silu(gate) * up (N, H)
                mm.matmul_forward(a["fch"], a["ln2"], p("mlp.c_fc.weight"), p("mlp.c_fc.bias"), N, C, FW, naive)
                swiglu_forward(a["act"], a["fch"], N, H, naive=naive)
            else:  # fch = ln2 @ W + b (kept for the GELU's backward) and act = gelu(fch), one kernel
                mm.matmul_forward(a["fch"], a["ln2"], p("mlp.c_fc.weight"), p("mlp.c_fc.bias"), N, C, FW, naive,
                               gelu_out=a["act"])  # fmt: skip
            mm.matmul_forward(a["mlpproj"], a["act"], p("mlp.c_proj.weight"), p("mlp.c_proj.bias"), N, H, C, naive,
                           residual=a["x1"], residual_out=a["x2"])  # fmt: skip
            x = a["x2"]
        self._norm_forward(self.lnf, self.lnf_mean, self.lnf_rstd, x, self.p["ln_f.weight"], self.p.get("ln_f.bias"), N)
        # logits (N, V) = lnf (N, C) @ head^T, the head (wte, or lm_head when untied) stored (V, C)
        mm.matmul(self.logits, self.lnf, self.p[self.head], N, V, C, "NT", naive=naive)
        if with_loss:
            crossentropy(
                self.losses, self.dlogits, self.logits, self.d_targets, N, V,
                1.0 / self._n_valid, with_grad=with_grad, naive=naive,
            )  # fmt: skip

    def _loss(self, targets: np.ndarray) -> float:
        N = targets.size
        losses = self.losses[:N].copy_to_host().astype(np.float64)
        return float(losses[targets.ravel() >= 0].sum() / self._n_valid)

    def _logits_host(self) -> np.ndarray:
        B, T = self._shape
        V = self.config.vocab_size
        return self.logits[: B * T * V].copy_to_host().reshape(B, T, V)

    def forward(self, idx, targets=None):
        """logits (B, T, V) float32 for every position, and the mean cross-entropy (None without targets)."""
        idx = self._check_idx(idx)
        targets = None if targets is None else self._check_targets(targets, idx.shape)
        self._forward(idx, targets, with_grad=False)
        loss = None if targets is None else self._loss(targets)
        return self._logits_host(), loss

    # ------------------------------------------------------------------ backward
    def _launch_backward(self) -> None:
        """Queue the backward: fills the gradient buffer from the dlogits of the last forward
        (gradients are overwritten). Kernel launches, memsets and device-to-device copies only."""
        cfg = self.config
        B, T = self._shape
        C, NH, NKV, HS, V, N = cfg.n_embd, cfg.n_head, cfg.kv_heads, cfg.head_size, cfg.vocab_size, B * T
        W, H, FW = cfg.qkv_width, cfg.hidden, cfg.fc_width
        naive, mm = self.naive, self.mm
        zero_fill(self.d_grads, self.n_params, self.stream)
        zero_fill(self.dresidual, N * C, self.stream)

        # lm head: logits = lnf @ head^T  ->  dlnf = dlogits @ head (NN), dhead += dlogits^T @ lnf (TN); the
        # head is wte (tied: its gradient also gets the embedding's scatter-add below) or lm_head.
        # K = V = 50,257 terms per output: summed in chunks (split-K) to keep float32 rounding ~1e-6
        mm.matmul(self.dln, self.dlogits, self.p[self.head], N, C, V, "NN", naive=naive, k_chunk=HEAD_K_CHUNK)
        mm.matmul(self.g[self.head], self.dlogits, self.lnf, V, C, N, "TN", accumulate=True, naive=naive)
        x_last = self.acts[-1]["x2"] if self.acts else self.encoded
        self._norm_backward(self.dresidual, self.g["ln_f.weight"], self.g.get("ln_f.bias"), self.dln, x_last,
                            self.p["ln_f.weight"], self.lnf_mean, self.lnf_rstd, N)  # fmt: skip

        dres = self.dresidual
        for i in reversed(range(cfg.n_layer)):
            a = self.acts[i]
            x = self.acts[i - 1]["x2"] if i > 0 else self.encoded
            p = lambda kind: self.p.get(f"h.{i}.{kind}")
            g = lambda kind: self.g.get(f"h.{i}.{kind}")  # None: no such tensor (a bias with bias=False)
            # MLP branch: x2 = x1 + act(ln2 @ W_fc + b) @ W_mlp + b
            mm.matmul_backward(self.dact, g("mlp.c_proj.weight"), g("mlp.c_proj.bias"), dres, a["act"],
                            p("mlp.c_proj.weight"), N, H, C, naive)  # fmt: skip
            if self.swiglu:
                swiglu_backward(self.dfch, a["fch"], self.dact, N, H, naive=naive)
            else:
                gelu_backward(self.dfch, a["fch"], self.dact, N * H)
            mm.matmul_backward(self.dln, g("mlp.c_fc.weight"), g("mlp.c_fc.bias"), self.dfch, a["ln2"],
                            p("mlp.c_fc.weight"), N, C, FW, naive)  # fmt: skip
            self._norm_backward(dres, g("ln_2.weight"), g("ln_2.bias"), self.dln, a["x1"], p("ln_2.weight"),
                                a.get("ln2_mean"), a["ln2_rstd"], N)  # fmt: skip
            # attention branch: x1 = x + attention(rope(ln1 @ W_attn + b)) @ W_proj + b
            mm.matmul_backward(self.datty, g("attn.c_proj.weight"), g("attn.c_proj.bias"), dres, a["atty"],
                            p("attn.c_proj.weight"), N, C, C, naive)  # fmt: skip
            att_in = a["rope"] if self.rope else a["qkv"]  # what attention read
            if self.attention == "naive":
                attention_backward_naive(self.dqkv, self.datt, self.dpreatt, self.datty, a["att"], att_in,
                                         B, T, C, NH, n_kv_head=NKV)  # fmt: skip
            else:
                attention_backward_flash(self.dqkv, self.delta, self.datty, a["atty"], a["lse"], att_in,
                                         B, T, C, NH, n_kv_head=NKV)  # fmt: skip
            if self.rope:  # d(rope) -> d(qkv): q and k gradients rotated back, in place
                rope_backward(self.dqkv, self.dqkv, self.d_cos, self.d_sin, B, T, NH, NKV, HS)
            mm.matmul_backward(self.dln, g("attn.c_attn.weight"), g("attn.c_attn.bias"), self.dqkv, a["ln1"],
                            p("attn.c_attn.weight"), N, C, W, naive)  # fmt: skip
            self._norm_backward(dres, g("ln_1.weight"), g("ln_1.bias"), self.dln, x, p("ln_1.weight"),
                                a.get("ln1_mean"), a["ln1_rstd"], N)  # fmt: skip

        dwpe = self.g.get("wpe.weight")  # None with rope: no position table
        if naive:
            encoder_backward_naive(self.g["wte.weight"], dwpe, dres, self.d_idx, B, T, C)
        else:  # deterministic: positions grouped by token on the device (no host argsort)
            encoder_backward_chained(self.g["wte.weight"], dwpe, dres, self.d_idx,
                                     self.d_next_pos, self.d_is_first, B, T, C)  # fmt: skip

    # ------------------------------------------------------------------ eager or graph
    def _run(self, kind: str, launches) -> None:
        """Queue `launches` (kernel launches only; the inputs are uploaded) on the model's stream.

        Eager without cuda_graphs. With them, the first call for a (kind, B, T, kept targets; a step's key
        adds its AdamW launches, which its decay set fixes) runs eagerly (that compiles every kernel and is
        this call's work), then records the same launches into a CUDA graph; later calls with that key
        replay the graph. A failed capture leaves the
        model eager and says why in `graph_note` (and a warning)."""
        with launch_stream(self.stream):
            if not self.cuda_graphs or self.graph_note is not None:
                launches()
                return
            key = (kind, *self._shape, self._n_valid) + ((self._adamw_runs,) if kind == "step" else ())
            graph = self._graphs.get(key)
            if graph is not None:
                graph.replay()
                return
            launches()
            try:
                self._graphs[key] = CapturedGraph(self.stream, launches)
            except Exception as e:  # the eager run above did this call's work: carry on eagerly
                self.graph_note = f"CUDA graph capture failed, running eagerly: {type(e).__name__}: {e}"
                warnings.warn(self.graph_note, RuntimeWarning, stacklevel=3)

    def graph_stats(self) -> dict[str, dict[str, int]]:
        """Per recorded graph: its key (kind, B, T, kept targets), node count and replays so far."""
        return {str(k): {"nodes": int(g.n_nodes), "replays": g.replays} for k, g in self._graphs.items()}

    def forward_device(self, idx, targets=None) -> None:
        """The forward (and per-position losses with targets), leaving logits on the device."""
        idx = self._check_idx(idx)
        targets = None if targets is None else self._check_targets(targets, idx.shape)
        self._upload_inputs(idx, targets)
        self._run("forward", lambda: self._launch_forward(targets is not None, with_grad=False))
        self._last_targets = targets

    def forward_backward_device(self, idx, targets) -> None:
        """Forward + backward, leaving logits, losses and gradients on the device (nothing is copied
        back; pair with `synchronize()` to time it). Read the results with `loss()`, `grads()`."""
        idx = self._check_idx(idx)
        targets = self._check_targets(targets, idx.shape)
        self._upload_inputs(idx, targets)
        self._run("forward_backward", self._launch_forward_backward)
        self._last_targets = targets

    def _launch_forward_backward(self) -> None:
        self._launch_forward(with_loss=True, with_grad=True)
        self._launch_backward()

    def forward_backward(self, idx, targets):
        """logits (B, T, V), mean loss, and the gradients as a dict with the canonical names."""
        self.forward_backward_device(idx, targets)
        return self._logits_host(), self.loss(), self.grads()

    def loss(self) -> float:
        """The mean cross-entropy of the last forward_backward (copies B*T floats back)."""
        return self._loss(self._last_targets)

    def grads(self) -> dict[str, np.ndarray]:
        flat = self.d_grads.copy_to_host()
        return {n: flat[o : o + s].reshape(self.shapes[n]).copy() for n, (o, s) in self.offsets.items()}

    # ------------------------------------------------------------------ optimizer
    def _decayed(self, decay) -> set[str]:
        """The tensor names a decay set names: "matrices" (the 2-D tensors), "all", or a collection of names."""
        if isinstance(decay, str):
            if decay == "matrices":
                return {n for n in self.names if len(self.shapes[n]) == 2}
            if decay == "all":
                return set(self.names)
            raise ValueError(f"adamw_step: decay must be 'matrices', 'all' or a collection of names, got {decay!r}")
        names = set(decay)
        unknown = sorted(names - set(self.names))
        if unknown:
            raise ValueError(f"adamw_step: decay names tensor(s) this model does not have: {unknown[:3]}")
        return names

    def _adamw_launches(self, decay) -> tuple[tuple[int, int, int], ...]:
        """The AdamW launches of a decay set, as (start, stop, n_decay) ranges of the flat buffers: each
        range is a run of tensors in buffer order, its decayed tensors first (the kernel decays the leading
        n_decay values of what it is given). "matrices" is the one launch (0, N, n_decay)."""
        if isinstance(decay, str) and decay == "matrices":
            return ((0, self.n_params, self.n_decay),)
        decayed = self._decayed(decay)
        runs: list[list[int]] = []  # [start, stop, n_decay]
        for name in self.names:
            o, n = self.offsets[name]
            if not runs or (name in decayed and runs[-1][1] - runs[-1][0] > runs[-1][2]):
                runs.append([o, o, 0])  # a decayed tensor after an undecayed one starts a new launch
            runs[-1][1] = o + n
            if name in decayed:
                runs[-1][2] += n
        return tuple(tuple(r) for r in runs)

    def _upload_adamw(self, lr, beta1, beta2, eps, weight_decay, decay="matrices") -> None:
        """Count the step, write its hyperparameters (and bias corrections) to the device, fix its launches."""
        runs = self._adamw_launches(decay)
        hyper = adamw_hyperparameters(self.step_count + 1, lr, beta1, beta2, eps, weight_decay)
        self.step_count += 1
        self.d_hyper.copy_to_device(hyper, stream=self.stream)
        self._adamw_runs = runs

    def _launch_adamw(self) -> None:
        for start, stop, n_decay in self._adamw_runs:
            if (start, stop) == (0, self.n_params):
                adamw_launch(self.d_params, self.d_grads, self.d_m, self.d_v, self.n_params, n_decay, self.d_hyper)
            else:  # views of the run's range in the four buffers
                params, grads, m, v = (b[start:stop] for b in (self.d_params, self.d_grads, self.d_m, self.d_v))
                adamw_launch(params, grads, m, v, stop - start, n_decay, self.d_hyper)

    def adamw_step(self, lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, decay="matrices") -> None:
        """One AdamW step on every parameter, with the gradients of the last backward (on the device).
        Weight decay applies to the tensors of `decay`: "matrices" (the 2-D tensors: wte, wpe and the
        weight matrices; the default), "all", or a collection of parameter names."""
        self._upload_adamw(lr, beta1, beta2, eps, weight_decay, decay)
        with launch_stream(self.stream):
            self._launch_adamw()

    def step_device(
        self, idx, targets, lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, decay="matrices"
    ) -> None:
        """One training step (forward, backward, AdamW) queued on the device, nothing copied back;
        with cuda_graphs, one graph replay. Read the loss with `loss()`."""
        idx = self._check_idx(idx)
        targets = self._check_targets(targets, idx.shape)
        self._upload_inputs(idx, targets)
        self._upload_adamw(lr, beta1, beta2, eps, weight_decay, decay)
        self._run("step", self._launch_step)
        self._last_targets = targets

    def _launch_step(self) -> None:
        self._launch_forward_backward()
        self._launch_adamw()

    def step(self, idx, targets, lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, decay="matrices") -> float:
        """One training step: forward, backward, AdamW. Returns the loss before the update."""
        self.step_device(idx, targets, lr, beta1, beta2, eps, weight_decay, decay)
        return self.loss()

    def synchronize(self) -> None:
        """Wait for every launched kernel to finish (for timing)."""
        cuda.synchronize()

    # ------------------------------------------------------------------ readers
    def to_params(self) -> dict[str, np.ndarray]:
        """The current parameters as the canonical dict (float32)."""
        flat = self.d_params.copy_to_host()
        ordered = param_shapes(self.config)
        return {n: flat[self.offsets[n][0] : sum(self.offsets[n])].reshape(s).copy() for n, s in ordered.items()}

    def activations(self, idx) -> dict[str, np.ndarray]:
        """The named intermediate activations of docs/contract.md, each (B, T, ·) float32, in the order
        of weights.layout.activation_names(config)."""
        idx = self._check_idx(idx)
        self._forward(idx, None, with_grad=False)
        B, T = idx.shape
        C, V, N = self.config.n_embd, self.config.vocab_size, B * T
        host = lambda buf, width: buf[: N * width].copy_to_host().reshape(B, T, width)
        key = {name: k for k, name in _BLOCK_ACTS.items() if name is not None}
        key[self.config.mlp] = "act"  # "gelu" or "swiglu"
        out = {"embed": host(self.encoded, C)}
        for i, a in enumerate(self.acts):
            for name in block_activations(self.config):
                out[f"h.{i}.{name}"] = host(a[key[name]], self.widths[key[name]])
        out["ln_f"] = host(self.lnf, C)
        out["logits"] = host(self.logits, V)
        return out

    # ------------------------------------------------------------------ sampling
    def generate(self, idx, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None, seed: int = 0,
                 use_cache: bool = False):  # fmt: skip
        """Append `max_new_tokens` tokens to each row of idx (B, T0): greedy at temperature 0, else
        sampling from softmax(logits / temperature) over the top_k ids. Each new token reruns the
        forward on the last max_seq tokens: there is no KV cache, so `use_cache=True` raises
        NotImplementedError (the conformance suite then reports its KV-cache check as skipped rather
        than comparing two identical recomputations)."""
        if use_cache:
            raise NotImplementedError("numba_impl has no KV cache: generation recomputes the forward per token")
        idx = self._check_idx(idx).astype(np.int64)
        rng = np.random.default_rng(seed)
        for _ in range(max_new_tokens):
            logits, _ = self.forward(idx[:, -self.max_seq :])
            last = logits[:, -1, :].astype(np.float64)
            if temperature == 0.0:
                nxt = last.argmax(axis=-1)
            else:
                last = last / temperature
                if top_k is not None:
                    kth = np.sort(last, axis=-1)[:, -min(top_k, last.shape[-1])][:, None]
                    last = np.where(last < kth, -np.inf, last)
                prob = np.exp(last - last.max(axis=-1, keepdims=True))
                prob /= prob.sum(axis=-1, keepdims=True)
                nxt = np.array([rng.choice(prob.shape[-1], p=row) for row in prob])
            idx = np.concatenate([idx, nxt[:, None]], axis=1)
        return idx


flops_per_token = training_flops_per_token  # training FLOPs per token, llm.c's count (weights/flops.py)


__all__ = ["NumbaGPT2", "flops_per_token"]
