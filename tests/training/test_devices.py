"""torch_impl/devices.py: the --device and --dtype rule the trainer and the HellaSwag evaluation share."""

from __future__ import annotations

import pytest
import torch

from torch_impl.devices import choose_device, sdpa_backend, wants_bf16
from weights.errors import UsageError, UserError


@pytest.mark.parametrize("cuda", [False, True])
def test_choose_device(monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device("auto") == torch.device("cuda" if cuda else "cpu")
    if cuda:
        assert choose_device("cuda") == torch.device("cuda")
    else:
        with pytest.raises(UserError, match="--device cuda: torch sees no CUDA device"):
            choose_device("cuda")


def test_wants_bf16():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [wants_bf16(d, cpu) for d in ("auto", "bf16", "fp32")] == [False, True, False]
    assert [wants_bf16(d, cuda) for d in ("auto", "bf16", "fp32")] == [True, True, False]


def _enabled() -> dict[str, bool]:
    b = torch.backends.cuda
    return {"flash": b.flash_sdp_enabled(), "cudnn": b.cudnn_sdp_enabled(),
            "efficient": b.mem_efficient_sdp_enabled(), "math": b.math_sdp_enabled()}  # fmt: skip


@pytest.mark.parametrize(("name", "device"), [("flash", "cpu"), ("cudnn", "cuda"), ("efficient", "cuda")])
def test_sdpa_backend_allows_only_that_kernel_inside_and_restores_after(name, device):
    before = _enabled()
    with sdpa_backend(name, torch.device(device)):  # only sets torch's kernel switches: no GPU needed
        assert _enabled() == {k: k == name for k in before}
    assert _enabled() == before


def test_sdpa_backend_auto_changes_nothing_and_cuda_kernels_are_refused_on_cpu():
    before = _enabled()
    with sdpa_backend("auto", torch.device("cpu")):
        assert _enabled() == before
    for name in ("cudnn", "efficient"):
        with pytest.raises(UsageError, match=rf"--sdpa-backend {name}: a CUDA kernel, and this run is on cpu"):
            sdpa_backend(name, torch.device("cpu"))
    with pytest.raises(UsageError, match="--sdpa-backend must be one of"):
        sdpa_backend("fast", torch.device("cuda"))
