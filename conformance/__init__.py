"""The cross-validation suite: the NumPy, Numba CUDA and PyTorch GPT-2s against one another.

python -m conformance.report   the full table (backend x check -> worst error, ceiling, pass/fail),
                               a JSON report, and the divergence localizer on any failure
python -m conformance.compare  the main job: a prompt through every backend on GPT-2 weights
pytest conformance             the same checks as pytest tests (small cases in CI)
"""
