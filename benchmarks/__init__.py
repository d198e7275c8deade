"""Benchmarks: what each layer of abstraction costs, the same GPT-2 work timed on every backend.

    sizes.py        tiny (CI smoke), 124m-cpu (B=1, T=128), 124m-gpu (B=4, T=1024)
    cases.py        backends x sizes x ops: the parameter grid every benchmark file draws from
    backends.py     the backends (name, device, dtype, how to synchronise, why one is skipped)
    impl_numpy.py   per-op and whole-model callables for the NumPy reference
    impl_torch.py   ... for PyTorch (torch's own kernels and torch_impl.model.GPT2)
    impl_numba.py   ... for the Numba CUDA kernels and numba_impl.model.NumbaGPT2
    timing.py       synchronised timing, warm-up, first-call (JIT) time, peak memory
    checks.py       what each benchmark asserts about its result (vs the float64 reference)
    throughput.py   FLOPs per token, device peaks, tokens/s, TFLOP/s, MFU
    report.py       `python -m benchmarks.report results.json --out docs/results/`
    conftest.py     the `smoke` marker; --bench-size, --bench-device, --bench-rounds, --bench-deadline
    run_gpu.sh      the GPU set, time-boxed, for a CUDA machine without nox

    test_bench_ops.py, test_bench_model.py, test_bench_attention_scaling.py, test_bench_weights.py,
    test_bench_matmul.py (GPU: every GPT-2 matmul shape vs cuBLAS float32, and the copy bandwidth)

See docs/benchmarks.md for how to run them and how to read the numbers.
"""
