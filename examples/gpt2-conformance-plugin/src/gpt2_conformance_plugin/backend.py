"""The example model behind the conformance suite's Backend interface: NumPy in, NumPy out.

    forward_backward(params, config, idx, targets)   -> logits (B, T, V), loss, grads {name: (shape of param)}
    activations(params, config, idx)                 -> {activation name: (B, T, .)}
    adamw(params, config, idx, targets, steps, hp)   -> losses per step, params after the last step
    generate(params, config, idx, n, use_cache=False) -> (B, T + n) greedy tokens; no KV cache
    forward(...)                                     the base class's: forward_backward's logits

Gradients come from torch autograd, the optimizer is torch.optim.AdamW with weight decay on the 2-D
tensors only (docs/contract.md). GPT-2 configs only: `supports()` refuses a variant by its options.

`planted_bug=True` is the deliberately broken mode (backend "example-torch-autograd-broken"): its
attention scale is 1/HS instead of 1/sqrt(HS), one bug in one op. It runs only when the environment
variable GPT2_EXAMPLE_PLUGIN_BROKEN=1 is set; otherwise it is listed as unavailable with that reason,
so that installing the example does not make every conformance run fail.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from conformance.backends import Backend
from gpt2_conformance_plugin import model
from weights import param_shapes

BROKEN_SWITCH = "GPT2_EXAMPLE_PLUGIN_BROKEN"
# The hyperparameters the conformance suite passes to adamw() (conformance.backends.ADAMW_DEFAULTS).
ADAMW_KEYS = {"lr", "beta1", "beta2", "eps", "weight_decay", "decay"}
DECAY_SETS = ("matrices", "all")  # which tensors weight decay applies to (docs/contract.md's AdamW)


class TorchAutogradBackend(Backend):
    def __init__(self, planted_bug: bool = False):
        name = "example-torch-autograd-broken" if planted_bug else "example-torch-autograd-f32"
        what = "attention scale 1/HS (planted bug)" if planted_bug else "autograd gradients"
        super().__init__(name, "fp32", "cpu", f"the example plugin: a compact GPT-2 in plain torch, {what}")
        self.planted_bug = planted_bug

    def available(self) -> tuple[bool, str]:
        if self.planted_bug and os.environ.get(BROKEN_SWITCH) != "1":
            return False, f"the planted-bug mode runs only with {BROKEN_SWITCH}=1 (and then it must fail)"
        return True, ""

    def supports(self, config, tokens: int = 1) -> tuple[bool, str]:
        if not config.is_gpt2:
            options = ", ".join(f"{k}={v}" for k, v in config.variant_options().items())
            return False, f"the example implements GPT-2 only, not the variant options {options}"
        return True, ""

    # ---------------------------------------------------------------- helpers
    def _scale(self, config) -> float | None:
        return 1.0 / (config.n_embd // config.n_head) if self.planted_bug else None  # None: 1/sqrt(HS)

    @staticmethod
    def _tensors(params, config, requires_grad: bool = False) -> dict[str, torch.Tensor]:
        """float32 copies of the canonical params (the caller's arrays are never written)."""
        expected = param_shapes(config)
        if set(params) != set(expected):
            missing, unexpected = sorted(set(expected) - set(params)), sorted(set(params) - set(expected))
            raise ValueError(f"params: missing {missing}, unexpected {unexpected} for this config")
        return {
            name: torch.tensor(np.asarray(params[name], dtype=np.float32), requires_grad=requires_grad)
            for name in expected
        }

    @staticmethod
    def _tokens(config, idx) -> torch.Tensor:
        idx = np.asarray(idx)
        if idx.ndim != 2 or not 1 <= idx.shape[1] <= config.n_ctx:
            raise ValueError(f"idx: expected (B, T) with 1 <= T <= n_ctx = {config.n_ctx}, got shape {idx.shape}")
        if idx.size and not (0 <= idx.min() and idx.max() < config.vocab_size):
            bad = idx[(idx < 0) | (idx >= config.vocab_size)][0]
            raise ValueError(f"idx: token id {bad} is outside the vocabulary [0, {config.vocab_size})")
        return torch.as_tensor(idx, dtype=torch.int64)

    def _loss(self, p, config, x, y):
        logits = model.forward(p, config, x, attention_scale=self._scale(config))
        return logits, model.cross_entropy(logits, y)

    # ---------------------------------------------------------------- the interface
    def forward_backward(self, params, config, idx, targets):
        p = self._tensors(params, config, requires_grad=True)
        logits, loss = self._loss(p, config, self._tokens(config, idx), torch.as_tensor(targets, dtype=torch.int64))
        loss.backward()
        grads = {name: t.grad.numpy() for name, t in p.items()}
        return logits.detach().numpy(), loss.item(), grads

    def activations(self, params, config, idx):
        record: dict[str, np.ndarray] = {}
        with torch.no_grad():
            model.forward(self._tensors(params, config), config, self._tokens(config, idx), record, self._scale(config))
        return record

    def adamw(self, params, config, idx, targets, steps, hp):
        unknown = set(hp) - ADAMW_KEYS
        if unknown:  # a hyperparameter this example does not implement: the check is skipped, not faked
            raise NotImplementedError(f"the example's AdamW takes {sorted(ADAMW_KEYS)}, not {sorted(unknown)}")
        decay_set = hp.get("decay", "matrices")
        if decay_set not in DECAY_SETS:  # a set of named tensors: not implemented here, so skipped
            raise NotImplementedError(f"the example's AdamW decays {DECAY_SETS}, not {decay_set!r}")
        p = self._tensors(params, config, requires_grad=True)
        every = decay_set == "all"
        decay = [t for t in p.values() if every or t.dim() == 2]  # "matrices": wte, wpe, every weight matrix
        no_decay = [t for t in p.values() if not every and t.dim() != 2]  # biases and LayerNorm gains
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp["lr"],
            betas=(hp["beta1"], hp["beta2"]),
            eps=hp["eps"],
        )
        x, y = self._tokens(config, idx), torch.as_tensor(targets, dtype=torch.int64)
        losses = []
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            _, loss = self._loss(p, config, x, y)
            loss.backward()
            losses.append(loss.item())
            opt.step()
        return losses, {name: t.detach().numpy().copy() for name, t in p.items()}

    def generate(self, params, config, idx, n, use_cache=False):
        if use_cache:  # the suite's kv_cache check asks for it: reported as skipped for this backend
            raise NotImplementedError("the example has no KV cache: each greedy step recomputes the window")
        p = self._tensors(params, config)
        return model.generate_greedy(p, config, self._tokens(config, idx), n, self._scale(config)).numpy()
