"""python -m torch_impl.train with rank 0's checkpoint write failing (for tests/training/test_sharding.py).

    RANK=r WORLD_SIZE=2 MASTER_ADDR=... MASTER_PORT=... python tests/training/save_failure_probe.py N <flags>

On rank 0 the N-th torch.save raises OSError(ENOSPC): the N-th checkpoint's train_state.pt, after its
model.safetensors was written (as a full disk would). The other ranks run unchanged. The exit status is
main()'s: 2 for a user error, which a full disk is. The process ends as the trainer's program does
(torch_impl.train.exit_process).
"""

from __future__ import annotations

import errno
import os
import sys

import torch

from torch_impl.train import exit_process, main

if __name__ == "__main__":
    fail_at, flags = int(sys.argv[1]), sys.argv[2:]
    if os.environ["RANK"] == "0":
        real_save, calls = torch.save, []

        def save(*args, **kwargs):
            calls.append(1)
            if len(calls) == fail_at:
                raise OSError(errno.ENOSPC, "No space left on device (simulated)")
            return real_save(*args, **kwargs)

        torch.save = save
    exit_process(main(flags))  # as `python -m torch_impl.train` ends
