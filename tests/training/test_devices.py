"""torch_impl/devices.py: the --device and --dtype rule the trainer and the HellaSwag evaluation share."""

from __future__ import annotations

import pytest
import torch

from torch_impl.devices import choose_device, wants_bf16
from weights.errors import UserError


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
