"""Several torch_impl.train runs in one torchrun launch, in order, in one process group (for tests/training).

    torchrun ... tests/training/shard_probe.py PLAN.json OUT

PLAN.json: {"run name": [flags of python -m torch_impl.train], ...}. Starting two processes (torch's
import, the rendezvous) costs more on a 2-core machine than a tiny run, so one launch runs them all:
each rank joins the group once, then calls train() per run; train() leaves a group it did not create
alone. Each rank writes OUT.rank<RANK>.json: per run, the losses and gradient norms per step, the last
checkpoint, and what the rank held (torch_impl.sharding.held_numel). A run that raises stops the probe
(exit 1, the traceback on stderr). The probe made the group, so it ends as a torchrun worker of
`python -m torch_impl.train` does: exit_process, without the interpreter's shutdown that gloo's
threads can abort.
"""

from __future__ import annotations

import json
import os
import sys

import torch.distributed as dist

from torch_impl.train import exit_process, parse_args, train

if __name__ == "__main__":
    plan_path, out = sys.argv[1], sys.argv[2]
    with open(plan_path) as f:
        plan = json.load(f)
    dist.init_process_group("gloo")
    results = {}
    for name, flags in plan.items():
        summary = train(parse_args(flags))
        results[name] = {
            "losses": summary["losses"],
            "grad_norms": summary["grad_norms"],
            "checkpoint": str(summary["checkpoint"]),
            "held": summary.get("held"),
        }
    dist.destroy_process_group()
    with open(f"{out}.rank{os.environ['RANK']}.json", "w") as f:
        json.dump(results, f)
    exit_process(0, made_group=True)
