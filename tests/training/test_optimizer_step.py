"""torch_impl.train's optimizer step, rebuilt from its checkpoints: clipping, the LR schedule, AdamW, decay.

A loss that falls and two runs that agree do not show that the trainer clips, follows its LR
schedule or leaves biases undecayed: a trainer without any of these still learns, and two runs of it
agree with each other. So this test reads what the optimizer did. It trains a few steps with a
checkpoint after every step; checkpoint k holds the weights p_k and AdamW's moments m_k, v_k. With
m_0 = v_0 = 0 and GPT-2's hyperparameters written out here (not read back from the trainer), every
step must satisfy, tensor by tensor:

    g_k = (m_k - beta1 m_{k-1}) / (1 - beta1)                 the gradient AdamW was given
    ||g_k|| (all tensors) = clip * n_k / (n_k + 1e-6)          clipped (n_k: the logged norm, > clip)
    v_k = beta2 v_{k-1} + (1 - beta2) g_k^2
    p_k = p_{k-1} (1 - lr_k wd) - lr_k (m_k / (1 - beta1^k)) / (sqrt(v_k / (1 - beta2^k)) + eps)
          wd = 0.1 for 2-D tensors, 0 for biases and LayerNorm;  lr_k = lr_at(k - 1) of the schedule

Tolerances. Everything is float32 arithmetic rebuilt in float64. m_k - beta1 m_{k-1} cancels about
one digit (m_k ~ 10 (1 - beta1) g), so g_k carries ~1e-6 relative error; the norm and v are checked at
1e-4. A parameter (|p| up to ~1.3 for LayerNorm weights, stored to 6e-8 relative) moves by
lr_k |m_hat / sqrt(v_hat)| >= 5e-3 x ~0.1 per step here, so the rebuilt update of a tensor is within
~1e-4 of the real one: checked at 1e-3 (relative l2 per tensor). Measured on the real trainer (CPU,
float32): norm 7.2e-8, v 1.0e-7, update 1.1e-5 (h.0.ln_1.weight at the last step). The bugs this is for are far larger:
decay on a LayerNorm weight adds lr wd |p| ~ 10% to its update, an unapplied schedule doubles the
first step, beta2 = 0.999 changes v by ~5%, and without clipping ||g_k|| is 2-4x the clip.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch

import weights
from torch_impl.checkpoint import checkpoint_dir, load_checkpoint
from torch_impl.lr_schedule import lr_at
from torch_impl.model import GPT2
from torch_impl.train import train

LR, MIN_LR_FRAC, WARMUP, STEPS = 1e-2, 0.1, 2, 4
BETA1, BETA2, EPS, WD, CLIP = 0.9, 0.95, 1e-8, 0.1, 0.25  # the tiny model's natural norm is 0.6-1.1
PADDED = 128


def _rel_l2(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm((x - ref).ravel()) / np.linalg.norm(ref.ravel()))


def _torch_layout(params: dict, config) -> dict[str, np.ndarray]:
    """The params dict as the trainer's model holds it (nn.Linear weights transposed, wte padded)."""
    model = GPT2.from_params(params, config, dtype=torch.float64, padded_vocab_size=PADDED)
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters()}


def test_every_update_is_clipped_scheduled_adamw_with_decay_on_matrices_only(random_shards, tmp_path, tiny_config):
    config = weights.GPT2Config.tiny()
    weights.save(weights.synthetic(config, seed=3), config, tmp_path / "init")
    cfg = tiny_config(
        random_shards,
        tmp_path / "run",
        init=str(tmp_path / "init"),
        max_steps=STEPS,
        lr=LR,
        min_lr_frac=MIN_LR_FRAC,
        warmup_steps=WARMUP,
        beta1=BETA1,
        beta2=BETA2,
        eps=EPS,
        weight_decay=WD,
        grad_clip=CLIP,
        ckpt_every=1,
        padded_vocab=PADDED,
    )
    out = train(cfg)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    logged_lr = {e["step"]: e["lr"] for e in log if "lr" in e}

    params = [_torch_layout(weights.load(tmp_path / "init")[0], config)]
    states = [None]
    for k in range(1, STEPS + 1):
        p, _, state = load_checkpoint(checkpoint_dir(tmp_path / "run", k))
        params.append(_torch_layout(p, config))
        states.append(state["optimizer"])

    # decay only on the 2-D tensors: the decayed group holds exactly the matrices and embeddings
    names = list(params[0])
    matrices = [n for n in names if params[0][n].ndim == 2]
    vectors = [n for n in names if params[0][n].ndim == 1]
    groups = states[1]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [WD, 0.0]
    assert [len(g["params"]) for g in groups] == [len(matrices), len(vectors)]
    order = dict(zip(groups[0]["params"] + groups[1]["params"], matrices + vectors, strict=True))
    decay = {n: (WD if n in matrices else 0.0) for n in names}

    def moments(k: int) -> tuple[dict, dict]:
        if k == 0:
            zero = {n: np.zeros_like(v) for n, v in params[0].items()}
            return zero, zero
        st = states[k]["state"]
        m = {order[i]: s["exp_avg"].double().numpy() for i, s in st.items()}
        v = {order[i]: s["exp_avg_sq"].double().numpy() for i, s in st.items()}
        for i, s in st.items():
            assert float(s["step"]) == k, (order[i], float(s["step"]), k)
        return m, v

    for k in range(1, STEPS + 1):
        m_prev, v_prev = moments(k - 1)
        m, v = moments(k)
        lr = lr_at(k - 1, LR, LR * MIN_LR_FRAC, WARMUP, STEPS)
        assert logged_lr[k - 1] == lr, f"step {k - 1}: logged lr {logged_lr[k - 1]} != schedule {lr}"

        g = {n: (m[n] - BETA1 * m_prev[n]) / (1 - BETA1) for n in names}
        norm = math.sqrt(sum(float(np.sum(x * x)) for x in g.values()))
        n_k = out["grad_norms"][k - 1]
        assert n_k > CLIP, f"step {k - 1}: natural norm {n_k} does not exceed the clip {CLIP}; the test needs it to"
        expected_norm = CLIP * n_k / (n_k + 1e-6)
        assert abs(norm - expected_norm) <= 1e-4 * expected_norm, (
            f"step {k - 1}: AdamW was given a gradient of norm {norm:.6g}, not the clipped {expected_norm:.6g} "
            f"(norm before clipping {n_k:.6g})"
        )

        for n in names:
            v_expect = BETA2 * v_prev[n] + (1 - BETA2) * g[n] ** 2
            assert _rel_l2(v[n], v_expect) <= 1e-4, f"step {k - 1}, {n}: v does not follow beta2 = {BETA2}"
            m_hat = m[n] / (1 - BETA1**k)
            v_hat = v[n] / (1 - BETA2**k)
            update = -lr * decay[n] * params[k - 1][n] - lr * m_hat / (np.sqrt(v_hat) + EPS)
            moved = params[k][n] - params[k - 1][n]
            if not np.any(update):
                assert not np.any(moved), f"step {k - 1}, {n}: moved without a gradient"
                continue
            err = _rel_l2(moved, update)
            assert err <= 1e-3, (
                f"step {k - 1}, {n}: the update is {err:.2e} (relative l2) away from AdamW at the scheduled "
                f"lr {lr:.3e} with weight decay {decay[n]}"
            )


# ----------------------------------------------------------------------------- a step that is not finite
def _adamw_pair(fused: bool = True):
    """Two identical AdamWs over one matrix and one bias, each with a gradient set and one update done
    (so that the moments and step counts are not zero when a skip is checked)."""
    g = torch.Generator().manual_seed(0)
    w0, b0 = torch.randn(4, 3, generator=g), torch.randn(3, generator=g)
    gw, gb = torch.randn(4, 3, generator=g), torch.randn(3, generator=g)
    out = []
    for _ in range(2):
        w, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())
        opt = torch.optim.AdamW([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}],
                                lr=1e-2, fused=fused)  # fmt: skip
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
        out.append((opt, w, b))
    return out


def _state(opt, *params):
    return [t.clone() for p in params for t in (p.detach(), *opt.state[p].values())]


def test_armed_adamw_leaves_weights_moments_and_steps_alone_when_a_value_is_not_finite():
    from torch_impl.optim import device_skippable, skip_if_not_finite

    (opt, w, b), _ = _adamw_pair()
    assert device_skippable(opt) is opt
    for bad in (float("nan"), float("inf"), -float("inf")):
        before = _state(opt, w, b)
        skip_if_not_finite(opt, torch.tensor(2.5), torch.tensor(bad))  # the norm, say, is not finite
        opt.step()
        after = _state(opt, w, b)
        assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True)), bad


def test_armed_adamw_with_finite_values_updates_exactly_as_an_unarmed_one():
    from torch_impl.optim import skip_if_not_finite

    (armed, w1, b1), (plain, w2, b2) = _adamw_pair()
    skip_if_not_finite(armed, torch.tensor(2.5), torch.tensor(0.7, dtype=torch.float64))
    armed.step()
    plain.step()
    assert not torch.equal(w1.detach(), _adamw_pair()[0][1].detach())  # the update moved the weights
    assert all(torch.equal(x, y) for x, y in zip(_state(armed, w1, b1), _state(plain, w2, b2), strict=True))


def test_only_a_fused_adamw_over_plain_tensors_is_asked_to_skip():
    from types import SimpleNamespace

    from torch_impl.optim import device_skippable

    (fused, _, _), _ = _adamw_pair(fused=True)
    (foreach, _, _), _ = _adamw_pair(fused=False)
    assert device_skippable(foreach) is None  # torch's foreach AdamW refuses found_inf
    assert device_skippable(SimpleNamespace(optim=fused)) is fused  # a ZeroRedundancyOptimizer's local AdamW
    assert device_skippable(torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)) is None
