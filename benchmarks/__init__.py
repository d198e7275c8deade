"""Benchmarks: what each layer of abstraction costs, the same GPT-2 work timed on every backend.

    cases.py        backends x sizes x ops: the parameter grid every benchmark file draws from
    backends.py     the backends (name, device, dtype, how to synchronise, why one is skipped)
    impl_numpy.py   per-op and whole-model callables for the NumPy reference
    impl_torch.py   ... for PyTorch (torch's own kernels and torch_impl.model.GPT2)
    impl_numba.py   ... for the Numba CUDA kernels and numba_impl.model.NumbaGPT2
    timing.py       synchronised timing, warm-up, first-call (JIT) time, peak memory
    throughput.py   FLOPs per token, device peaks, tokens/s, TFLOP/s, MFU
    report.py       `python -m benchmarks.report results.json --out docs/results/`

See docs/benchmarks.md for how to run them and how to read the numbers.
"""
