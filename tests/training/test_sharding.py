"""--shard zero1 and --shard fsdp (torch_impl/sharding.py) on 2 CPU processes (gloo, loopback only).

One torchrun launch (tests/training/shard_probe.py) runs, in order: none (DDP) for 6 steps; zero1 and fsdp
for 6 steps, and again stopped after 3 (--stop-step) and resumed (--resume). Every run: the tiny model,
B=2 per rank, 2 micro-steps per step, the same 128 tokens per step as one process with B=4.

What must agree, and how closely (measured on a 2-core CPU, torch 2.13; the rule for a ceiling is
conformance/tolerances.py's: worst measured x 5, rounded up to 1-2-5):

* zero1 == DDP, bit for bit (losses, gradient norms, final weights): DDP all-reduces the same gradients
  either way, AdamW's update is elementwise, and ZeroRedundancyOptimizer only decides which rank computes
  it for which tensor, then broadcasts the result (a copy).
* zero1 and fsdp vs one process: test_trainer.py's DDP tolerances for the losses (1e-6 relative) and
  gradient norms (1e-5); the weights in the l2 sense (its docstring says why not element-wise). zero1 is
  DDP, so DDP's PARAMS_L2 (5e-6; measured here 7.6e-7). fsdp sums in another order: it reduce-scatters
  every micro-step's gradient (over the ranks, then over the micro-steps; DDP: micro-steps first), and
  the gradient norm is summed from the shards. Measured 1.24e-6, so FSDP_PARAMS_L2 = 1e-5. The losses of
  these 6 steps came out identical, the gradient norms within 7.3e-8.
* resume under the same mode: bit for bit, as for one process (test_resume_continues_the_exact_trajectory).
* what each rank holds (torch_impl.sharding.held_numel) == the arithmetic of sharding.expected_numel,
  exactly: the numbers docs/training.md's memory table is computed with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import weights
from tests.training.test_trainer import PARAMS_L2, _free_port, _global_rel_l2, _load_params
from torch_impl.checkpoint import latest_checkpoint
from torch_impl.model import GPT2
from torch_impl.optim import adamw_groups
from torch_impl.sharding import SHARD_MODES, adamw_shapes, expected_numel, memory_table
from torch_impl.train import parse_args, train
from weights.errors import UsageError

REPO = weights.paths.PROJECT_ROOT
FSDP_PARAMS_L2 = 1e-5  # the module docstring says where this number comes from
STEPS, STOP, TOTAL = 6, 3, 2 * 2 * 16 * 2  # steps, the interruption, tokens per step (B=2 x T=16 x 2 ranks x 2)
ENV = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _flags(data, out_dir, shard: str, *extra: str, batch_size: int = 2) -> list[str]:
    """The flags of a quiet tiny run (test_trainer.py's DDP run, 6 steps); B=2 per rank, B=4 for one process."""
    flags = f"--model tiny --padded-vocab 128 --batch-size {batch_size} --seq-len 16 --total-batch-tokens {TOTAL} "
    flags += f"--max-steps {STEPS} --lr 1e-2 --warmup-steps 2 --eval-every 0 --log-every 0 --shard {shard} "
    flags += "--no-progress --no-plot --device cpu"
    return ["--data", str(data), "--out-dir", str(out_dir), *flags.split(), *extra]


@pytest.fixture(scope="module")
def sharded(random_shards, tmp_path_factory):
    """Rank 0's and rank 1's results of every run of the launch: {run: {losses, grad_norms, checkpoint, held}}."""
    tmp = tmp_path_factory.mktemp("sharded")
    plan = {"none": _flags(random_shards, tmp / "none", "none")}
    for shard in ("zero1", "fsdp"):
        plan[shard] = _flags(random_shards, tmp / shard, shard)
        plan[f"{shard}-stop"] = _flags(random_shards, tmp / f"{shard}-split", shard, "--stop-step", str(STOP))
        plan[f"{shard}-resume"] = _flags(random_shards, tmp / f"{shard}-split", shard, "--resume")
    # the chunked head + cross-entropy (torch_impl/chunked_loss.py) under FSDP2: the head's weight is
    # gathered for the forward, and the gradient the Function returns is reduce-scattered like any other
    plan["fsdp-chunked"] = _flags(random_shards, tmp / "fsdp-chunked", "fsdp", "--loss-impl", "chunked",
                                  "--loss-chunk-rows", "8")  # fmt: skip
    (tmp / "plan.json").write_text(json.dumps(plan))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2"]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    cmd += [str(REPO / "tests" / "training" / "shard_probe.py"), str(tmp / "plan.json"), str(tmp / "result")]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp / f"result.rank{r}.json").read_text()) for r in (0, 1)]
    for run in ranks:  # JSON keys are strings; the steps are ints everywhere else
        for result in run.values():
            for key in ("losses", "grad_norms"):
                result[key] = {int(step): v for step, v in result[key].items()}
    return ranks


@pytest.fixture(scope="module")
def single(random_shards, tmp_path_factory):
    """One process, B=4: the same tokens per step as the two ranks together."""
    return train(parse_args(_flags(random_shards, tmp_path_factory.mktemp("single"), "none", batch_size=4)))


def _assert_close_to(single: dict, run: dict, params_l2: float) -> None:
    assert sorted(run["losses"]) == list(range(STEPS))
    for step, loss in single["losses"].items():
        assert run["losses"][step] == pytest.approx(loss, rel=1e-6), step
        assert run["grad_norms"][step] == pytest.approx(single["grad_norms"][step], rel=1e-5), step
    assert _global_rel_l2(_load_params(single["checkpoint"]), _load_params(run["checkpoint"])) <= params_l2


def _assert_identical_weights(a, b) -> None:
    pa, pb = _load_params(a), _load_params(b)
    for name in pa:
        np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)


def test_zero1_is_ddp_bit_for_bit_and_matches_one_process(sharded, single):
    rank0, rank1 = sharded
    zero1, ddp = rank0["zero1"], rank0["none"]
    assert zero1["losses"] == ddp["losses"] and zero1["grad_norms"] == ddp["grad_norms"]  # exact float equality
    _assert_identical_weights(zero1["checkpoint"], ddp["checkpoint"])
    assert rank1["zero1"]["losses"] == zero1["losses"]  # both ranks log the same all-reduced numbers
    _assert_close_to(single, zero1, PARAMS_L2)


def test_fsdp_with_the_chunked_loss_matches_one_process(sharded, single):
    """--shard fsdp --loss-impl chunked against the plain loss in one process: FSDP's tolerances (the module
    docstring); the chunked loss only sums the head's gradient in another order (chunks of 8 rows)."""
    _assert_close_to(single, sharded[0]["fsdp-chunked"], FSDP_PARAMS_L2)


def test_fsdp_matches_one_process(sharded, single):
    rank0, rank1 = sharded
    assert rank1["fsdp"]["losses"] == rank0["fsdp"]["losses"]
    _assert_close_to(single, rank0["fsdp"], FSDP_PARAMS_L2)


@pytest.mark.parametrize("shard", ["zero1", "fsdp"])
def test_sharded_resume_is_bit_exact(sharded, shard):
    """Stopped after 3 steps (--stop-step), resumed from the gathered checkpoint: the same run, bit for bit."""
    rank0 = sharded[0]
    first, second, whole = rank0[f"{shard}-stop"], rank0[f"{shard}-resume"], rank0[shard]
    assert sorted(first["losses"]) == list(range(STOP)) and sorted(second["losses"]) == list(range(STOP, STEPS))
    assert first["checkpoint"].endswith(f"step_{STOP:07d}")
    assert {**first["losses"], **second["losses"]} == whole["losses"]  # exact float equality
    assert {**first["grad_norms"], **second["grad_norms"]} == whole["grad_norms"]
    _assert_identical_weights(second["checkpoint"], whole["checkpoint"])


def test_each_rank_holds_its_share(sharded):
    """Measured on each rank after the first step (parameters, gradients, AdamW's m and v, in elements) ==
    the arithmetic. zero1 halves AdamW's state, fsdp halves all three; none keeps everything everywhere."""
    config = weights.GPT2Config.tiny()
    with torch.device("meta"):
        model = GPT2(config, padded_vocab_size=128)
    groups = [[p.shape for p in g["params"]] for g in adamw_groups(model.named_parameters(), 0.1)]
    everything = sum(p.numel() for p in model.parameters())  # 8,896: 7,872 parameters + 64 pad rows x 16
    for shard in ("none", "zero1", "fsdp"):
        expected = expected_numel(groups, world=2, shard=shard)
        assert [sharded[r][shard]["held"] for r in (0, 1)] == expected, shard
    assert expected_numel(groups, 2, "none")[0] == {"params": everything, "grads": everything, "adamw": 2 * everything}
    assert sum(r["adamw"] for r in expected_numel(groups, 2, "zero1")) == 2 * everything  # each moment once
    assert sum(r["params"] for r in expected_numel(groups, 2, "fsdp")) == everything  # each weight once


def test_memory_table_is_the_arithmetic():
    """docs/training.md's table (python -m torch_impl.sharding) for GPT-2 124M: one rank holds 16 bytes per
    parameter in every mode; of 8, an fsdp rank holds an eighth exactly, and a zero1 rank all weights
    and gradients, the fullest one AdamW's state of wte alone (38.6M elements, more than P/8 = 15.6M)."""
    groups = adamw_shapes(weights.GPT2Config.gpt2_124m(), padded_vocab=50304)
    P = 124_439_808 + (50304 - 50257) * 768  # the released count + the pad rows
    assert sum(s.numel() for g in groups for s in g) == P
    for shard in SHARD_MODES:
        assert expected_numel(groups, 1, shard) == [{"params": P, "grads": P, "adamw": 2 * P}], shard
    fsdp = expected_numel(groups, 8, "fsdp")  # every dim 0 of the 124M (768, 2304, 3072, 1024, 50304) divides by 8
    assert [r["params"] for r in fsdp] == [P // 8] * 8 and P % 8 == 0
    zero1 = expected_numel(groups, 8, "zero1")
    assert max(r["adamw"] for r in zero1) == 2 * 50304 * 768 and sum(r["adamw"] for r in zero1) == 2 * P
    assert "| `gpt2` | 124,475,904 | 8 | 1.85 | 1.22 | 0.23 |" in memory_table(["gpt2"], [8])


def test_a_sharded_checkpoint_is_canonical_and_resumes_anywhere(sharded, random_shards, tmp_path):
    """fsdp's step-3 checkpoint (2 ranks) is an ordinary checkpoint: weights.load reads it, the float64
    NumPy reference computes the loss torch computes from it, and one process (--shard none, B=4)
    resumes it: steps 3-5 within fsdp's tolerances of the fsdp run that was never interrupted."""
    import shutil

    import reference

    stopped = sharded[0]["fsdp-stop"]["checkpoint"]
    params, config = weights.load(stopped)
    idx = np.random.default_rng(1).integers(0, config.vocab_size, (2, config.n_ctx))
    _, ref_loss = reference.forward({k: v.astype(np.float64) for k, v in params.items()}, config, idx, idx)
    _, loss = GPT2.from_params(params, config, attention="math")(torch.from_numpy(idx), torch.from_numpy(idx))
    assert loss.item() == pytest.approx(ref_loss, rel=1e-6)  # float32 vs float64 on 2 x 16 tokens

    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(stopped, out / os.path.basename(stopped))
    (out / "latest").write_text(os.path.basename(stopped) + "\n")
    resumed = train(parse_args(_flags(random_shards, out, "none", "--resume", batch_size=4)))
    whole = sharded[0]["fsdp"]
    assert sorted(resumed["losses"]) == list(range(STOP, STEPS))
    for step, value in resumed["losses"].items():
        assert value == pytest.approx(whole["losses"][step], rel=1e-6), step
        assert resumed["grad_norms"][step] == pytest.approx(whole["grad_norms"][step], rel=1e-5), step
    assert _global_rel_l2(_load_params(whole["checkpoint"]), _load_params(resumed["checkpoint"])) <= FSDP_PARAMS_L2


def test_rank0_save_failure_stops_every_rank(random_shards, tmp_path):
    """Rank 0's second checkpoint (step 4, fsdp) fails to write (a full disk, tests/training/save_failure_probe.py).
    Both ranks, started as plain processes (no torchrun to kill the survivor), must exit on their own with
    the one-line error within the timeout; rank 1 quotes rank 0's. Before the outcome was broadcast, rank 1
    died at its barrier with a gloo traceback ("Connection closed by peer"); under NCCL it would wait there
    until the watchdog's timeout. The checkpoint of step 2 stays the latest, nothing half-written is left."""
    flags = _flags(random_shards, tmp_path / "r", "fsdp", "--ckpt-every", "2")
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
        env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        probe = [sys.executable, str(REPO / "tests" / "training" / "save_failure_probe.py"), "2", *flags]
        pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(subprocess.Popen(probe, cwd=REPO, env=env, **pipes))
    errors = []
    try:
        for rank, proc in enumerate(procs):
            _, err = proc.communicate(timeout=120)  # a tiny run takes seconds; a hang would take gloo's 30 minutes
            errors.append(err)
            assert proc.returncode == 2, f"rank {rank} exited {proc.returncode}:\n{err[-3000:]}"
    except subprocess.TimeoutExpired:
        pytest.fail(f"rank {len(errors)} still running 120 s after the failed save: it hangs")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    last = [err.strip().splitlines()[-1] for err in errors]
    assert last[0] == "error: [Errno 28] No space left on device (simulated)", errors[0][-2000:]
    assert last[1].startswith("error: rank 0 could not write checkpoint "), errors[1][-2000:]
    assert "step_0000004: [Errno 28] No space left on device (simulated); stopped on rank 1 too" in last[1]
    assert not any("Traceback" in err for err in errors)
    assert latest_checkpoint(tmp_path / "r").name == "step_0000002"
    assert not list((tmp_path / "r").rglob("*.tmp"))


def test_shard_needs_torchrun(random_shards, tmp_path, tiny_config):
    with pytest.raises(UsageError, match=r"--shard zero1 splits state between the ranks of a torchrun job"):
        train(tiny_config(random_shards, tmp_path / "r", shard="zero1"))
    assert not (tmp_path / "r").exists()  # refused before anything was written
