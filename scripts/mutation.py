"""Mutation testing: plant known bugs, one at a time, and check that the tests catch each one.

    nice -n 10 python scripts/mutation.py                 # every mutant -> docs/results/mutation.md
    python scripts/mutation.py --list                     # the mutants and the tests that must catch them
    python scripts/mutation.py --only trainer-no-clip     # some mutants (the results file is not written)

A mutant is a precise textual replacement: (file, old text, new text). The old text must occur
exactly once in the file, or the run stops before anything is run (exit 2, naming the mutant):
a refactor that moves the code makes the list fail loudly instead of rotting silently.

How a run goes:
  1. copy the repository's files (`git ls-files`: tracked, plus untracked files git does not
     ignore) into a temporary folder; the repository itself is never modified;
  2. baseline: run every test named below on the unmodified copy; they must all pass (a test
     that fails without a bug proves nothing when it fails with one);
  3. for each mutant: apply it to the copy, run only its tests (`pytest -x`), restore the file.
     Caught = a named test failed; survived = they all passed.
  4. write the table (mutant, where, which test caught it, the commit and date) to
     docs/results/mutation.md, and exit 1 if any mutant survived or any run errored.

Tests run with NUMBA_ENABLE_CUDASIM=1 (Numba kernels in the CUDA simulator), TRITON_INTERPRET=1 (the
Triton kernel in Triton's interpreter), PYTHONHASHSEED=0 and
no bytecode cache (a restored file is never shadowed by the mutant's .pyc).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path("docs/results/mutation.md")
TIMEOUT_S = 600  # per pytest run


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids that must catch it
    what: str  # the bug, in words


class MutantError(Exception):
    """A mutant that cannot be applied (its anchor text is gone or ambiguous)."""


# ---------------------------------------------------------------------------------------------- tests
T_OPT = "tests/reference/test_optimizer.py"
T_OPS = "tests/reference/test_ops_gradcheck.py"
T_MODEL_GC = "tests/reference/test_model_gradcheck.py"
T_CKPT = "tests/weights/test_checkpoint.py"
T_SYN = "tests/weights/test_config_synthetic.py"
T_NK = "tests/numba_impl/test_kernels.py"
T_NM = "tests/numba_impl/test_model.py"
T_NF = "tests/numba_impl/test_attention_flash.py"
T_NV = "tests/numba_impl/test_variant_kernels.py"
T_TREF = "tests/torch_impl/test_vs_reference.py"
T_TIO = "tests/torch_impl/test_weights_in_out.py"
T_TRAIN = "tests/training/test_trainer.py"
T_STEP = "tests/training/test_optimizer_step.py"
T_SHARD = "tests/training/test_sharding.py"
T_CONF = "conformance/test_conformance.py"
T_DOCS = "tests/training/test_documents.py"
T_SHUF = "tests/training/test_shuffled_loader.py"
T_EVT = "tests/training/test_eval_tokens.py"
T_HS = "tests/training/test_hellaswag.py"

CONF_TORCH_ADAMW = f"{T_CONF}::test_conformance[tiny-B2-T4-adamw-torch-cpu-f32]"
CONF_HF_ADAMW = f"{T_CONF}::test_conformance[tiny-B2-T4-adamw-hf-transformers-f32]"
TRAINER_STEP = f"{T_STEP}::test_every_update_is_clipped_scheduled_adamw_with_decay_on_matrices_only"

# ---------------------------------------------------------------------------------------------- mutants
MUTANTS: list[Mutant] = [
    # ---- weights/
    Mutant(
        "weights-no-shape-check",
        "weights/checkpoint.py",
        "        if tuple(arr.shape) != shape:\n            raise CheckpointError(",
        "        if False:\n            raise CheckpointError(",
        (f"{T_CKPT}::test_wrong_shape_is_named",),
        "load() accepts a tensor of the wrong shape",
    ),
    Mutant(
        "weights-accepts-nan",
        "weights/checkpoint.py",
        "        if not np.isfinite(arr).all():\n            raise CheckpointError(",
        "        if False:\n            raise CheckpointError(",
        (f"{T_CKPT}::test_non_finite_is_named",),
        "load() accepts NaN/inf weights",
    ),
    Mutant(
        "weights-save-not-atomic",
        "weights/checkpoint.py",
        "    except BaseException:\n        Path(tmp).unlink(missing_ok=True)\n        raise",
        "    except BaseException:\n        os.replace(tmp, final)\n        raise",
        (f"{T_CKPT}::test_save_is_atomic_when_interrupted",),
        "an interrupted save leaves a half-written file in place of the checkpoint",
    ),
    Mutant(
        "weights-residual-init-std",
        "weights/synthetic.py",
        "    proj_std = INIT_STD / math.sqrt(2 * config.n_layer)",
        "    proj_std = INIT_STD / math.sqrt(config.n_layer)",
        (f"{T_SYN}::test_synthetic_statistics_follow_gpt2_init",),
        "residual projections initialised with 0.02/sqrt(L) instead of 0.02/sqrt(2L)",
    ),
    # ---- reference/: forward bugs
    Mutant(
        "reference-layernorm-unbiased-variance",
        "reference/layers.py",
        "    var = (xc * xc).mean(axis=-1, keepdims=True)",
        "    var = (xc * xc).sum(axis=-1, keepdims=True) / (x.shape[-1] - 1)",
        (f"{T_OPS}::test_layernorm_uses_biased_variance_and_eps",),
        "LayerNorm divides the variance by C-1 (GPT-2 divides by C)",
    ),
    Mutant(
        "reference-attention-sees-the-future",
        "reference/attention.py",
        "    return np.arange(Tk)[None, :] <= np.arange(Tk - Tq, Tk)[:, None]",
        "    return np.arange(Tk)[None, :] <= np.arange(Tk - Tq, Tk)[:, None] + 1",
        (f"{T_OPS}::test_attention_is_causal",),
        "the causal mask lets each query see one key ahead",
    ),
    # ---- reference/: backward-only bugs (the forward stays exactly right)
    Mutant(
        "reference-gelu-backward",
        "reference/layers.py",
        "    return dout * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du_dx)",
        "    return dout * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th) * du_dx)",
        (f"{T_OPS}::test_gelu_is_the_tanh_form_and_its_gradient",),
        "GELU backward uses 1 - tanh instead of 1 - tanh^2 (backward only)",
    ),
    Mutant(
        "reference-layernorm-backward-no-variance-path",
        "reference/layers.py",
        "    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))",
        "    dx = rstd * (g - g.mean(axis=-1, keepdims=True))",
        (f"{T_OPS}::test_layernorm_all_inputs",),
        "LayerNorm backward drops the path through the variance (backward only)",
    ),
    Mutant(
        "reference-embedding-backward-no-scatter-add",
        "reference/layers.py",
        "    np.add.at(dwte, idx.reshape(-1), dout.reshape(B * T, C))",
        "    dwte[idx.reshape(-1)] += dout.reshape(B * T, C)",
        (f"{T_OPS}::test_embedding_scatter_add_with_repeated_tokens",),
        "embedding backward keeps one occurrence of a repeated token instead of adding all (backward only)",
    ),
    Mutant(
        "reference-crossentropy-backward-counts-ignored",
        "reference/layers.py",
        "    dlogits = probs * (counted[..., None] / n).astype(probs.dtype)",
        "    dlogits = probs * (counted[..., None] / counted.size).astype(probs.dtype)",
        (f"{T_OPS}::test_crossentropy_mean_over_counted_positions",),
        "cross-entropy backward divides by all positions, ignored ones included (backward only)",
    ),
    Mutant(
        "reference-attention-backward-softmax-jacobian",
        "reference/attention.py",
        "    ds = att * (datt - (datt * att).sum(axis=-1, keepdims=True))",
        "    ds = att * datt",
        (f"{T_OPS}::test_attention_qkv_gradient",),
        "naive attention backward forgets the softmax's row-sum term (backward only)",
    ),
    Mutant(
        "reference-tiled-attention-backward-scale",
        "reference/attention.py",
        "        dq[:, :, k0:] += (ds @ k[:, :, k0:k1]) * scale",
        "        dq[:, :, k0:] += ds @ k[:, :, k0:k1]",
        (f"{T_OPS}::test_attention_qkv_gradient",),
        "tiled (flash) attention backward forgets the 1/sqrt(HS) scale in dq (backward only)",
    ),
    Mutant(
        "reference-tied-head-gradient-dropped",
        "reference/model.py",
        '        dx, acts["idx"], config.vocab_size, config.n_ctx, dwte=dwte_head\n',
        '        dx, acts["idx"], config.vocab_size, config.n_ctx, dwte=None\n',
        (f"{T_MODEL_GC}::test_unused_rows_get_exact_zero_and_tied_wte_has_both_terms",),
        "the wte gradient loses the tied head's term (backward only)",
    ),
    # ---- reference/ optimizer
    Mutant(
        "reference-adamw-decay-every-tensor",
        "reference/optimizer.py",
        "            return {name for name, p in params.items() if p.ndim == 2}",
        "            return {name for name, p in params.items() if p.ndim >= 1}",
        (f"{T_OPT}::test_first_step_by_hand_and_decay_only_on_matrices",),
        "reference AdamW decays biases and LayerNorm parameters too",
    ),
    Mutant(
        "reference-adamw-no-v-bias-correction",
        "reference/optimizer.py",
        "        v_hat = v / bias_correction2",
        "        v_hat = v",
        (f"{T_OPT}::test_matches_torch_adamw_over_five_steps",),
        "reference AdamW without the second-moment bias correction",
    ),
    # ---- numba_impl/ (CUDA simulator)
    Mutant(
        "numba-gelu-backward",
        "numba_impl/kernels/gelu.py",
        "    return float32(0.5) * (float32(1.0) + th) + float32(0.5) * x * (float32(1.0) - th * th) * du",
        "    return float32(0.5) * (float32(1.0) + th) + float32(0.5) * x * (float32(1.0) - th) * du",
        (f"{T_NK}::test_gelu_forward_backward_match_reference",),
        "the GELU kernels' derivative uses 1 - tanh instead of 1 - tanh^2 (backward only)",
    ),
    Mutant(
        "numba-residual-backward-overwrites",
        "numba_impl/kernels/residual.py",
        "        db[i] += g",
        "        db[i] = g",
        (f"{T_NK}::test_residual_forward_backward",),
        "residual backward overwrites the branch gradient instead of accumulating (backward only)",
    ),
    Mutant(
        "numba-encoder-wpe-backward-overwrites",
        "numba_impl/kernels/encoder.py",
        "        dwpe[i] += acc",
        "        dwpe[i] = acc",
        (f"{T_NK}::test_encoder_forward_and_both_backwards_match_numpy",),
        "sorted embedding backward overwrites dwpe instead of accumulating (backward only)",
    ),
    Mutant(
        "numba-layernorm-backward-no-mean-path",
        "numba_impl/kernels/layernorm.py",
        "    g_mean = warp_sum(g_sum) / float32(C)",
        "    g_mean = warp_sum(g_sum) * float32(0.0)",
        (f"{T_NK}::test_layernorm_forward_backward_match_reference",),
        "the warp LayerNorm backward kernel drops the path through the mean (backward only)",
    ),
    Mutant(
        "numba-layernorm-dweight-without-rstd",
        "numba_impl/kernels/layernorm.py",
        "            dw += d * (inp[row * C + c] - mean[row]) * rstd[row]",
        "            dw += d * (inp[row * C + c] - mean[row])",
        (f"{T_NK}::test_layernorm_forward_backward_match_reference",),
        "LayerNorm's weight gradient uses x - mean instead of the normalised x (backward only)",
    ),
    Mutant(
        "numba-naive-attention-backward-dk-scale",
        "numba_impl/kernels/attention.py",
        "        dqkv[y + C + c] = dk * scale",
        "        dqkv[y + C + c] = dk",
        (f"{T_NK}::test_naive_attention_matches_reference",),
        "the naive attention backward forgets the 1/sqrt(HS) scale in dk (backward only)",
    ),
    Mutant(
        "numba-flash-backward-dq-scale",
        "numba_impl/kernels/attention.py",
        "                        dqkv[row + dd] = dq[i, c] * scale",
        "                        dqkv[row + dd] = dq[i, c]",
        (f"{T_NF}::test_flash_with_the_gpu_block_layout_of_rows_and_lanes",),
        "the flash attention backward (dq pass) forgets the 1/sqrt(HS) scale (backward only)",
    ),
    Mutant(
        "numba-flash-vec-backward-dq-scale",
        "numba_impl/kernels/attention.py",
        "dqkv[row + dd] = dq[i, c, w] * scale",
        "dqkv[row + dd] = dq[i, c, w]",
        (f"{T_NK}::test_flash_attention_matches_reference_and_naive_twin",),
        "the default (16-byte-load) flash backward forgets the 1/sqrt(HS) scale in dq (backward only)",
    ),
    Mutant(
        "numba-flash-forward-unscaled-q",
        "numba_impl/kernels/attention.py",
        "                qkv[(x + t * W if GQA else x + t * 3 * C) + e % HS] * scale if t < T else float32(0.0)",
        "                qkv[(x + t * W if GQA else x + t * 3 * C) + e % HS] if t < T else float32(0.0)",
        (f"{T_NF}::test_flash_with_the_gpu_block_layout_of_rows_and_lanes",),
        "the flash attention forward stages q without the 1/sqrt(HS) scale",
    ),
    Mutant(
        "numba-matmul-backward-dweight-overwrites",
        "numba_impl/kernels/matmul.py",
        '        matmul(dweight, inp, dout, C, OC, BT, "TN", accumulate=True, dbias=dbias)',
        '        matmul(dweight, inp, dout, C, OC, BT, "TN", accumulate=False, dbias=dbias)',
        (f"{T_NK}::test_matmul_backward_matches_reference",),
        "the fast matmul backward overwrites the weight gradient instead of accumulating (backward only)",
    ),
    Mutant(
        "numba-adamw-decay-every-element",
        "numba_impl/kernels/adamw.py",
        "        if i < n_decay:",
        "        if i < N:",
        (f"{T_NK}::test_adamw_kernel_matches_reference_over_three_steps",),
        "AdamW kernel decays every element, biases and LayerNorm included",
    ),
    Mutant(
        "numba-adamw-no-v-bias-correction",
        "numba_impl/kernels/adamw.py",
        "1.0 - beta1**step, 1.0 - beta2**step], dtype=np.float32)",
        "1.0 - beta1**step, 1.0], dtype=np.float32)",
        (f"{T_NK}::test_adamw_kernel_matches_reference_over_three_steps",),
        "AdamW launcher without the second-moment bias correction",
    ),
    Mutant(
        "numba-model-decay-on-1d",
        "numba_impl/model.py",
        "        self.n_decay = sum(self.offsets[n][1] for n in self.names if len(shapes[n]) == 2)",
        "        self.n_decay = self.n_params",
        (f"{T_NM}::test_adamw_steps_follow_reference_trajectory",),
        "the Numba model marks every tensor for weight decay",
    ),
    Mutant(
        "numba-rope-backward-not-inverse",
        "numba_impl/kernels/rope.py",
        "            s = sin[p] * sign",
        "            s = sin[p]",
        (f"{T_NV}::test_rope_forward_backward_match_reference_out_of_place_and_in_place",),
        "the RoPE kernel's backward rotates by +angle instead of -angle (backward only)",
    ),
    Mutant(
        "numba-gqa-dkv-wrong-query-heads",
        "numba_impl/kernels/attention.py",
        """                h = kvh * G + hg
                bh = b * NH + h
                x = b * T * W + h * HS
                t0 = t0 - hg * span
            cuda.syncthreads()
            for e in range(tid, K * HSW, NTHREADS):""",
        """                h = kvh + hg * (NH // G)
                bh = b * NH + h
                x = b * T * W + h * HS
                t0 = t0 - hg * span
            cuda.syncthreads()
            for e in range(tid, K * HSW, NTHREADS):""",
        (f"{T_NV}::test_gqa_naive_and_flash_match_reference",),
        "the default flash dk/dv kernel sums a kv head's gradient over strided query heads, not its group",
    ),
    Mutant(
        "numba-rmsnorm-backward-no-mean-square-path",
        "numba_impl/kernels/rmsnorm.py",
        "                d[k] += r * (g[k] * w[k] - xn[k] * gn_mean)",
        "                d[k] += r * (g[k] * w[k])",
        (f"{T_NV}::test_rmsnorm_naive_and_warp_match_reference_and_each_other",),
        "the warp RMSNorm backward drops the path through the mean square (backward only)",
    ),
    # ---- the variants outside numba_impl: reference, torch_impl, the Llama mapping
    Mutant(
        "reference-rope-forward-ignores-start",
        "reference/rope.py",
        "    cos, sin = rope_tables(T, HS, theta, start, dtype=qkv.dtype)",
        "    cos, sin = rope_tables(T, HS, theta, 0, dtype=qkv.dtype)",
        ("tests/reference/test_variants_generate.py::test_cached_and_uncached_generation_agree",),
        "the reference's RoPE forward rotates every chunk from position 0 (a KV cache's new tokens at the wrong angle)",
    ),
    Mutant(
        "reference-swiglu-gate-up-swapped",
        "reference/layers.py",
        "    a, u = fc[..., :H], fc[..., H:]\n    return silu_forward(a) * u",
        "    u, a = fc[..., :H], fc[..., H:]\n    return silu_forward(a) * u",
        ("tests/reference/test_variants_ops.py::test_swiglu_by_hand_gate_first_then_up",),
        "the reference's SwiGLU gates with the up half and scales by the gate half",
    ),
    Mutant(
        "torch-untied-head-uses-wte",
        "torch_impl/model.py",
        "        return self.wte.weight if self.config.tied_head else self.lm_head.weight",
        "        return self.wte.weight",
        (
            "tests/torch_impl/test_vs_reference_variants.py::test_float64_logits_loss_grads_and_activations_match_the_reference",
        ),
        "the PyTorch model computes the logits of an untied head with wte",
    ),
    Mutant(
        "hf-llama-k-v-slices-swapped",
        "weights/hf_llama.py",
        '    return {"q_proj": slice(0, q), "k_proj": slice(q, q + kv), "v_proj": slice(q + kv, q + 2 * kv)}',
        '    return {"q_proj": slice(0, q), "k_proj": slice(q + kv, q + 2 * kv), "v_proj": slice(q, q + kv)}',
        ("tests/torch_impl/test_vs_hf_llama.py::test_logits_loss_and_gradients_match_transformers_llama",),
        "the name mapping onto transformers' Llama hands it our value heads as its key heads",
    ),
    # ---- torch_impl/ model
    Mutant(
        "torch-erf-gelu",
        "torch_impl/model.py",
        '        h = F.gelu(h, approximate="tanh")',
        '        h = F.gelu(h, approximate="none")',
        (f"{T_TREF}::test_float64_logits_loss_grads_match_the_reference",),
        "the torch MLP uses erf-GELU instead of GPT-2's tanh form",
    ),
    Mutant(
        "torch-attention-scale",
        "torch_impl/model.py",
        "    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(HS))  # (B, NH, Tq, Tk)",
        "    att = (q @ k.transpose(-2, -1)) * (1.0 / HS)  # (B, NH, Tq, Tk)",
        (f"{T_TREF}::test_float64_logits_loss_grads_match_the_reference",),
        "math attention scales scores by 1/HS instead of 1/sqrt(HS)",
    ),
    Mutant(
        "torch-causal-mask-one-ahead",
        "torch_impl/model.py",
        "tril(diagonal=Tk - Tq)",
        "tril(diagonal=Tk - Tq + 1)",
        (f"{T_TREF}::test_float64_logits_loss_grads_match_the_reference",),
        "the math attention's causal mask lets each query see one key ahead",
    ),
    # ---- torch_impl/ trainer
    Mutant(
        "trainer-no-grad-clip",
        "torch_impl/train.py",
        "    clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf",
        "    clip = math.inf",
        (TRAINER_STEP,),
        "the trainer never clips the gradient norm",
    ),
    Mutant(
        "adamw-skip-never-armed",
        "torch_impl/optim.py",
        "    adamw.found_inf = (~finite).float()",
        "    adamw.found_inf = torch.zeros(())",
        (f"{T_STEP}::test_armed_adamw_leaves_weights_moments_and_steps_alone_when_a_value_is_not_finite",),
        "a step whose loss or gradient norm is not finite still updates the weights",
    ),
    Mutant(
        "adamw-skip-inverted",
        "torch_impl/optim.py",
        "    adamw.found_inf = (~finite).float()",
        "    adamw.found_inf = finite.float()",
        (f"{T_STEP}::test_armed_adamw_with_finite_values_updates_exactly_as_an_unarmed_one", TRAINER_STEP),
        "every finite step skips its update (the weights never move)",
    ),
    Mutant(
        "trainer-no-finite-check-after-skip",
        "torch_impl/train.py",
        '    check_finite(step, loss_value, norm_value, run.summary["checkpoint"])  # raises; weights untouched',
        "    pass",
        (f"{T_TRAIN}::test_nonfinite_loss_stops_with_a_clear_message",),
        "a run whose loss is NaN goes on (each update skipped) instead of stopping with the error",
    ),
    Mutant(
        "trainer-lr-schedule-not-applied",
        "torch_impl/train.py",
        '    for group in run.optimizer.param_groups:\n        group["lr"] = lr',
        "    for group in run.optimizer.param_groups:\n        pass",
        (TRAINER_STEP,),
        "the LR schedule is computed and logged but never given to the optimizer (constant peak LR)",
    ),
    Mutant(
        "trainer-beta2",
        "torch_impl/train.py",
        "betas=(cfg.beta1, cfg.beta2)",
        "betas=(cfg.beta1, 0.999)",
        (TRAINER_STEP,),
        "the trainer's AdamW ignores --beta2 (0.999 instead of GPT-2's 0.95)",
    ),
    Mutant(
        "trainer-ddp-sync-every-micro-step",
        "torch_impl/sharding.py",
        "        model.require_backward_grad_sync = last_micro_step",
        "        model.require_backward_grad_sync = True",
        (f"{T_TRAIN}::test_ddp_two_processes_match_one",),
        "DDP all-reduces on every micro-step (no_sync removed): same numbers, grad_accum times the traffic",
    ),
    Mutant(
        "trainer-save-failure-not-shared",
        "torch_impl/train.py",
        "        dist.broadcast_object_list(message, src=0)\n",
        "        dist.barrier()\n",
        (f"{T_SHARD}::test_rank0_save_failure_stops_every_rank",),
        "rank 0's failed checkpoint write is not told to the other ranks: they train on into a dead collective",
    ),
    Mutant(
        "zero1-plain-adamw",
        "torch_impl/sharding.py",
        '    if shard == "zero1":\n        from torch.distributed.optim import ZeroRedundancyOptimizer',
        '    if shard == "zero-1":\n        from torch.distributed.optim import ZeroRedundancyOptimizer',
        (f"{T_SHARD}::test_each_rank_holds_its_share",),
        "--shard zero1 builds a plain AdamW: the same numbers, but every rank keeps all of AdamW's state",
    ),
    Mutant(
        "fsdp-resume-without-adamw-state",
        "torch_impl/sharding.py",
        "set_optimizer_state_dict(raw_model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))",
        "pass",
        (f"{T_SHARD}::test_sharded_resume_is_bit_exact",),
        "--shard fsdp resumes the weights but starts AdamW's moments from zero",
    ),
    Mutant(
        "trainer-loss-not-scaled-by-accumulation",
        "torch_impl/train.py",
        "        loss = loss / run.grad_accum\n",
        "        loss = loss / 1\n",
        (f"{T_TRAIN}::test_grad_accumulation_matches_one_big_batch",),
        "micro-step losses are not divided by grad_accum (gradients grad_accum times too big)",
    ),
    # ---- torch_impl: the data people train on (documents, the shuffled order, what evaluation measured)
    Mutant(
        "documents-resume-from-the-file-start",
        "torch_impl/data.py",
        'start = (cursor["line"], cursor["offset"]) if i == cursor["file"] else (0, 0)',
        "start = (0, 0)",
        (f"{T_DOCS}::test_resume_after_an_interruption_gives_the_same_shards",),
        "a resumed tokenisation of JSONL/Parquet reads its file again from the start (documents twice)",
    ),
    Mutant(
        "documents-val-one-late",
        "torch_impl/data.py",
        'split = "train" if after["document"] <= n_train else "val"',
        'split = "train" if after["document"] < n_train else "val"',
        (f"{T_DOCS}::test_every_document_starts_with_endoftext_and_the_last_tenth_is_val",),
        "the last train document goes to the val split",
    ),
    Mutant(
        "shuffle-same-order-every-epoch",
        "torch_impl/shuffled_loader.py",
        "np.random.SeedSequence([seed, epoch])",
        "np.random.SeedSequence([seed, 0])",
        (f"{T_SHUF}::test_every_window_appears_once_per_epoch_and_epochs_differ",),
        "the shuffled loader reads every epoch in the same order",
    ),
    Mutant(
        "shuffle-resume-restarts-the-epoch",
        "torch_impl/shuffled_loader.py",
        "        self._start(epoch, pos)\n",
        "        self._start(epoch, 0)\n",
        (f"{T_SHUF}::test_trainer_resume_mid_epoch_is_bit_exact",),
        "a resumed shuffled run starts its epoch over (windows read twice, the trajectory changes)",
    ),
    Mutant(
        "shuffle-ranks-overlap",
        "torch_impl/shuffled_loader.py",
        "mine = self.perm[self.pos + self.rank * self.B : self.pos + (self.rank + 1) * self.B]",
        "mine = self.perm[self.pos + self.rank : self.pos + self.rank + self.B]",
        (f"{T_SHUF}::test_ranks_partition_each_step_as_one_process_reads_it",),
        "the ranks' shares of a shuffled step overlap (rank r starts r windows in, not r*B)",
    ),
    Mutant(
        "eval-counts-repeated-batches",
        "torch_impl/train.py",
        "return _all_reduce_mean(total / batches, d).item(), len(steps) * loader.step_tokens",
        "return _all_reduce_mean(total / batches, d).item(), batches * loader.step_tokens",
        (f"{T_EVT}::test_repeated_val_batches_are_counted_once_and_warned_about_once",),
        "validation reports the tokens it read, repeats included, as distinct (and never warns)",
    ),
    Mutant(
        "hellaswag-scores-one-token-late",
        "torch_impl/eval_hellaswag.py",
        "mask[i, start - 1 : len(row) - 1] = True",
        "mask[i, start : len(row) - 1] = True",
        (f"{T_HS}::test_one_example_scored_by_hand",),
        "the multiple-choice eval skips the loss of each ending's first token",
    ),
    Mutant(
        "hellaswag-total-loss-as-accuracy",
        "torch_impl/eval_hellaswag.py",
        "correct += int(np.argmin(mean) == ex.label)",
        "correct += int(np.argmin(total) == ex.label)",
        (f"{T_HS}::test_accuracy_is_the_share_of_argmin_mean_loss_at_the_label",),
        "the multiple-choice accuracy picks the ending of least summed loss, not least mean loss",
    ),
    # ---- conformance/: the AdamW trajectory check must catch optimizer bugs of a backend
    Mutant(
        "conformance-adamw-beta2",
        "conformance/backends.py",
        'betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"], foreach=False)',
        'betas=(hp["beta1"], 0.999), eps=hp["eps"], foreach=False)',
        (CONF_TORCH_ADAMW,),
        "the torch backends' AdamW uses beta2 = 0.999 instead of 0.95",
    ),
    Mutant(
        "torch-adamw-decay-every-tensor",
        "torch_impl/optim.py",
        "            return {n for n, p in named if p.dim() == 2}",
        "            return {n for n, p in named if p.dim() >= 1}",
        (TRAINER_STEP, CONF_TORCH_ADAMW),
        "AdamW's default decay set (the trainer's and the torch backends') decays every tensor, biases and "
        "LayerNorm included",
    ),
    Mutant(
        "conformance-adamw-eps",
        "conformance/backends.py",
        'betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"], foreach=False)',
        'betas=(hp["beta1"], hp["beta2"]), eps=1e-6, foreach=False)',
        (CONF_HF_ADAMW,),
        "the torch backends' AdamW uses epsilon 1e-6 instead of 1e-8",
    ),
    Mutant(
        "chunked-loss-scores-pad-columns",
        "torch_impl/chunked_loss.py",
        '    zf = torch.where(cols < vocab_size, z.to(acc), float("-inf"))  # (R, Vp) pad columns: -inf\n',
        "    zf = z.to(acc)\n",
        ("tests/torch_impl/test_chunked_loss.py::test_the_function_alone_matches_cross_entropy_of_the_logits",),
        "the chunked cross-entropy leaves the pad columns in the softmax (they are scored and get gradient)",
    ),
    Mutant(
        "chunked-loss-ignored-rows-get-gradient",
        "torch_impl/chunked_loss.py",
        "    scale = (ok.to(acc) / n_valid)[:, None]  # (R, 1) ignored rows: no gradient",
        "    scale = 1.0 / n_valid",
        ("tests/torch_impl/test_chunked_loss.py::test_every_target_ignored_in_a_chunk_and_a_mean_over_the_valid_rows",),
        "the chunked cross-entropy sends gradient from positions whose target is -1 (ignored)",
    ),
    Mutant(
        "triton-loss-scores-pad-columns",
        "torch_impl/cross_entropy_triton.py",
        '                x = tl.load(z_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)\n'
        "                m_new = tl.maximum(m, tl.max(x, axis=0))\n",
        '                x = tl.load(z_row + cols, mask=cols < Vp, other=float("-inf")).to(tl.float32)\n'
        "                m_new = tl.maximum(m, tl.max(x, axis=0))\n",
        ("tests/torch_impl/test_cross_entropy_triton.py::test_loss_and_gradient_match_cross_entropy",),
        "the Triton loss kernel's log-sum-exp takes the pad columns in",
    ),
    Mutant(
        "triton-loss-ignored-rows-get-gradient",
        "torch_impl/cross_entropy_triton.py",
        "                scale = tl.where(valid, 1.0 / tl.load(n_valid_ptr), 0.0)\n",
        "                scale = 1.0 / tl.load(n_valid_ptr)\n",
        ("tests/torch_impl/test_cross_entropy_triton.py::test_loss_and_gradient_match_cross_entropy",),
        "the Triton loss kernel sends gradient from rows whose target is -1 (ignored)",
    ),
    Mutant(
        "triton-whole-row-loss-scores-pad-columns",
        "torch_impl/cross_entropy_triton.py",
        '        x = tl.where(cols < V, x, float("-inf"))  # the pad columns: probability 0\n',
        "",
        ("tests/torch_impl/test_cross_entropy_triton.py::test_loss_and_gradient_match_cross_entropy",),
        "the whole-row loss kernel's log-sum-exp takes the pad columns in",
    ),
    Mutant(
        "triton-whole-row-loss-drops-the-last-piece",
        "torch_impl/cross_entropy_triton.py",
        "        s += tl.sum(tl.exp(x2.to(tl.float32) - m), axis=0)\n",
        "",
        ("tests/torch_impl/test_cross_entropy_triton.py::test_loss_and_gradient_match_cross_entropy",),
        "the whole-row loss kernel's sum of exponentials leaves out the row's third piece",
    ),
    Mutant(
        "triton-whole-row-loss-ignored-rows-get-gradient",
        "torch_impl/cross_entropy_triton.py",
        "scale = tl.where(valid, 1.0 / tl.load(n_valid_ptr), 0.0)  # ignored rows: no gradient (whole rows)",
        "scale = 1.0 / tl.load(n_valid_ptr)  # (whole rows)",
        ("tests/torch_impl/test_cross_entropy_triton.py::test_loss_and_gradient_match_cross_entropy",),
        "the whole-row loss kernel sends gradient from rows whose target is -1 (ignored)",
    ),
    Mutant(
        "qkv-gather-puts-k-and-v-over-q",
        "torch_impl/qkv_triton.py",
        "            tl.store(dqkv_ptr + r64[:, None] * stride_out + p * HS + d[None, :], g, mask=inside)\n",
        "            tl.store(dqkv_ptr + r64[:, None] * stride_out + head * HS + d[None, :], g, mask=inside)\n",
        ("tests/torch_impl/test_qkv_triton.py::test_gather_is_the_concatenation_and_its_column_sums",),
        "the gather writes each head of k and v into q's columns (the head within its part, not across all three)",
    ),
    Mutant(
        "qkv-gather-sums-no-bias-gradient",
        "torch_impl/qkv_triton.py",
        "                acc += g.to(tl.float32)  # masked rows loaded 0: they add 0\n",
        "                acc += 0.0\n",
        ("tests/torch_impl/test_qkv_triton.py::test_the_ops_gradients_match_the_plain_lines",),
        "the gather's column sums stay 0: c_attn's bias gets no gradient",
    ),
    Mutant(
        "qkv-backward-dx-from-q-alone",
        "torch_impl/qkv_triton.py",
        "        dx = dqkv @ w if need_dx else None  # (M, C)\n",
        "        dx = dqkv[:, : w.shape[1]] @ w[: w.shape[1]] if need_dx else None  # (M, C)\n",
        ("tests/torch_impl/test_qkv_triton.py::test_the_ops_gradients_match_the_plain_lines",),
        "the op's input gradient takes q's part of the gradient only, dropping k's and v's",
    ),
    Mutant(
        "trainer-ignores-qkv-impl",
        "torch_impl/train.py",
        "    model.set_qkv_impl(cfg.qkv_impl)\n",
        "",
        ("tests/training/test_trainer.py::test_all_the_fused_ops_train_like_the_plain_model_in_bf16",),
        "the trainer never hands --qkv-impl to the model",
    ),
    Mutant(
        "mlp-kernel-drops-gelu-slope-term",
        "torch_impl/mlp_triton.py",
        "            dgelu = s + 2.0 * h * s * (e * s) * _K * (1.0 + 3.0 * 0.044715 * h * h)\n",
        "            dgelu = s\n",
        ("tests/torch_impl/test_mlp_triton.py::test_gelu_backward_bias_grad_is_gelus_derivative_and_its_column_sums",),
        "the MLP kernel's gelu' keeps only sigmoid(2u), dropping the tanh slope term",
    ),
    Mutant(
        "mlp-backward-dw-fc-skips-gelu",
        "torch_impl/mlp_triton.py",
        "        dw_fc = dh.t() @ x  # (H, C)\n",
        "        dw_fc = dg.t() @ x  # (H, C)\n",
        ("tests/torch_impl/test_mlp_triton.py::test_fused_mlp_gradients_match_the_plain_mlps",),
        "the hand-written MLP backward takes c_fc's weight gradient from dg, past GELU's derivative",
    ),
    Mutant(
        "trainer-ignores-mlp-impl",
        "torch_impl/train.py",
        "    model.set_mlp_impl(cfg.mlp_impl)\n",
        "",
        ("tests/training/test_trainer.py::test_fused_mlp_trains_like_the_plain_mlp_in_bf16",),
        "the trainer never hands --mlp-impl to the model",
    ),
    Mutant(
        "layernorm-kernel-drops-the-residual-gradient",
        "torch_impl/layernorm_triton.py",
        "                dx += tl.load(dres_ptr + r64 * stride_dres + cols[None, :], mask=inside, other=0.0)\n",
        "                dx += 0.0\n",
        ("tests/torch_impl/test_layernorm_triton.py::test_residual_layernorm_gradients_are_the_float64_ones",),
        "the LayerNorm kernel leaves out the gradient that comes back along the residual stream",
    ),
    Mutant(
        "layernorm-kernel-drops-the-xhat-projection",
        "torch_impl/layernorm_triton.py",
        "            dx = (dxhat - mean_dxhat[:, None] - xhat * mean_dxhat_xhat[:, None]) * rstd[:, None]\n",
        "            dx = (dxhat - mean_dxhat[:, None]) * rstd[:, None]\n",
        ("tests/torch_impl/test_layernorm_triton.py::test_residual_layernorm_gradients_are_the_float64_ones",),
        "the LayerNorm kernel's dx forgets the variance term, -xhat mean(dxhat xhat)",
    ),
    Mutant(
        "layernorm-kernel-sums-dy-for-the-c-proj-bias",
        "torch_impl/layernorm_triton.py",
        "                dp_acc += dx  #",
        "                dp_acc += dy  #",
        ("tests/torch_impl/test_layernorm_triton.py::test_residual_layernorm_gradients_are_the_float64_ones",),
        "the LayerNorm kernel sums dy, not dx_new, for c_proj's bias gradient",
    ),
    Mutant(
        "model-leaves-out-the-attention-c-proj-bias",
        "torch_impl/model.py",
        "        x, m = residual_layernorm(x, attn, self.ln_2, self.attn.c_proj.bias)",
        "        x, m = residual_layernorm(x, attn, self.ln_2)",
        ("tests/torch_impl/test_layernorm_triton.py::test_a_model_with_the_fused_layernorms_matches_the_plain_one",),
        "under --norm-impl triton attention's c_proj bias is added nowhere (its matmul leaves it to the op)",
    ),
    Mutant(
        "gelu-forward-kernel-drops-the-cubic",
        "torch_impl/mlp_triton.py",
        "        e = tl.exp(tl.minimum(-2.0 * _K * (h + 0.044715 * h * h * h), 80.0))  # exp(-2u), as in",
        "        e = tl.exp(tl.minimum(-2.0 * _K * h, 80.0))  # exp(-2u), as in",
        ("tests/torch_impl/test_mlp_triton.py::test_gelu_forward_is_gelu_rounded_once",),
        "the GELU forward kernel leaves out the 0.044715 h^3 term of tanh's argument",
    ),
    Mutant(
        "trainer-ignores-norm-impl",
        "torch_impl/train.py",
        "    model.set_norm_impl(cfg.norm_impl)\n",
        "",
        ("tests/training/test_trainer.py::test_fused_layernorms_train_like_the_plain_ones_in_bf16",),
        "the trainer never hands --norm-impl to the model",
    ),
    Mutant(
        "trainer-ignores-loss-impl",
        "torch_impl/train.py",
        "    model.set_loss_impl(cfg.loss_impl, cfg.loss_chunk_rows)\n",
        "",
        ("tests/training/test_trainer.py::test_chunked_loss_trains_the_same_trajectory",),
        "--loss-impl chunked is accepted but the trainer keeps the plain loss",
    ),
    Mutant(
        "trainer-cuda-graphs-with-accumulation",
        "torch_impl/train.py",
        "    if cfg.compile and cfg.compile_mode in CUDA_GRAPH_MODES and grad_accum > 1:",
        "    if cfg.compile and cfg.compile_mode in CUDA_GRAPH_MODES and grad_accum > 1 and False:",
        ("tests/training/test_trainer.py::test_cuda_graph_modes_are_allowed_without_gradient_accumulation",),
        "CUDA graph compile modes are accepted with gradient accumulation (torch refuses or corrupts the gradients)",
    ),
    Mutant(
        "numba-gradients-not-zeroed",
        "numba_impl/model.py",
        "        zero_fill(self.d_grads, self.n_params, self.stream)\n",
        "",
        ("tests/numba_impl/test_model.py::test_adamw_steps_follow_reference_trajectory",),
        "the Numba backward adds into the last step's gradients instead of zeroed ones",
    ),
    Mutant(
        "trainer-coordinate-descent-dropped",
        "torch_impl/train.py",
        '        return lambda m: torch.compile(m, options={"coordinate_descent_tuning": True})',
        "        return lambda m: torch.compile(m, mode=cfg.compile_mode)",
        ("tests/training/test_trainer.py::test_compile_settings_reach_torch_compile",),
        "--coordinate-descent-tuning is accepted and never reaches torch.compile",
    ),
    Mutant(
        "trainer-resume-chokes-on-half-a-log-line",
        "torch_impl/train.py",
        "            if i == len(lines) - 1:\n                break\n",
        "",
        ("tests/training/test_trainer.py::test_resume_after_a_crash_mid_log_line",),
        "a resume after a crash mid-write refuses the log's half last line instead of dropping it",
    ),
    Mutant(
        "export-nothing-written-is-success",
        "conformance/golden.py",
        "    if not written:  # nothing to check against",
        "    if False:  # nothing to check against",
        ("tests/conformance/test_check.py::test_export_that_writes_nothing_is_an_error",),
        "`conformance export` that writes no golden file exits 0",
    ),
]


# ---------------------------------------------------------------------------------------------- machinery
def apply(mutant: Mutant, root: Path) -> str:
    """Apply `mutant` to the file under `root`; return the original text (to restore it).

    Raises MutantError unless the anchor text occurs exactly once."""
    path = root / mutant.path
    if not path.is_file():
        raise MutantError(f"mutant {mutant.name}: {mutant.path} does not exist")
    text = path.read_text(encoding="utf-8")
    count = text.count(mutant.old)
    if count != 1:
        where = "is gone" if count == 0 else f"occurs {count} times"
        raise MutantError(f"mutant {mutant.name}: its anchor text {where} in {mutant.path}: {mutant.old!r}")
    if mutant.old == mutant.new:
        raise MutantError(f"mutant {mutant.name}: new text equals old text")
    path.write_text(text.replace(mutant.old, mutant.new), encoding="utf-8")
    return text


def line_of(mutant: Mutant, root: Path) -> int:
    text = (root / mutant.path).read_text(encoding="utf-8")
    return text[: text.index(mutant.old)].count("\n") + 1 + len(mutant.old) - len(mutant.old.lstrip("\n"))


def check_all(mutants: list[Mutant], root: Path) -> None:
    """Every anchor applies exactly once (checked on a throwaway read, nothing written)."""
    names = [m.name for m in mutants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise MutantError(f"duplicate mutant names: {dupes}")
    for m in mutants:
        path = root / m.path
        if not path.is_file():
            raise MutantError(f"mutant {m.name}: {m.path} does not exist")
        count = path.read_text(encoding="utf-8").count(m.old)
        if count != 1:
            where = "is gone" if count == 0 else f"occurs {count} times"
            raise MutantError(f"mutant {m.name}: its anchor text {where} in {m.path}: {m.old!r}")
        if not m.tests:
            raise MutantError(f"mutant {m.name}: names no test")


def repo_files(source: Path) -> list[str]:
    """Tracked files plus untracked files that git does not ignore (what a user's working tree holds)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=source,
        capture_output=True,
        check=True,
    ).stdout
    return sorted({f for f in out.decode().split("\0") if f and (source / f).is_file()})


def copy_repo(source: Path, dest: Path, ref: str | None = None) -> None:
    """The working tree's files (ref None) or the tree of a commit (`git archive ref`) into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    if ref is not None:
        archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=source, capture_output=True)
        if archive.returncode != 0:
            raise MutantError(f"--ref {ref}: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        return
    for rel in repo_files(source):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, target)


def test_env(root: Path, source: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        NUMBA_ENABLE_CUDASIM="1",
        TRITON_INTERPRET="1",
        PYTHONHASHSEED="0",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONPATH=str(root),
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
        COLUMNS="400",  # pytest's summary lines are cut to the terminal width
    )
    shared = source.parent / "shared"
    if "GPT2_SHARED_DIR" not in env and shared.is_dir():  # the copy has no ../shared of its own
        env["GPT2_SHARED_DIR"] = str(shared)
    return env


_FAILED = re.compile(r"^(FAILED|ERROR) (\S+)(?: - (.*))?$", re.M)


@dataclass
class Outcome:
    verdict: str  # "caught", "survived", "error", "passed" (baseline), "failed" (baseline)
    test: str = ""
    message: str = ""
    seconds: float = 0.0
    output: str = ""


def run_tests(root: Path, source: Path, tests: tuple[str, ...], stop_first: bool) -> Outcome:
    basetemp = root.parent / "pytest-tmp"
    shutil.rmtree(basetemp, ignore_errors=True)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "--tb=short", "-p", "no:cacheprovider"]
    cmd += [f"--basetemp={basetemp}"]
    cmd += ["-x"] if stop_first else []
    cmd += list(tests)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=root, env=test_env(root, source), capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return Outcome("error", message=f"timed out after {TIMEOUT_S} s", seconds=time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    output = proc.stdout + proc.stderr
    if proc.returncode == 0:
        if re.search(r"\bskipped\b", output):  # a skipped test proves nothing
            return Outcome("error", message="a test was skipped", seconds=seconds, output=output)
        return Outcome("passed", seconds=seconds, output=output)
    if proc.returncode == 1:
        hits = _FAILED.findall(output)
        if hits:
            kind, test, message = hits[0]
            details = [ln[1:].strip() for ln in output.splitlines() if ln.startswith("E ") and ln[1:].strip()]
            message = " / ".join(details[:3]) or (message or "").strip()
            message = re.sub(r"(\\n)?\s+", " ", message)  # reprs of arrays carry escaped newlines
            if kind == "ERROR":
                message = f"(error in setup) {message}"
            return Outcome("failed", test, message[:240], seconds, output)
    tail = " | ".join(output.strip().splitlines()[-3:])
    return Outcome("error", message=f"pytest exit {proc.returncode}: {tail[:200]}", seconds=seconds, output=output)


def git_info(source: Path, ref: str | None = None) -> tuple[str, bool]:
    """(commit, dirty): the commit tested, and whether the tested files differ from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", f"{ref or 'HEAD'}^{{commit}}"], cwd=source, capture_output=True, text=True, check=True
        ).stdout.strip()
        if ref is not None:
            return commit, False
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain"],  # untracked files count: the copy holds them too
                cwd=source,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        if ref is not None:
            raise MutantError(f"--ref {ref}: not a commit of {source}") from None
        return "unknown", True
    return commit, dirty


def versions() -> str:
    parts = [f"python {platform.python_version()}"]
    for mod in ("numpy", "torch", "numba", "pytest"):
        try:
            parts.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            parts.append(f"{mod} absent")
    return ", ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_report(
    path: Path, rows: list[tuple[Mutant, int, Outcome]], baseline: Outcome, source: Path, ref: str | None, t0: float
) -> None:
    commit, dirty = git_info(source, ref)
    caught = sum(o.verdict == "caught" for _, _, o in rows)
    lines = [
        "# Mutation testing: planted bugs and the tests that catch them",
        "",
        "Written by `scripts/mutation.py` (do not edit by hand). Each mutant is one precise textual change",
        "to one file, applied to a temporary copy of the repository; only the tests named for it run",
        "(`pytest -x`), after a baseline run in which every one of those tests passed on the unmodified copy.",
        "",
        f"- command: `python scripts/mutation.py{''.join(' ' + a for a in sys.argv[1:])}`",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- commit: `{commit}`{' (working tree had uncommitted changes)' if dirty else ''}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}; {versions()}",
        f"- Numba kernels in the CUDA simulator (NUMBA_ENABLE_CUDASIM=1); wall time {time.perf_counter() - t0:.0f} s",
        f"- baseline: {len(set(t for m, _, _ in rows for t in m.tests))} test ids, {baseline.verdict} "
        f"in {baseline.seconds:.0f} s",
        f"- **{caught} of {len(rows)} mutants caught**"
        + ("" if caught == len(rows) else f"; **{len(rows) - caught} not caught (the run exits 1)**"),
        "",
        "| # | mutant | where | the bug | verdict | caught by | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, (m, line, o) in enumerate(rows, 1):
        by = f"`{o.test}`<br>{_cell(o.message)}" if o.verdict == "caught" else _cell(o.message)
        lines.append(
            f"| {i} | `{m.name}` | `{m.path}:{line}` | {_cell(m.what)} | {o.verdict} | {by} | {o.seconds:.0f} |"
        )
    lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)


def run(mutants: list[Mutant], source: Path, out: Path | None, ref: str | None = None, keep: bool = False) -> int:
    t0 = time.perf_counter()
    if ref is not None:  # pin the commit now: a branch may move while the mutants run
        ref = git_info(source, ref)[0]
    work = Path(tempfile.mkdtemp(prefix="gpt2-mutation-"))
    root = work / "repo"
    try:
        copy_repo(source, root, ref)
        check_all(mutants, root)
        what = f"commit {git_info(source, ref)[0][:12]}" if ref else "the working tree"
        print(f"{len(mutants)} mutants; copy of {what} in {root}", flush=True)
        all_tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
        print(f"baseline: {len(all_tests)} test ids on the unmodified copy", flush=True)
        baseline = run_tests(root, source, all_tests, stop_first=False)
        print(f"  {baseline.verdict} in {baseline.seconds:.0f} s", flush=True)
        if baseline.verdict != "passed":
            print(f"error: the baseline did not pass ({baseline.test} {baseline.message}); no mutant was judged")
            print(baseline.output[-4000:])
            return 1
        rows: list[tuple[Mutant, int, Outcome]] = []
        for i, m in enumerate(mutants, 1):
            line = line_of(m, root)
            original = apply(m, root)
            try:
                o = run_tests(root, source, m.tests, stop_first=True)
            finally:
                (root / m.path).write_text(original, encoding="utf-8")
            if o.verdict == "failed":
                o.verdict = "caught"
            elif o.verdict == "passed":
                o.verdict, o.message = "survived", "every named test passed"
            print(f"[{i:2d}/{len(mutants)}] {o.verdict:8s} {m.name:48s} {o.seconds:5.0f} s  {o.test}", flush=True)
            if o.message:
                print(f"      {o.message}", flush=True)
            rows.append((m, line, o))
        if out is not None:
            write_report(out, rows, baseline, source, ref, t0)
            print(f"wrote {out}")
        bad = [m.name for m, _, o in rows if o.verdict != "caught"]
        print(f"{len(rows) - len(bad)} of {len(rows)} mutants caught" + (f"; not caught: {bad}" if bad else ""))
        return 1 if bad else 0
    finally:
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python scripts/mutation.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="print the mutants and their tests, run nothing")
    ap.add_argument("--check", action="store_true", help="only check that every anchor applies exactly once")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants (no results file)")
    ap.add_argument("--out", default=str(RESULTS), help="results file, relative to the repository (full runs only)")
    ap.add_argument("--ref", help="test the files of this commit (git archive) instead of the working tree")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy (to debug a mutant)")
    args = ap.parse_args(argv)
    mutants = MUTANTS
    if args.only:
        known = {m.name for m in MUTANTS}
        unknown = [n for n in args.only if n not in known]
        if unknown:
            print(f"error: --only: unknown mutant(s) {unknown}; see --list", file=sys.stderr)
            return 2
        mutants = [m for m in MUTANTS if m.name in args.only]
    try:
        if args.list:
            check_all(mutants, REPO)
            for m in mutants:
                print(f"{m.name:48s} {m.path}:{line_of(m, REPO)}\n    {m.what}\n    " + "\n    ".join(m.tests))
            return 0
        if args.check:
            check_all(mutants, REPO)
            print(f"{len(mutants)} mutants, every anchor applies exactly once")
            return 0
        return run(mutants, REPO, None if args.only else REPO / args.out, ref=args.ref, keep=args.keep)
    except MutantError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
