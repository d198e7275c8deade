"""torch_impl.train under torchrun, recording when DDP all-reduces the gradients (for tests/training).

    torchrun ... tests/training/ddp_probe.py <the flags of python -m torch_impl.train>

Gradient accumulation with DDP must all-reduce only in the backward of the last micro-step of
each optimizer step (the earlier ones run under no_sync). Skipping no_sync gives the same numbers,
just grad_accum times the communication, so no loss or weight can show it; this probe can. It
counts the DDP module's forward calls and registers a communication hook (torch's own allreduce_hook,
so the numbers stay the same) that notes the forward count at every bucket all-reduce. Each rank
writes {"forwards": n, "synced_at": [forward count at each all-reduce, ...]} to
$DDP_PROBE_OUT.rank<RANK>.json when training ends.
"""

from __future__ import annotations

import json
import os
import sys

from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel as DDP

from torch_impl.train import exit_process, main

record = {"forwards": 0, "synced_at": []}
_ddp_init, _ddp_forward = DDP.__init__, DDP.forward


def _init_with_hook(self, *args, **kwargs):
    _ddp_init(self, *args, **kwargs)

    def hook(process_group, bucket):
        record["synced_at"].append(record["forwards"])
        return allreduce_hook(process_group, bucket)

    self.register_comm_hook(None, hook)


def _counted_forward(self, *args, **kwargs):
    record["forwards"] += 1
    return _ddp_forward(self, *args, **kwargs)


if __name__ == "__main__":
    DDP.__init__ = _init_with_hook
    DDP.forward = _counted_forward
    code = main(sys.argv[1:])
    with open(f"{os.environ['DDP_PROBE_OUT']}.rank{os.environ['RANK']}.json", "w") as f:
        json.dump(record, f)
    exit_process(code)  # as `python -m torch_impl.train` ends
