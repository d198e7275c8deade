"""GPU report for numba_impl: 124M conformance, forward+backward and matmul timings vs torch,
flash vs naive attention. Run on a CUDA machine (not collected by pytest):

    NUMBA_ENABLE_CUDASIM=0 python3 tests/numba_impl/gpu_report.py OUT_DIR [--sections a,b,...]

Writes OUT_DIR/numba-gpu-report.json (and prints it section by section). Sections:
    timing      forward+backward of NumbaGPT2 at 124M, B=4, T=1024 vs torch_impl float32 (TF32 off)
    ops         the same step, time per kernel family (synchronised after each launch)
    matmul      the tiled matmul kernel's TFLOP/s at GPT-2 shapes vs torch.matmul float32 (TF32 off)
    attention   flash vs naive attention, time and scratch memory, T = 128 .. 1024
    graphs      CUDA graphs (NumbaGPT2(cuda_graphs=True)) vs eager at 124M, B=1 T=128 and B=4 T=1024:
                replay results bit for bit against eager, time per forward+backward and per
                training step, the host time to queue an eager step, torch float32 beside them
    conformance 124M, B=4, T=1024, synthetic weights: NumbaGPT2 and torch float32 vs the NumPy
                reference in float64 (on the CPU), at the project's float32 ceilings
Timings: median of `REPEATS` runs after `WARMUP` runs, wall clock around a synchronize.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from conformance.tolerances import FP32  # noqa: E402
from numba_impl._compat import cuda  # noqa: E402  (the numpy>=2.5 alias first)
from weights import GPT2Config, synthetic  # noqa: E402
from weights.provenance import provenance  # noqa: E402

WARMUP, REPEATS = 2, 5
B, T = 4, 1024
CEILINGS = {  # the project's float32 ceilings (conformance/tolerances.py; the rule: docs/conformance.md)
    "logits_max_rel": FP32["logits"],
    "loss_rel": FP32["loss"],
    "grad_l2_rel": FP32["grad_l2"],
    "grad_max_rel": FP32["grad_max"],
}


def median_time(fn, sync, warmup=WARMUP, repeats=REPEATS) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def batch(config, seed=0, B=B, T=T):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, config.vocab_size, (B, T))
    targets = rng.integers(0, config.vocab_size, (B, T))
    return idx, targets


def torch_model(params, config, attention="sdpa"):
    import torch

    from torch_impl.model import GPT2

    return GPT2.from_params(params, config, device="cuda", dtype=torch.float32, attention=attention)


def section_timing(res):
    import torch

    from numba_impl.model import NumbaGPT2, flops_per_token
    from torch_impl.contract import tf32_disabled

    config = GPT2Config.gpt2_124m()
    params = synthetic(config, seed=0)
    idx, targets = batch(config)
    m = NumbaGPT2(params, config, max_batch=B, max_seq=T)
    t0 = time.perf_counter()
    m.forward_backward_device(idx, targets)
    m.synchronize()
    res["first_call_s_including_compile"] = time.perf_counter() - t0
    t_numba = median_time(lambda: m.forward_backward_device(idx, targets), m.synchronize)
    t_numba_fwd = median_time(lambda: m.forward(idx, targets), m.synchronize)
    res["numba_fwd_bwd_s"] = t_numba
    res["numba_forward_incl_logits_copy_s"] = t_numba_fwd
    res["numba_train_step_s"] = median_time(lambda: m.step(idx, targets), m.synchronize)
    tokens = B * T
    res["numba_tflops"] = flops_per_token(config, T) * tokens / t_numba / 1e12
    it = torch.as_tensor(idx, device="cuda")
    tt = torch.as_tensor(targets, device="cuda")
    for attention in ("sdpa", "math"):
        model = torch_model(params, config, attention)

        def step():
            model.zero_grad(set_to_none=True)
            _, loss = model(it, tt)
            loss.backward()

        with tf32_disabled():
            t_torch = median_time(step, torch.cuda.synchronize)
        res[f"torch_{attention}_fwd_bwd_s"] = t_torch
        res[f"ratio_numba_over_torch_{attention}"] = t_numba / t_torch
    torch.cuda.empty_cache()


def section_ops(res):
    """Time per launcher family: wrap each launcher the model calls with a synchronize."""
    import numba_impl.model as model_mod
    from numba_impl.model import NumbaGPT2

    config = GPT2Config.gpt2_124m()
    params = synthetic(config, seed=0)
    idx, targets = batch(config)
    m = NumbaGPT2(params, config, max_batch=B, max_seq=T)
    m.forward_backward_device(idx, targets)
    totals: dict[str, float] = {}
    names = [n for n in dir(model_mod) if n.endswith(("_forward", "_backward", "_forward_flash", "_backward_flash"))]
    names += ["matmul", "crossentropy", "encoder_backward_chained", "gelu_forward", "gelu_backward"]
    originals = {}
    for name in set(names):
        fn = getattr(model_mod, name, None)
        if not callable(fn) or isinstance(fn, type):
            continue
        originals[name] = fn

        def timed(*a, _fn=fn, _name=name, **k):
            cuda.synchronize()
            t0 = time.perf_counter()
            out = _fn(*a, **k)
            cuda.synchronize()
            totals[_name] = totals.get(_name, 0.0) + time.perf_counter() - t0
            return out

        setattr(model_mod, name, timed)
    try:
        m.forward_backward_device(idx, targets)
        totals.clear()
        m.forward_backward_device(idx, targets)
        cuda.synchronize()
    finally:
        for name, fn in originals.items():
            setattr(model_mod, name, fn)
    res["seconds_per_launcher_family"] = dict(sorted(totals.items(), key=lambda kv: -kv[1]))
    del m


def section_matmul(res):
    import torch

    from numba_impl.kernels.matmul import matmul
    from torch_impl.contract import tf32_disabled

    rng = np.random.default_rng(0)
    shapes = {  # name: (M, N, K, layout)
        "c_attn fwd (4096x768 @ 768x2304)": (4096, 2304, 768, "NN"),
        "c_proj fwd (4096x768 @ 768x768)": (4096, 768, 768, "NN"),
        "c_fc fwd (4096x768 @ 768x3072)": (4096, 3072, 768, "NN"),
        "mlp c_proj fwd (4096x3072 @ 3072x768)": (4096, 768, 3072, "NN"),
        "c_fc dX (4096x3072 @ (768x3072)^T)": (4096, 768, 3072, "NT"),
        "c_fc dW ((4096x768)^T @ 4096x3072)": (768, 3072, 4096, "TN"),
        "lm head (4096x768 @ (50257x768)^T)": (4096, 50257, 768, "NT"),
    }
    out = {}
    for name, (M, N, K, layout) in shapes.items():
        a_h = rng.standard_normal((K, M) if layout[0] == "T" else (M, K)).astype(np.float32)
        b_h = rng.standard_normal((N, K) if layout[1] == "T" else (K, N)).astype(np.float32)
        a, b, c = cuda.to_device(a_h.ravel()), cuda.to_device(b_h.ravel()), cuda.device_array(M * N, np.float32)
        t_nb = median_time(lambda: matmul(c, a, b, M, N, K, layout), cuda.synchronize, 2, 10)
        ta, tb = torch.as_tensor(a_h, device="cuda"), torch.as_tensor(b_h, device="cuda")
        op_a = ta.T if layout[0] == "T" else ta
        op_b = tb.T if layout[1] == "T" else tb
        with tf32_disabled():
            t_th = median_time(lambda: torch.matmul(op_a, op_b), torch.cuda.synchronize, 2, 10)
            ref = torch.matmul(op_a, op_b).cpu().numpy()
        err = float(np.abs(c.copy_to_host().reshape(M, N) - ref).max() / np.abs(ref).max())
        flops = 2.0 * M * N * K
        out[name] = {
            "numba_tflops": flops / t_nb / 1e12,
            "torch_fp32_tflops": flops / t_th / 1e12,
            "ratio": t_th / t_nb,
            "max_rel_diff_vs_torch": err,
        }
    res["shapes"] = out


def section_attention(res):
    from numba_impl.kernels.attention import (
        attention_backward_flash,
        attention_backward_naive,
        attention_forward_flash,
        attention_forward_naive,
    )

    C, NH, Bq = 768, 12, 4
    rng = np.random.default_rng(0)
    out = {}
    for Tq in (128, 256, 512, 1024):
        qkv = cuda.to_device((0.5 * rng.standard_normal(Bq * Tq * 3 * C)).astype(np.float32))
        dout = cuda.to_device(rng.standard_normal(Bq * Tq * C).astype(np.float32))
        y = cuda.device_array(Bq * Tq * C, np.float32)
        dqkv = cuda.device_array(Bq * Tq * 3 * C, np.float32)
        sq = Bq * NH * Tq * Tq
        pre, att, datt, dpre = (cuda.device_array(sq, np.float32) for _ in range(4))
        lse, delta = cuda.device_array(Bq * NH * Tq, np.float32), cuda.device_array(Bq * NH * Tq, np.float32)

        def naive():
            attention_forward_naive(y, pre, att, qkv, Bq, Tq, C, NH)
            attention_backward_naive(dqkv, datt, dpre, dout, att, qkv, Bq, Tq, C, NH)

        def flash():
            attention_forward_flash(y, lse, qkv, Bq, Tq, C, NH)
            attention_backward_flash(dqkv, delta, dout, y, lse, qkv, Bq, Tq, C, NH)

        t_naive = median_time(naive, cuda.synchronize)
        y_naive = y.copy_to_host()
        d_naive = dqkv.copy_to_host()
        t_flash = median_time(flash, cuda.synchronize)
        out[f"T={Tq}"] = {
            "naive_fwd_bwd_ms": 1e3 * t_naive,
            "flash_fwd_bwd_ms": 1e3 * t_flash,
            "naive_scratch_MiB": 4 * sq * 4 / 2**20,  # preatt, att, datt, dpreatt
            "flash_scratch_MiB": 2 * Bq * NH * Tq * 4 / 2**20,  # lse, delta
            "flash_vs_naive_out_max_abs_diff": float(np.abs(y.copy_to_host() - y_naive).max()),
            "flash_vs_naive_dqkv_max_abs_diff": float(np.abs(dqkv.copy_to_host() - d_naive).max()),
        }
    res["B=4,NH=12,HS=64"] = out


def section_graphs(res):
    """CUDA graphs vs eager launches of the same kernels, at the small and the large 124M shape."""
    import torch

    from numba_impl.model import NumbaGPT2
    from torch_impl.contract import tf32_disabled

    config = GPT2Config.gpt2_124m()
    params = synthetic(config, seed=0)
    for Bs, Ts in ((1, 128), (4, 1024)):
        out = res[f"B={Bs},T={Ts}"] = {}
        idx, targets = batch(config, seed=2, B=Bs, T=Ts)
        eager = NumbaGPT2(params, config, max_batch=Bs, max_seq=Ts)
        graphed = NumbaGPT2(params, config, max_batch=Bs, max_seq=Ts, cuda_graphs=True)
        # Bit for bit: one eager forward+backward against a replay (the graphed model's second call).
        eager.forward_backward_device(idx, targets)
        want = {"loss": np.array([eager.loss()]), **eager.grads()}
        want["logits"] = eager.logits[: Bs * Ts * config.vocab_size].copy_to_host()
        for _ in range(2):  # the first call runs eagerly and records; the second replays
            graphed.forward_backward_device(idx, targets)
        got = {"loss": np.array([graphed.loss()]), **graphed.grads()}
        got["logits"] = graphed.logits[: Bs * Ts * config.vocab_size].copy_to_host()
        differ = {k: float(np.abs(got[k] - v).max()) for k, v in want.items() if not np.array_equal(got[k], v)}
        out["replay_vs_eager_tensors_compared"] = len(want)
        out["replay_vs_eager_tensors_not_bit_identical"] = differ  # max abs difference of each
        out["graph_note"] = graphed.graph_note
        # Time: median of 20 (10 at the large shape) after 3 (2) warm-ups, wall clock between synchronizes.
        reps = (3, 20) if Bs * Ts <= 1024 else (2, 10)
        res["timing_method"] = "median of 20 after 3 warm-ups (B=4,T=1024: 10 after 2), wall clock between synchronizes"
        fb = lambda m: lambda: m.forward_backward_device(idx, targets)  # noqa: E731
        st = lambda m: lambda: m.step_device(idx, targets, lr=1e-5)  # noqa: E731
        out["eager_fwd_bwd_ms"] = 1e3 * median_time(fb(eager), cuda.synchronize, *reps)
        out["graph_fwd_bwd_ms"] = 1e3 * median_time(fb(graphed), cuda.synchronize, *reps)
        out["eager_step_ms"] = 1e3 * median_time(st(eager), cuda.synchronize, *reps)
        out["graph_step_ms"] = 1e3 * median_time(st(graphed), cuda.synchronize, *reps)
        host = []  # host time to queue one eager forward+backward (no synchronize inside)
        for _ in range(10):
            cuda.synchronize()
            t0 = time.perf_counter()
            eager.forward_backward_device(idx, targets)
            host.append(time.perf_counter() - t0)
        cuda.synchronize()
        out["eager_fwd_bwd_host_queue_ms"] = 1e3 * float(np.median(host))
        out["graphs"] = graphed.graph_stats()
        model = torch_model(params, config, "sdpa")
        it, tt = torch.as_tensor(idx, device="cuda"), torch.as_tensor(targets, device="cuda")

        def torch_step(model=model, it=it, tt=tt):
            model.zero_grad(set_to_none=True)
            model(it, tt)[1].backward()

        with tf32_disabled():
            out["torch_f32_sdpa_fwd_bwd_ms"] = 1e3 * median_time(torch_step, torch.cuda.synchronize, *reps)
        out["ratio_graph_over_torch_fwd_bwd"] = out["graph_fwd_bwd_ms"] / out["torch_f32_sdpa_fwd_bwd_ms"]
        out["ratio_eager_over_torch_fwd_bwd"] = out["eager_fwd_bwd_ms"] / out["torch_f32_sdpa_fwd_bwd_ms"]
        print(f"graphs B={Bs} T={Ts}", json.dumps(out), flush=True)
        del eager, graphed, model
        torch.cuda.empty_cache()


def section_sweep(res):
    """Tile shapes of the tiled matmul and the flash attention, timed per shape (to choose defaults)."""
    from numba_impl.kernels.attention import attention_backward_flash, attention_forward_flash
    from numba_impl.kernels.matmul import matmul

    tiles = [
        (128, 128, 8, 8, 8, True), (128, 128, 16, 8, 8, True), (128, 128, 8, 8, 8, False),
        (128, 128, 16, 8, 8, False), (64, 64, 8, 4, 4, True), (64, 64, 16, 4, 4, True),
        (128, 64, 8, 8, 4, True), (64, 128, 8, 4, 8, True), (64, 64, 16, 8, 8, True),
        (128, 128, 32, 8, 8, True), (256, 128, 8, 8, 8, True),
    ]  # fmt: skip
    shapes = [(4096, 2304, 768, "NN"), (4096, 768, 768, "NN"), (4096, 3072, 768, "NN"), (4096, 768, 3072, "NN"),
              (4096, 768, 3072, "NT"), (768, 3072, 4096, "TN"), (768, 768, 4096, "TN"), (4096, 50257, 768, "NT"),
              (4096, 768, 50257, "NN"), (50257, 768, 4096, "TN")]  # fmt: skip
    rng = np.random.default_rng(0)
    out = {}
    for M, N, K, layout in shapes:
        a = cuda.to_device(rng.standard_normal(M * K).astype(np.float32))
        b = cuda.to_device(rng.standard_normal(K * N).astype(np.float32))
        c = cuda.device_array(M * N, np.float32)
        row = {}
        for tile in tiles:
            try:
                t = median_time(lambda tile=tile: matmul(c, a, b, M, N, K, layout, tile=tile), cuda.synchronize, 1, 5)
                row[str(tile)] = round(2.0 * M * N * K / t / 1e12, 2)
            except Exception as e:
                row[str(tile)] = f"error {type(e).__name__}: {str(e)[:200]}"
        out[f"{M}x{N}x{K} {layout}"] = row
        print(f"{M}x{N}x{K} {layout}", row, flush=True)
    res["matmul_tflops_by_tile"] = out
    C, NH, Bq, Tq = 768, 12, 4, 1024
    qkv = cuda.to_device((0.5 * rng.standard_normal(Bq * Tq * 3 * C)).astype(np.float32))
    dout = cuda.to_device(rng.standard_normal(Bq * Tq * C).astype(np.float32))
    y, dqkv = cuda.device_array(Bq * Tq * C, np.float32), cuda.device_array(Bq * Tq * 3 * C, np.float32)
    lse, delta = cuda.device_array(Bq * NH * Tq, np.float32), cuda.device_array(Bq * NH * Tq, np.float32)
    from numba_impl.kernels.attention import FlashTiles

    flash = {}
    flash_shapes = [FlashTiles(4, 8, 4, 4), FlashTiles(4, 8, 2, 4), FlashTiles(2, 8, 4, 4)]
    flash_shapes.append(FlashTiles(4, 8, 4, 4, vec=True))  # the forward with 16-byte shared loads
    for ft in flash_shapes:
        fwd = median_time(lambda ft=ft: attention_forward_flash(y, lse, qkv, Bq, Tq, C, NH, tiles=ft), cuda.synchronize)
        bwd = median_time(
            lambda ft=ft: attention_backward_flash(dqkv, delta, dout, y, lse, qkv, Bq, Tq, C, NH, tiles=ft),
            cuda.synchronize,
        )
        flash[f"{tuple(ft)} rows={ft.rows} cols={ft.cols}"] = {"fwd_ms": 1e3 * fwd, "bwd_ms": 1e3 * bwd}
    res["flash_ms_by_tile_T1024"] = flash


def compare(name_a, a, ref):
    """The project's metrics of a vs ref (float64 reference)."""
    logits, loss, grads = a
    rlogits, rloss, rgrads = ref
    out = {
        "logits_max_rel": float(np.abs(logits - rlogits).max() / np.abs(rlogits).max()),
        "loss_rel": float(abs(loss - rloss) / abs(rloss)),
    }
    worst_l2, worst_max = ("", 0.0), ("", 0.0)
    for k, g in rgrads.items():
        d = grads[k].astype(np.float64) - g
        l2 = float(np.linalg.norm(d) / np.linalg.norm(g))
        mx = float(np.abs(d).max() / np.abs(g).max())
        worst_l2 = max(worst_l2, (k, l2), key=lambda x: x[1])
        worst_max = max(worst_max, (k, mx), key=lambda x: x[1])
    out["grad_l2_rel_worst"] = {"tensor": worst_l2[0], "value": worst_l2[1]}
    out["grad_max_rel_worst"] = {"tensor": worst_max[0], "value": worst_max[1]}
    out["within_ceilings"] = bool(
        out["logits_max_rel"] <= CEILINGS["logits_max_rel"]
        and out["loss_rel"] <= CEILINGS["loss_rel"]
        and worst_l2[1] <= CEILINGS["grad_l2_rel"]
        and worst_max[1] <= CEILINGS["grad_max_rel"]
    )
    print(name_a, json.dumps(out), flush=True)
    return out


def section_conformance(res):
    import reference
    from numba_impl.model import NumbaGPT2
    from torch_impl.contract import forward_backward as torch_forward_backward

    config = GPT2Config.gpt2_124m()
    params = synthetic(config, seed=0)
    idx, targets = batch(config, seed=1)
    targets[0, :7] = -1  # a few ignored positions
    m = NumbaGPT2(params, config, max_batch=B, max_seq=T)
    results = {"numba fast+flash": m.forward_backward(idx, targets)}
    # One AdamW step at full size, from the same gradients, against the reference's AdamW in float64.
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    m.adamw_step(**hp)
    stepped = m.to_params()
    p_ref = {k: v.astype(np.float64) for k, v in params.items()}
    g_ref = {k: v.astype(np.float64) for k, v in results["numba fast+flash"][2].items()}
    reference.adamw_step(p_ref, g_ref, {}, **hp)
    res["adamw_one_step_same_grads_max_abs_diff_over_lr"] = max(
        float(np.abs(stepped[k] - p_ref[k]).max()) / hp["lr"] for k in p_ref
    )
    del m
    m = NumbaGPT2(params, config, max_batch=B, max_seq=T, attention="naive")
    results["numba fast+naive-attention"] = m.forward_backward(idx, targets)
    del m
    tm = torch_model(params, config, "sdpa")
    results["torch fp32 sdpa (TF32 off)"] = torch_forward_backward(tm, idx, targets)
    del tm
    t0 = time.perf_counter()
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    ref = reference.forward_backward(p64, config, idx, targets)
    res["reference_float64_cpu_s"] = time.perf_counter() - t0
    res["ceilings"] = CEILINGS
    for name, r in results.items():
        res[name] = compare(name, r, ref)


SECTIONS = {
    "timing": section_timing,
    "ops": section_ops,
    "matmul": section_matmul,
    "attention": section_attention,
    "graphs": section_graphs,
    "sweep": section_sweep,
    "conformance": section_conformance,
}


def main():
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = list(SECTIONS)
    if "--sections" in sys.argv:
        wanted = sys.argv[sys.argv.index("--sections") + 1].split(",")
    import numba
    import torch

    report = {
        "provenance": provenance(),  # git commit (+ dirty), versions, device, host, date: weights/provenance.py
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0),
        "versions": {"numpy": np.__version__, "numba": numba.__version__, "torch": torch.__version__},
        "shape": {"config": "gpt2-124m", "B": B, "T": T},
        "timing_method": f"median of {REPEATS} after {WARMUP} warm-up runs, wall clock between synchronizes",
    }
    path = out_dir / "numba-gpu-report.json"
    for name in wanted:
        res = {}
        t0 = time.perf_counter()
        try:
            SECTIONS[name](res)
        except Exception:
            res["error"] = traceback.format_exc()
        res["section_wall_s"] = time.perf_counter() - t0
        report[name] = res
        print(f"== {name}\n{json.dumps(res, indent=1)}", flush=True)
        path.write_text(json.dumps(report, indent=1) + "\n")
    os.sync()


if __name__ == "__main__":
    main()
