"""The problem sizes every benchmark is run at.

tiny       the tiny test config (2 layers, C=16, V=64), B=2, T=16: the CI smoke size.
           Seconds for everything; the numbers measure overhead, not arithmetic.
124m-cpu   GPT-2 124M, B=1, T=128: what a CPU can time in seconds per step.
124m-gpu   GPT-2 124M, B=4, T=1024: the shape of a real training micro-batch (GPU only).
"""

from __future__ import annotations

import dataclasses

from weights import GPT2Config


@dataclasses.dataclass(frozen=True)
class Size:
    name: str
    config: GPT2Config
    B: int
    T: int
    gpu_only: bool = False

    @property
    def tokens(self) -> int:
        return self.B * self.T


SIZES = {
    "tiny": Size("tiny", GPT2Config.tiny(), B=2, T=16),
    "124m-cpu": Size("124m-cpu", GPT2Config.gpt2_124m(), B=1, T=128),
    "124m-gpu": Size("124m-gpu", GPT2Config.gpt2_124m(), B=4, T=1024, gpu_only=True),
}
