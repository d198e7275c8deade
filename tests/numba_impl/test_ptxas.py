"""Every hot kernel compiled for sm_90 and judged on ptxas' resource report, on a CPU (CI has no GPU).

numba_impl/ptx_report.py does the work: it runs the model's launchers at GPT-2 124M (and at the
llama-style 124M and at GPT-2 medium, large and xl) with the launches recorded instead of run,
compiles each kernel with numba.cuda.compile_ptx(cc=(9, 0)), assembles it with `ptxas -arch=sm_90 -v`
and checks: ptxas accepts it, 0 bytes of spills, static shared memory <= 0xc000 bytes, registers
that the block's launch configuration can have. That needs numba's real CUDA target, so it runs in a
subprocess with NUMBA_ENABLE_CUDASIM=0 (this test session runs the simulator). The same subprocess
compiles a flash-attention forward with 128-query tiles, which ptxas refuses (too much shared data),
to show that the check catches it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from numba_impl import ptx_report

ROOT = Path(__file__).resolve().parents[2]
PTXAS = ptx_report.find_ptxas()

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from numba import typeof
    from numba_impl import ptx_report
    from numba_impl.kernels import attention

    ptxas = sys.argv[2]
    ptx_report._no_driver_device()
    launches, failures = ptx_report.record_launches()
    rows = ptx_report.check_all(launches, ptxas)

    # The flash forward with 128-query tiles at HS = 64 (8 warps): its staged tiles need > 48 KiB.
    tiles = attention.FlashTiles(warps=8, lanes=8, rt=4, ct=4)
    big = attention.flash_forward_kernel(64, tiles)
    f = np.zeros(1, np.float32)
    args = (f, f, f, 4, 1024, 768, 12, np.float32(0.125))
    launch = ptx_report.Launch("flash-128", big, tuple(typeof(a) for a in args), tiles.threads)
    flash_128 = ptx_report.check_kernel(launch, ptxas)
    json.dump({"rows": rows, "failures": failures, "flash_128": flash_128, "rows_per_block": tiles.rows},
              open(sys.argv[1], "w"))
    """
)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if PTXAS is None:
        pytest.skip("no ptxas: neither CUDA's (PATH, /usr/local/cuda/bin) nor the nvidia-cuda-nvcc wheel's")
    out = tmp_path_factory.mktemp("ptxas") / "report.json"
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(out), PTXAS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"the compile subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text())


@pytest.mark.slow
def test_every_hot_kernel_compiles_for_sm90_without_spills_within_shared_and_register_limits(report):
    rows, failures = report["rows"], report["failures"]
    table = ptx_report.format_table(rows, [tuple(f) for f in failures])
    assert not failures, f"launchers that no longer run as listed in ptx_report.LAUNCHES:\n{table}"
    groups = {r["group"] for r in rows}
    assert groups == set(ptx_report.LAUNCHES), f"groups without a compiled kernel: {set(ptx_report.LAUNCHES) - groups}"
    names = {r["kernel"] for r in rows}
    expected_kernels = ("matmul_fast_kernel", "splitk_reduce_kernel", "crossentropy_rows_kernel", "adamw_kernel",
                        "layernorm_backward_warp_kernel", "layernorm_param_reduce_kernel",
                        # the variants (llama-124m): RMSNorm, SwiGLU, RoPE, the embedding without wpe
                        "rmsnorm_forward_warp_kernel", "rmsnorm_backward_warp_kernel", "rmsnorm_dweight_reduce_kernel",
                        "swiglu_forward_ilp_kernel", "swiglu_backward_ilp_kernel", "rope_kernel",
                        "token_embedding_kernel")  # fmt: skip
    for expected in expected_kernels:
        assert expected in names, f"{expected} was not launched by the recorded launchers:\n{table}"
    assert len(rows) >= 15, table
    # grouped-query attention (12 query heads on 4 kv heads: G = 3) builds flash kernels of its own
    gqa = {r["kernel"] for r in rows if r["group"] == "variants" and "G=3" in r["config"].split()}
    assert gqa == {"flash_forward_vec", "flash_backward_dq_vec", "flash_backward_dkv_vec"}, table
    bad = [r for r in rows if not r["ok"]]
    assert not bad, f"kernels that break a ptxas rule:\n{table}"
    for r in rows:  # the report was read, not assumed
        assert r["registers"] is not None and 0 < r["registers"] <= ptx_report.MAX_REGISTERS, r
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r
        assert r["shared"] <= ptx_report.STATIC_SHARED_LIMIT, r
        assert r["f64_instructions"] == 0, f"{r['kernel']} ({r['config']}) computes in float64: a bare float literal?"


@pytest.mark.slow
def test_the_check_catches_the_128_query_flash_tile_that_ptxas_refuses(report):
    assert report["rows_per_block"] == 128
    flash = report["flash_128"]
    assert not flash["ok"], flash
    assert any("ptxas refused" in p or "static shared" in p for p in flash["problems"]), flash["problems"]


def test_parse_ptxas_and_register_rule():
    text = (
        "ptxas info    : Function properties for k\n"
        "    512 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\n"
        "ptxas info    : Used 206 registers, used 1 barriers, 512 bytes cumulative stack size, 12800 bytes smem\n"
    )
    assert ptx_report.parse_ptxas(text) == {
        "registers": 206, "stack": 512, "spill_stores": 8, "spill_loads": 12, "shared": 12800,
    }  # fmt: skip
    assert ptx_report.register_limit_ok(255, 256)  # 256 x 8 warps x 32 = 65536: fits exactly
    assert not ptx_report.register_limit_ok(128, 1024)  # 128 x 1024 = 131072 > 65536
    assert not ptx_report.register_limit_ok(256, 32)  # above the per-thread maximum
