"""The backends under test, behind one small interface.

Each `Backend` wraps one implementation's own entry points (docs/contract.md) and answers in NumPy:

    forward(params, config, idx)                      -> logits (B, T, V)
    forward_backward(params, config, idx, targets)    -> logits, loss, grads {name: array}
    activations(params, config, idx)                  -> {activation name: array}
    adamw(params, config, idx, targets, steps, hp)    -> losses per step, params after the last step
    generate(params, config, idx, n, use_cache)       -> token ids (B, T + n), greedy

`available()` says whether the backend can run here and, if not, why: an unavailable backend is
reported as skipped with that reason, never silently dropped. `supports(config, tokens)` says the same
per case. A method a backend does not have raises NotImplementedError (the base class's do): the
checks that need it are reported as skipped for that backend, with the message.

Registry: numpy-f64 (ground truth), numpy-f32, torch-cpu-f32, torch-cuda-f32, torch-cuda-bf16,
numba-cuda-f32 (a real GPU, or Numba's CUDA simulator on tiny configs), numba-cuda-3xtf32 (the same
model with its matmuls on the tensor cores, 3xTF32; a real GPU), hf-transformers-f32
(transformers' GPT2LMHeadModel: an oracle this project did not write; GPT-2 configs only) and
hf-llama-f64 (transformers' LlamaForCausalLM in float64 through weights/hf_llama.py's name mapping:
the oracle of the llama-style variants, every config with rotary positions, RMSNorm and SwiGLU);
then every backend an installed package adds through the entry-point group
`gpt2_three_ways.conformance_backends` (conformance/plugins.py; docs/conformance.md, "Adding a backend").
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import numpy as np

from weights import GPT2Config

# The contract's AdamW (docs/contract.md). "decay" is the decay set: "matrices" (the 2-D tensors), "all"
# (llm.c's choice), or a collection of parameter names; every backend's adamw takes it from `hp`.
ADAMW_DEFAULTS = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, decay="matrices")

# Beyond these sizes the CUDA simulator (one OS thread per CUDA thread) takes too long for CI.
SIMULATOR_MAX_PARAMS = 50_000
SIMULATOR_MAX_TOKENS = 8  # B * T; at B*T = 64 one case took 4-9 minutes (docs/numba_impl.md)


def _simulator() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


def torch_adamw(named_parameters, hp: dict):
    """torch.optim.AdamW with the contract's hyperparameters over (canonical name, parameter) pairs: weight
    decay on the tensors of hp["decay"] (default "matrices", the 2-D tensors), none on the others."""
    import torch

    from torch_impl.optim import adamw_groups

    groups = adamw_groups(named_parameters, hp["weight_decay"], hp.get("decay", "matrices"))
    return torch.optim.AdamW(groups, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"], foreach=False)


@dataclass(frozen=True)
class Origin:
    """Where a backend comes from: this project (every field None), or an installed distribution's entry point."""

    distribution: str | None = None  # e.g. "gpt2-conformance-plugin"
    version: str | None = None  # the distribution's version, e.g. "0.1.0"
    entry_point: str | None = None  # "name = module:attr", as its entry_points.txt says

    @property
    def builtin(self) -> bool:
        return self.distribution is None

    def __str__(self) -> str:
        if self.builtin:
            return "built-in"
        return f"{self.distribution} {self.version} (entry point {self.entry_point})"


BUILTIN = Origin()


@dataclass
class Backend:
    """One implementation under test. A subclass sets name, precision and device, implements
    forward_backward, and whichever of the other methods it has (docs/conformance.md, "Adding a backend")."""

    name: str  # unique; letters, digits and . _ + - (it is a pytest id and a --backends value)
    precision: str  # "fp32" or "bf16" (ceiling row); "fp64" for the reference itself
    device: str
    notes: str = ""
    _unavailable: str | None = field(default=None, repr=False)
    origin: Origin = BUILTIN  # set by registry(): built-in, or the plugin's distribution and entry point

    def available(self) -> tuple[bool, str]:
        return True, ""

    def supports(self, config: GPT2Config, tokens: int = 1) -> tuple[bool, str]:
        """Whether this backend runs a case of `config` with `tokens` = B * T positions here."""
        return True, ""

    # The methods the checks call. forward_backward is the one every backend must have; forward falls
    # back on it; the others raise NotImplementedError here, and the checks that need them are skipped.
    def forward_backward(self, params, config, idx, targets):
        """-> logits (B, T, V), loss (mean over targets != -1), grads {canonical name: array of its shape}."""
        raise NotImplementedError(f"{self.name} has no forward_backward")

    def forward(self, params, config, idx):
        """-> logits (B, T, V); by default forward_backward's logits (with idx itself as the targets)."""
        return self.forward_backward(params, config, idx, np.asarray(idx))[0]

    def activations(self, params, config, idx):
        """-> {name: (B, T, .)} for every name of weights.activation_names(config): what the localizer compares."""
        raise NotImplementedError(f"{self.name} exposes no named activations")

    def adamw(self, params, config, idx, targets, steps, hp):
        """`steps` AdamW steps from `params` on one batch, hp = ADAMW_DEFAULTS -> (losses, params after the last)."""
        raise NotImplementedError(f"{self.name} has no AdamW")

    def generate(self, params, config, idx, n, use_cache=False):
        """-> (B, T + n) greedy tokens; the generate check takes the default use_cache, kv_cache asks for both."""
        raise NotImplementedError(f"{self.name} has no generation")


# --------------------------------------------------------------------------- NumPy reference
class NumpyBackend(Backend):
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        bits = "f64" if self.dtype == np.float64 else "f32"
        super().__init__(
            f"numpy-{bits}", "fp64" if bits == "f64" else "fp32", "cpu", "the reference (NumPy, hand-written backward)"
        )

    def available(self):
        try:
            import reference  # noqa: F401
        except ImportError as e:
            return False, f"reference/ not importable ({e})"
        return True, ""

    def _p(self, params):
        # Always a copy: AdamW updates in place, and the caller's arrays must stay untouched.
        return {k: np.array(v, dtype=self.dtype, copy=True) for k, v in params.items()}

    def forward(self, params, config, idx):
        import reference

        return reference.forward(self._p(params), config, idx)[0]

    def forward_backward(self, params, config, idx, targets):
        import reference

        return reference.forward_backward(self._p(params), config, idx, targets)

    def activations(self, params, config, idx):
        import reference

        return reference.activations(self._p(params), config, idx)

    def adamw(self, params, config, idx, targets, steps, hp):
        import reference

        p = self._p(params)
        state: dict = {}
        losses = []
        for _ in range(steps):
            _, loss, grads = reference.forward_backward(p, config, idx, targets)
            losses.append(float(loss))
            reference.adamw_step(p, grads, state, **hp)
        return losses, p

    def generate(self, params, config, idx, n, use_cache=True):
        import reference

        return reference.generate(self._p(params), config, idx, n, temperature=0.0, use_cache=use_cache)


# --------------------------------------------------------------------------- PyTorch (ours)
class TorchBackend(Backend):
    def __init__(self, device: str, precision: str, attention: str = "sdpa"):
        bits = {"fp32": "f32", "bf16": "bf16", "fp64": "f64"}[precision]
        super().__init__(f"torch-{device}-{bits}", precision, device, f"torch_impl GPT2, attention={attention}")
        self.attention = attention

    def available(self):
        try:
            import torch

            import torch_impl.contract  # noqa: F401
            import torch_impl.model  # noqa: F401
        except ImportError as e:
            return False, f"torch / torch_impl not importable ({e})"
        if self.device == "cuda" and not torch.cuda.is_available():
            return False, "no CUDA GPU visible to torch"
        return True, ""

    def _model(self, params, config):
        import torch

        from torch_impl.model import GPT2

        dtype = torch.float64 if self.precision == "fp64" else torch.float32
        params = {k: np.array(v, copy=True) for k, v in params.items()}  # training must not touch the caller's arrays
        return GPT2.from_params(params, config, device=self.device, dtype=dtype, attention=self.attention)

    def _autocast(self):
        import torch

        return torch.bfloat16 if self.precision == "bf16" else None

    def forward(self, params, config, idx):
        from torch_impl import contract

        return contract.forward(self._model(params, config), idx, autocast_dtype=self._autocast())[0]

    def forward_backward(self, params, config, idx, targets):
        from torch_impl import contract

        return contract.forward_backward(self._model(params, config), idx, targets, autocast_dtype=self._autocast())

    def activations(self, params, config, idx):
        from torch_impl import contract

        return contract.activations(self._model(params, config), idx, autocast_dtype=self._autocast())

    @contextlib.contextmanager
    def _precision(self):
        import torch

        from torch_impl.contract import tf32_disabled

        with tf32_disabled():
            if self.precision == "bf16":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    yield
            else:
                yield

    def adamw(self, params, config, idx, targets, steps, hp):
        import torch

        model = self._model(params, config)
        opt = torch_adamw(model.named_parameters(), hp)  # torch_impl's names are the canonical ones
        x = torch.as_tensor(idx, device=self.device)
        y = torch.as_tensor(targets, device=self.device)
        losses = []
        with self._precision():
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                _, loss = model(x, y)
                loss.backward()
                losses.append(float(loss.detach()))
                opt.step()
        return losses, model.to_params()

    def generate(self, params, config, idx, n, use_cache=True):
        import torch

        model = self._model(params, config)
        with self._precision():
            out = model.generate(torch.as_tensor(idx, device=self.device), n, temperature=0.0, use_cache=use_cache)
        return out.cpu().numpy()


# --------------------------------------------------------------------------- Numba CUDA
class NumbaBackend(Backend):
    """numba_impl's model; matmul="3xtf32" puts its matmuls on the tensor cores (numba-cuda-3xtf32),
    judged by the same float32 ceilings."""

    def __init__(self, matmul: str = "fp32"):
        name = "numba-cuda-f32" if matmul == "fp32" else f"numba-cuda-{matmul}"
        super().__init__(name, "fp32", "cuda", f"numba_impl kernels, matmul={matmul}")
        self.matmul = matmul

    def available(self):
        try:
            from numba_impl.model import NumbaGPT2  # noqa: F401
        except ImportError as e:
            return False, f"numba_impl not importable ({e})"
        except Exception as e:  # numba raises CudaSupportError and friends at import on a GPU-less box
            return False, f"numba CUDA unavailable ({type(e).__name__}: {e})"
        from numba import cuda

        if not cuda.is_available():
            return False, "no CUDA GPU, and NUMBA_ENABLE_CUDASIM=1 is not set"
        if _simulator():
            self.device = "cuda-simulator"
        return True, ""

    def supports(self, config, tokens=1):
        from weights import num_params

        if _simulator() and self.matmul != "fp32":
            return False, (
                "CUDA simulator: the 3xTF32 kernel's warp-wide mma emulation is tested by "
                "tests/numba_impl/test_matmul_3xtf32.py; the model runs on a GPU"
            )
        if _simulator() and tokens > SIMULATOR_MAX_TOKENS:
            return False, f"CUDA simulator: {tokens} tokens is too slow (limit {SIMULATOR_MAX_TOKENS}); runs on a GPU"
        if _simulator() and num_params(config) > SIMULATOR_MAX_PARAMS:
            return (
                False,
                f"CUDA simulator: config of {num_params(config):,} values is too slow (limit {SIMULATOR_MAX_PARAMS:,})",
            )
        return True, ""

    def _model(self, params, config, idx):
        from numba_impl.model import NumbaGPT2

        B, T = np.asarray(idx).shape
        return NumbaGPT2(params, config, max_batch=B, max_seq=T, matmul=self.matmul)

    def forward(self, params, config, idx):
        return self._model(params, config, idx).forward(idx)[0]

    def forward_backward(self, params, config, idx, targets):
        return self._model(params, config, idx).forward_backward(idx, targets)

    def activations(self, params, config, idx):
        m = self._model(params, config, idx)
        if not hasattr(m, "activations"):
            raise NotImplementedError("numba_impl exposes no named activations")
        return m.activations(idx)

    def adamw(self, params, config, idx, targets, steps, hp):
        m = self._model(params, config, idx)
        losses = []
        for _ in range(steps):
            _, loss, _ = m.forward_backward(idx, targets)
            losses.append(float(loss))
            m.adamw_step(**hp)
        return losses, m.to_params()

    def generate(self, params, config, idx, n, use_cache=False):
        """Greedy tokens; numba_impl has no KV cache, so use_cache=True raises NotImplementedError
        (the suite reports the KV-cache check as skipped for this backend)."""
        B, T = np.asarray(idx).shape
        from numba_impl.model import NumbaGPT2

        m = NumbaGPT2(params, config, max_batch=B, max_seq=T + n, matmul=self.matmul)
        return m.generate(idx, n, temperature=0.0, use_cache=use_cache)


# --------------------------------------------------------------------------- transformers (oracle)
def _transformers_available() -> tuple[bool, str]:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return False, f"transformers not installed ({e})"
    return True, ""


class HFBackend(Backend):
    def __init__(self):
        super().__init__("hf-transformers-f32", "fp32", "cpu", "transformers GPT2LMHeadModel, eager attention, eval")

    def available(self):
        return _transformers_available()

    def supports(self, config, tokens=1):
        if not config.is_gpt2:
            return (
                False,
                f"transformers' GPT-2 has no {', '.join(config.variant_options())} (the Llama oracle takes those)",
            )
        return True, ""

    def _model(self, params, config):
        import torch
        import transformers

        hf_cfg = transformers.GPT2Config(**{k: v for k, v in config.to_hf_dict().items() if k != "architectures"})
        hf_cfg._attn_implementation = "eager"
        model = transformers.GPT2LMHeadModel(hf_cfg).eval()
        state = {k: torch.from_numpy(np.asarray(v, np.float32).copy()) for k, v in params.items()}
        missing, unexpected = model.transformer.load_state_dict(state, strict=False)
        real_missing = [m for m in missing if not m.endswith(("attn.bias", "attn.masked_bias"))]
        if real_missing or unexpected:
            raise RuntimeError(f"transformers state dict mismatch: missing {real_missing}, unexpected {unexpected}")
        model.tie_weights()
        return model

    def forward(self, params, config, idx):
        import torch

        from conformance.precision import tf32_off

        with tf32_off(), torch.no_grad():
            return self._model(params, config)(torch.as_tensor(idx)).logits.numpy()

    def forward_backward(self, params, config, idx, targets):
        import torch
        import torch.nn.functional as F

        from conformance.precision import tf32_off

        model = self._model(params, config)
        with tf32_off():
            logits = model(torch.as_tensor(idx)).logits
            loss = F.cross_entropy(logits.flatten(0, 1), torch.as_tensor(targets).flatten(), ignore_index=-1)
            loss.backward()
        grads = {n: p.grad.numpy().copy() for n, p in model.transformer.named_parameters()}
        return logits.detach().numpy(), float(loss), grads

    def adamw(self, params, config, idx, targets, steps, hp):
        import torch
        import torch.nn.functional as F

        from conformance.precision import tf32_off

        model = self._model(params, config)
        # the head is tied to wte: no parameter of its own; transformer's names are the canonical ones
        opt = torch_adamw(model.transformer.named_parameters(), hp)
        x, y = torch.as_tensor(idx), torch.as_tensor(targets)
        losses = []
        with tf32_off():
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                logits = model(x).logits
                loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1)
                loss.backward()
                losses.append(float(loss.detach()))
                opt.step()
        return losses, {n: p.detach().numpy().copy() for n, p in model.transformer.named_parameters()}

    def activations(self, params, config, idx):
        raise NotImplementedError("transformers' model does not expose the contract's named activations")

    def generate(self, params, config, idx, n, use_cache=True):
        """Greedy tokens, decoded here from the model's own forward (transformers' `generate` would stop at
        the config's end-of-text id, a real token of the tiny vocabularies); use_cache=True feeds one
        token at a time through its past_key_values, so its cache and rotary offsets are what is tested."""
        import torch

        model = self._model(params, config)
        ids = torch.as_tensor(idx)
        with torch.no_grad():
            out = model(ids, use_cache=use_cache)
            for _ in range(n):
                nxt = out.logits[:, -1].argmax(dim=-1, keepdim=True)
                ids = torch.cat([ids, nxt], dim=1)
                if len(ids[0]) - len(idx[0]) == n:
                    break
                if use_cache:
                    out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
                else:
                    out = model(ids[:, -config.n_ctx :], use_cache=False)
        return ids.numpy()


class HFLlamaBackend(Backend):
    """transformers' LlamaForCausalLM, float64, eager attention, loading our parameters through
    weights/hf_llama.py. transformers computes its RMSNorm, rotary tables and softmax in float32 even in
    a float64 model (docs/variants.md), so it is held to the float32 ceilings."""

    def __init__(self):
        super().__init__(
            "hf-llama-f64", "fp32", "cpu", "transformers LlamaForCausalLM in float64 (weights/hf_llama.py)"
        )

    def available(self):
        return _transformers_available()

    def supports(self, config, tokens=1):
        from weights.hf_llama import check_llama_shaped

        try:
            check_llama_shaped(config)
        except ValueError as e:
            return False, str(e)
        return True, ""

    def _model(self, params, config):
        from weights.hf_llama import llama_model

        return llama_model({k: np.asarray(v, np.float64) for k, v in params.items()}, config)

    def _grads(self, model, config):
        from weights.hf_llama import from_llama_state_dict

        grads = {n: p.grad.detach().numpy() for n, p in model.named_parameters() if p.grad is not None}
        return from_llama_state_dict(grads, config)

    def _loss(self, model, idx, targets):
        import torch
        import torch.nn.functional as F

        logits = model(torch.as_tensor(idx)).logits
        loss = F.cross_entropy(logits.flatten(0, 1), torch.as_tensor(targets).flatten(), ignore_index=-1)
        return logits, loss

    def forward(self, params, config, idx):
        import torch

        with torch.no_grad():
            return self._model(params, config)(torch.as_tensor(idx)).logits.numpy()

    def forward_backward(self, params, config, idx, targets):
        model = self._model(params, config)
        logits, loss = self._loss(model, idx, targets)
        loss.backward()
        return logits.detach().numpy(), float(loss), self._grads(model, config)

    def adamw(self, params, config, idx, targets, steps, hp):
        from weights.hf_llama import from_llama_state_dict, llama_to_ours

        model = self._model(params, config)
        ours = llama_to_ours(config)  # Llama's tensor name -> the canonical name it is (a slice of)
        # a tied head is the embedding's own tensor: named and stepped once
        opt = torch_adamw([(ours[n], p) for n, p in model.named_parameters()], hp)
        losses = []
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            _, loss = self._loss(model, idx, targets)
            loss.backward()
            losses.append(float(loss.detach()))
            opt.step()
        state = {n: p.detach().numpy() for n, p in model.named_parameters()}
        return losses, from_llama_state_dict(state, config)

    def activations(self, params, config, idx):
        raise NotImplementedError("transformers' model does not expose the contract's named activations")

    def generate(self, params, config, idx, n, use_cache=True):
        """Greedy tokens, decoded here from the model's own forward (transformers' `generate` would stop at
        the config's end-of-text id, a real token of the tiny vocabularies); use_cache=True feeds one
        token at a time through its past_key_values, so its cache and rotary offsets are what is tested."""
        import torch

        model = self._model(params, config)
        ids = torch.as_tensor(idx)
        with torch.no_grad():
            out = model(ids, use_cache=use_cache)
            for _ in range(n):
                nxt = out.logits[:, -1].argmax(dim=-1, keepdim=True)
                ids = torch.cat([ids, nxt], dim=1)
                if len(ids[0]) - len(idx[0]) == n:
                    break
                if use_cache:
                    out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
                else:
                    out = model(ids[:, -config.n_ctx :], use_cache=False)
        return ids.numpy()


def registry() -> list[Backend]:
    """Every backend, ground truth first: the built-in ones, then the installed plugins' (conformance/plugins.py).

    A plugin that fails to load, or offers a name already taken, is in the list too, as a
    `plugins.PluginFailure` that is unavailable with its error as the reason."""
    from conformance.plugins import plugin_backends

    builtin = builtin_backends()
    return builtin + plugin_backends(taken={b.name: b.origin for b in builtin})


def builtin_backends() -> list[Backend]:
    """This project's backends, ground truth first."""
    return [
        NumpyBackend(np.float64),
        NumpyBackend(np.float32),
        TorchBackend("cpu", "fp32"),
        TorchBackend("cuda", "fp32"),
        TorchBackend("cuda", "bf16"),
        NumbaBackend(),
        NumbaBackend(matmul="3xtf32"),
        HFBackend(),
        HFLlamaBackend(),
    ]


def by_name(name: str) -> Backend:
    for b in registry():
        if b.name == name:
            return b
    raise KeyError(f"unknown backend {name!r}; known: {[b.name for b in registry()]}")
